"""The typed description of a table after intake: what each column is and what was dropped.

Intake (``broker.intake``) builds a :class:`Schema`; everything downstream (planner,
providers, reports) reads it. Feature names keep the user's spelling; each column also has a
``safe_name`` (ASCII letters, digits and underscores, unique, starting with a letter) that is
valid for every backend, so ``a b`` and ``a_b`` stay two features everywhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from broker.spec import Task


class ColumnKind(str, Enum):
    NUMERIC = "numeric"
    CATEGORICAL = "categorical"
    DATETIME = "datetime"
    TEXT = "text"
    IDENTIFIER = "identifier"
    CONSTANT = "constant"
    TARGET = "target"
    IGNORED = "ignored"


class NumberFormat(str, Enum):
    """How a numeric column's values were written as text, when not as plain numbers;
    held-out rows of the column are read the same way."""

    PERCENT = "percent"  # "12.5%" is 0.125; commas group thousands ("1,250%")
    PERCENT_DECIMAL_COMMA = "percent-decimal-comma"  # "12,5%"; dots group thousands
    # a semicolon table's numbers: "1.000,5" (dots group thousands), or as pandas
    # reads them there ("0.125", "1500"), so "1.500" in held-out rows is 1500 or 1.5
    DECIMAL_COMMA = "decimal-comma"
    DECIMAL_POINT = "decimal-point"

    @property
    def is_percent(self) -> bool:
        return self in (NumberFormat.PERCENT, NumberFormat.PERCENT_DECIMAL_COMMA)


@dataclass(frozen=True)
class Column:
    name: str  # the user's name, whitespace around it stripped
    safe_name: str  # valid for every backend; one-to-one with name
    kind: ColumnKind
    dropped_reason: str | None = None  # set when the column is not a feature
    n_missing: int = 0
    n_unique: int = 0
    number_format: NumberFormat | None = None  # how text such as "12%" was read

    @property
    def is_feature(self) -> bool:
        return self.dropped_reason is None and self.kind not in (
            ColumnKind.TARGET,
            ColumnKind.IGNORED,
        )


@dataclass(frozen=True)
class Schema:
    columns: tuple[Column, ...]
    target: str
    target_safe_name: str
    task: Task
    classes: tuple[Any, ...] = ()  # class labels in a fixed order (classification)
    positive_class: Any = None  # binary: the label scored as positive
    n_rows: int = 0  # rows kept (missing targets dropped)
    n_rows_dropped_missing_target: int = 0
    dropped_target_rows: tuple[int, ...] = ()  # 1-based data row numbers
    class_counts: dict[str, int] = field(default_factory=dict)
    renamed_columns: dict[str, str] = field(default_factory=dict)  # raw -> stripped
    # the table was semicolon-separated: text numbers carry a decimal comma ("7,5")
    decimal_comma: bool = False

    @property
    def features(self) -> list[Column]:
        return [c for c in self.columns if c.is_feature]

    @property
    def feature_names(self) -> list[str]:
        return [c.name for c in self.features]

    @property
    def safe_feature_names(self) -> list[str]:
        return [c.safe_name for c in self.features]

    @property
    def dropped(self) -> dict[str, str]:
        return {c.name: c.dropped_reason for c in self.columns if c.dropped_reason}

    @property
    def to_safe(self) -> dict[str, str]:
        return {c.name: c.safe_name for c in self.columns}

    @property
    def to_original(self) -> dict[str, str]:
        return {c.safe_name: c.name for c in self.columns}

    def to_dict(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["task"] = self.task.value
        payload["columns"] = [_column_dict(c) for c in self.columns]
        payload["classes"] = [_jsonable(c) for c in self.classes]
        payload["positive_class"] = _jsonable(self.positive_class)
        return payload

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> Schema:
        data = dict(payload)
        data["task"] = Task(data["task"])
        data["columns"] = tuple(_column(c) for c in data["columns"])
        data["classes"] = tuple(data.get("classes", ()))
        data["dropped_target_rows"] = tuple(data.get("dropped_target_rows", ()))
        return cls(**data)


def _column_dict(column: Column) -> dict[str, Any]:
    payload = {**asdict(column), "kind": column.kind.value}
    if column.number_format is None:
        del payload["number_format"]  # as schemas without number formats were written
    else:
        payload["number_format"] = column.number_format.value
    return payload


def _column(payload: dict[str, Any]) -> Column:
    data = {**payload, "kind": ColumnKind(payload["kind"])}
    if data.get("number_format") is not None:
        data["number_format"] = NumberFormat(data["number_format"])
    return Column(**data)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalar
        return value.item()
    return value
