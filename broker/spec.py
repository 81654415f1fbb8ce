"""The job spec (what the user asks for) and the job result (what the broker hands back).

Both are pydantic models, validated once at the edge and never mutated afterwards. A spec can
come from Python, from a YAML or JSON file, or from the CLI's options.
"""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from broker.errors import ConfigurationError

PROVIDER_NAMES = ("vertex", "azure", "sagemaker", "h2o", "local")


class Task(str, Enum):
    AUTO = "auto"
    BINARY = "binary"
    MULTICLASS = "multiclass"
    REGRESSION = "regression"


DEFAULT_METRIC = {
    Task.BINARY: "roc_auc",
    Task.MULTICLASS: "log_loss",
    Task.REGRESSION: "rmse",
}


class Budget(BaseModel):
    """Spending limits. `max_usd` None means no dollar cap (the runtime limit still holds)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_usd: Decimal | None = Field(default=None, ge=0)
    max_runtime_s: int = Field(default=600, ge=1, le=7 * 24 * 3600)


class Constraints(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    providers: list[str] | None = None
    prefer: list[str] | None = Field(
        default=None,
        description="providers to try first, in this order, before ranking by cost",
    )
    regions: list[str] | None = None
    min_memory_gib: float | None = Field(default=None, gt=0)
    gpu: bool | None = None
    machines: list[str] | None = None

    @field_validator("providers", "prefer")
    @classmethod
    def _known_providers(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        names = [v.strip().lower() for v in value if v.strip()]
        unknown = [n for n in names if n not in PROVIDER_NAMES]
        if unknown:
            raise ValueError(
                f"unknown provider(s) {unknown}; choose from {list(PROVIDER_NAMES)}"
            )
        if not names:
            raise ValueError("providers is empty; leave it out to allow every provider")
        # A repeated name keeps its first place: "local,local" means local first, not
        # local after every provider left out of the list.
        return list(dict.fromkeys(names))


class Deployment(BaseModel):
    """How the model will be served, for the serving part of the cost comparison."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hours_per_month: Decimal = Field(default=Decimal("0"), ge=0, le=744)
    instances: int = Field(default=1, ge=1)


class JobSpec(BaseModel):
    """One AutoML job: data, target, task, metric, budget and constraints.

    Example:
        >>> spec = JobSpec(data="adult.csv", target="class")
        >>> spec.task.value, spec.budget.max_runtime_s
        ('auto', 600)
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    data: Any = Field(description="a CSV path or a pandas DataFrame")
    target: str
    task: Task = Task.AUTO
    metric: str | None = None
    ignore: list[str] = Field(default_factory=list)
    name: str | None = None
    project: str | None = Field(
        default=None,
        description="a label the spend ledger totals by; config monthly_budget_usd "
        "may give each project its own monthly budget",
    )
    holdout_fraction: float = Field(default=0.2, gt=0, lt=0.9)
    seed: int = 0
    delimiter: str | None = None
    holdout_data: Any = Field(
        default=None,
        description="a separate labelled test set (path or DataFrame) used instead of a split",
    )
    budget: Budget = Field(default_factory=Budget)
    constraints: Constraints = Field(default_factory=Constraints)
    deployment: Deployment = Field(default_factory=Deployment)
    provider_options: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("data")
    @classmethod
    def _data_kind(cls, value: Any) -> Any:
        if isinstance(value, str | Path):
            return Path(value)
        if type(value).__name__ == "DataFrame":
            return value
        raise ValueError(
            f"data must be a path to a CSV file or a pandas DataFrame, "
            f"got {type(value).__name__}"
        )

    @field_validator("holdout_data")
    @classmethod
    def _holdout_kind(cls, value: Any) -> Any:
        if value is None:
            return None
        return cls._data_kind(value)

    @field_validator("target")
    @classmethod
    def _target_named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("target is empty; name the column to predict")
        return value.strip()

    @model_validator(mode="after")
    def _metric_known(self) -> JobSpec:
        if self.metric is not None:
            from broker.metrics import metric_names

            if self.metric not in metric_names():
                raise ValueError(
                    f"unknown metric {self.metric!r}; choose from {sorted(metric_names())}"
                )
        return self

    @property
    def data_label(self) -> str:
        if isinstance(self.data, Path):
            return str(self.data)
        return f"<DataFrame {getattr(self.data, 'shape', '?')}>"

    def metric_for(self, task: Task) -> str:
        """The metric to rank by: the spec's own, or the task's default."""
        return self.metric or DEFAULT_METRIC[task]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form; a DataFrame source is recorded by its shape only."""
        payload = self.model_dump(mode="json", exclude={"data", "holdout_data"})
        payload["data"] = self.data_label
        if self.holdout_data is not None:
            payload["holdout_data"] = (
                str(self.holdout_data)
                if isinstance(self.holdout_data, Path)
                else f"<DataFrame {getattr(self.holdout_data, 'shape', '?')}>"
            )
        return payload

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> JobSpec:
        """Load a spec from YAML or JSON; relative data paths resolve from the file.

        `overrides` (None values ignored) replace the file's fields before the spec is
        checked, so a file may leave out what they give; their paths are the caller's.
        """
        raw = read_spec_file(path)
        raw.update({k: v for k, v in overrides.items() if v is not None})
        return parse_spec(raw)


def read_spec_file(path: str | Path) -> dict[str, Any]:
    """The fields of a YAML or JSON spec file, not yet checked, with relative `data`
    and `holdout_data` paths resolved from the file's folder.

    Raises:
        ConfigurationError: the file cannot be read, is not valid YAML or JSON, or does
            not hold a mapping.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read spec file {str(path)!r}: {exc}"
        ) from None
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:  # its message has no source text
        raise ConfigurationError(
            f"spec file {str(path)!r} is not valid JSON: {exc}"
        ) from None
    except yaml.YAMLError as exc:  # PyYAML's message quotes the line, secrets too
        from broker.redact import describe_yaml_error

        raise ConfigurationError(
            f"spec file {str(path)!r} is not valid YAML: {describe_yaml_error(exc)}"
        ) from None
    if not isinstance(raw, dict):
        raise ConfigurationError(
            f"spec file {str(path)!r} must hold a mapping of fields, "
            f"got {type(raw).__name__}"
        )
    for key in ("data", "holdout_data"):
        value = raw.get(key)
        if isinstance(value, str) and not Path(value).is_absolute():
            raw[key] = str((path.parent / value).resolve())
    return raw


def parse_spec(raw: dict[str, Any]) -> JobSpec:
    """Validate a mapping into a JobSpec, turning pydantic's report into our error."""
    from pydantic import ValidationError

    try:
        return JobSpec.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "spec"
            lines.append(f"{where}: {err['msg']}{_given(err, where)}")
        raise ConfigurationError("invalid job spec:\n  " + "\n  ".join(lines)) from None


def _given(err: Any, where: str) -> str:
    """`, got <value>` for a scalar the user wrote (a secret's value masked)."""
    from broker.redact import MASK, is_secret_key, redact_text

    if err.get("type") == "missing" or "input" not in err:
        return ""
    value = err["input"]
    if not isinstance(value, str | int | float | bool) or value is None:
        return ""
    if is_secret_key(where.rsplit(".", 1)[-1]):
        return f", got {MASK}"
    text = redact_text(repr(value))
    return f", got {text if len(text) <= 60 else text[:57] + '...'}"


# --- results ---------------------------------------------------------------------------


class LeaderboardEntry(BaseModel):
    """One trained model, with its scores on the broker's held-out split."""

    model_config = ConfigDict(extra="forbid")

    model_id: str
    provider: str
    algorithm: str
    metrics: dict[str, float | None] = Field(default_factory=dict)
    validation_metrics: dict[str, float | None] = Field(default_factory=dict)
    training_time_s: float | None = None
    predict_time_per_row_s: float | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    notes: str | None = None


class FailoverRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: str
    machine: str | None = None
    region: str | None = None
    reason: str
    error_type: str
    message: str
    original_type: str | None = None
    provider_job_id: str | None = None
    at: datetime


class CostSummary(BaseModel):
    """Quote at submission and actual cost at the end, in exact dollars."""

    model_config = ConfigDict(extra="forbid")

    currency: str = "USD"
    estimated_training_usd: Decimal | None = None
    estimated_training_high_usd: Decimal | None = None
    estimated_serving_usd_per_month: Decimal | None = None
    actual_usd: Decimal | None = None
    billing_unit: str | None = None
    provider_units: dict[str, Any] = Field(default_factory=dict)
    price_source: str | None = None
    user_supplied_price: bool = False


class JobResult(BaseModel):
    """What a finished job hands back; also written to the run folder as result.json."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    state: str
    provider: str | None
    machine: str | None = None
    region: str | None = None
    task: Task
    metric: str
    metric_direction: str
    leaderboard: list[LeaderboardEntry] = Field(default_factory=list)
    best_model_id: str | None = None
    holdout_metrics: dict[str, float | None] = Field(default_factory=dict)
    holdout_n: int = 0
    holdout_notes: list[str] = Field(default_factory=list)
    cost: CostSummary = Field(default_factory=CostSummary)
    chosen_because: str | None = None
    failovers: list[FailoverRecord] = Field(default_factory=list)
    run_dir: str | None = None
    runtime_s: float | None = None
    error: dict[str, Any] | None = None

    @property
    def best(self) -> LeaderboardEntry | None:
        return self.leaderboard[0] if self.leaderboard else None
