"""Turn a table with safe column names into the arrays the network reads.

Numeric columns are median-imputed, get a missing-indicator column when the training rows had
missing values, and are mapped to a standard normal through their training quantiles (robust
to long tails such as capital gains). Categorical columns become integer codes for an
embedding: index 0 is "missing", index 1 is "<unk>" (a value seen fewer than `min_count`
times in training, or never), and each frequent training value gets its own index.

Image pixels (``scaling="pixels"``) are instead divided by the largest training pixel
value and centred, one scale for every pixel, so that relative brightness is kept.

Everything fitted is plain numbers and strings, saved as JSON (`to_dict`/`from_dict`), so a
saved model never needs pickled code to load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from broker.errors import ColumnNotFoundError, InputError

if TYPE_CHECKING:
    import pandas as pd

MISSING_INDEX = 0
UNKNOWN_INDEX = 1
N_QUANTILES = 1000
NORMAL_CLIP = 5.0
_UNIFORM_EPS = 1e-7


@dataclass
class NumericColumn:
    name: str
    median: float
    quantiles: list[float]  # training quantiles at evenly spaced ranks
    has_indicator: bool  # the training rows had missing values
    bin_edges: list[float] = field(default_factory=list)  # inner edges; empty: no bins

    @property
    def n_bin_tokens(self) -> int:
        # missing, then one token per bin
        return len(self.bin_edges) + 2 if self.bin_edges else 0


@dataclass
class CategoricalColumn:
    name: str
    vocabulary: list[str]  # frequent training values; index = position + 2

    @property
    def n_tokens(self) -> int:
        return len(self.vocabulary) + 2


@dataclass
class TabularPreprocessor:
    """The fitted feature transform of one model.

    Build one with :meth:`fit`; apply it with :meth:`transform`.
    """

    numeric: list[NumericColumn] = field(default_factory=list)
    categorical: list[CategoricalColumn] = field(default_factory=list)
    min_count: int = 2
    numeric_bins: int = 0
    pixel_scale: float | None = None  # set: pixels, divided by it and centred

    @classmethod
    def fit(
        cls,
        frame: pd.DataFrame,
        *,
        numeric: list[str],
        categorical: list[str],
        min_count: int = 2,
        numeric_bins: int = 0,
        scaling: str = "quantile",
    ) -> TabularPreprocessor:
        """Learn medians, quantiles and vocabularies from the training rows in `frame`.

        Args:
            min_count: a categorical value seen fewer times than this becomes "<unk>".
            numeric_bins: when above 1, each numeric column with more distinct values
                also gets a quantile-bin code, read by an embedding like a category.
            scaling: "quantile" maps each numeric column to a normal through its
                quantiles; "pixels" divides every column by the largest value.
        """
        _require_columns(frame, [*numeric, *categorical])
        numeric_columns = [
            _fit_numeric(frame[name], name, numeric_bins) for name in numeric
        ]
        categorical_columns = [
            _fit_categorical(frame[name], name, min_count) for name in categorical
        ]
        pixel_scale = None
        if scaling == "pixels" and numeric:
            values = np.abs(np.stack([_as_float(frame[n]) for n in numeric]))
            largest = float(np.nanmax(values)) if np.isfinite(values).any() else 1.0
            pixel_scale = largest if largest > 0 else 1.0
        return cls(
            numeric_columns, categorical_columns, min_count, numeric_bins, pixel_scale
        )

    @property
    def n_numeric_inputs(self) -> int:
        """Width of the numeric array: one value per column plus the indicators."""
        return len(self.numeric) + sum(c.has_indicator for c in self.numeric)

    @property
    def cardinalities(self) -> list[int]:
        """Tokens per code column: categorical columns, then binned numeric ones."""
        bins = [c.n_bin_tokens for c in self.numeric if c.bin_edges]
        return [c.n_tokens for c in self.categorical] + bins

    @property
    def feature_names(self) -> list[str]:
        return [c.name for c in self.numeric] + [c.name for c in self.categorical]

    def transform(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Arrays for the network: numeric (n, n_numeric_inputs) float32 and
        categorical codes (n, n_categorical) int64.

        Raises:
            ColumnNotFoundError: a feature the model was trained on is not in `frame`.
        """
        _require_columns(frame, self.feature_names)
        n = len(frame)

        numeric_parts: list[np.ndarray] = []
        bin_codes: list[np.ndarray] = []
        for col in self.numeric:
            values = _as_float(frame[col.name])
            missing = np.isnan(values)
            if col.bin_edges:
                bins = np.searchsorted(col.bin_edges, values, side="right") + 1
                bin_codes.append(np.where(missing, MISSING_INDEX, bins))
            values = np.where(missing, col.median, values)
            if self.pixel_scale is not None:
                numeric_parts.append(2.0 * values / self.pixel_scale - 1.0)
            else:
                numeric_parts.append(_quantile_normal(values, col.quantiles))
            if col.has_indicator:
                numeric_parts.append(missing.astype(np.float32))
        x_num = (
            np.stack(numeric_parts, axis=1).astype(np.float32)
            if numeric_parts
            else np.zeros((n, 0), dtype=np.float32)
        )

        codes: list[np.ndarray] = [
            _encode(frame[col.name], col) for col in self.categorical
        ]
        codes.extend(bin_codes)
        x_cat = (
            np.stack(codes, axis=1).astype(np.int64)
            if codes
            else np.zeros((n, 0), dtype=np.int64)
        )
        return x_num, x_cat

    def to_dict(self) -> dict[str, Any]:
        return {
            "min_count": self.min_count,
            "numeric_bins": self.numeric_bins,
            "pixel_scale": self.pixel_scale,
            "numeric": [vars(c) for c in self.numeric],
            "categorical": [vars(c) for c in self.categorical],
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> TabularPreprocessor:
        return cls(
            numeric=[NumericColumn(**c) for c in payload["numeric"]],
            categorical=[CategoricalColumn(**c) for c in payload["categorical"]],
            min_count=int(payload.get("min_count", 2)),
            numeric_bins=int(payload.get("numeric_bins", 0)),
            pixel_scale=payload.get("pixel_scale"),
        )


@dataclass
class TargetEncoder:
    """Class labels to indices (classification) or standardised values (regression)."""

    task: str  # "binary", "multiclass" or "regression"
    classes: list[Any] = field(default_factory=list)
    mean: float = 0.0
    std: float = 1.0

    @classmethod
    def fit(
        cls, target: pd.Series, *, task: str, classes: list[Any] | None = None
    ) -> TargetEncoder:
        if task == "regression":
            values = _as_float(target)
            mean = float(np.nanmean(values))
            std = float(np.nanstd(values))
            return cls(task, [], mean, std if std > 0 else 1.0)
        if not classes:
            classes = sorted(target.dropna().unique().tolist(), key=str)
        return cls(task, list(classes))

    def encode(self, target: pd.Series) -> np.ndarray:
        """int64 class indices, or float32 standardised values.

        Raises:
            InputError: a label that is not one of the model's classes.
        """
        if self.task == "regression":
            return ((_as_float(target) - self.mean) / self.std).astype(np.float32)

        lookup: dict[Any, int] = {}
        for index, label in enumerate(self.classes):
            lookup[label] = index
            lookup.setdefault(str(label), index)
        indices = [lookup.get(v, lookup.get(str(v), -1)) for v in target.tolist()]
        unknown = sorted(
            {str(v) for v, i in zip(target.tolist(), indices, strict=True) if i < 0}
        )
        if unknown:
            raise InputError(
                f"target values {unknown[:5]} are not among the classes {self.classes}; "
                f"drop rows with missing or unexpected labels before training"
            )
        return np.asarray(indices, dtype=np.int64)

    def decode_regression(self, values: np.ndarray) -> np.ndarray:
        return values.astype(np.float64) * self.std + self.mean

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "classes": [_jsonable(c) for c in self.classes],
            "mean": self.mean,
            "std": self.std,
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> TargetEncoder:
        return cls(
            task=payload["task"],
            classes=list(payload.get("classes", [])),
            mean=float(payload.get("mean", 0.0)),
            std=float(payload.get("std", 1.0)),
        )


def _fit_numeric(series: pd.Series, name: str, n_bins: int) -> NumericColumn:
    values = _as_float(series)
    present = values[~np.isnan(values)]
    if present.size == 0:
        return NumericColumn(name, 0.0, [0.0, 0.0], has_indicator=True)

    n_quantiles = min(N_QUANTILES, present.size)
    ranks = np.linspace(0.0, 1.0, n_quantiles)
    quantiles = np.quantile(present, ranks)
    edges: list[float] = []
    if n_bins > 1 and np.unique(present).size > n_bins:
        inner = np.quantile(present, np.linspace(0.0, 1.0, n_bins + 1)[1:-1])
        edges = [float(e) for e in np.unique(inner)]
    return NumericColumn(
        name=name,
        median=float(np.median(present)),
        quantiles=[float(q) for q in quantiles],
        has_indicator=bool(present.size < values.size),
        bin_edges=edges,
    )


def _fit_categorical(series: pd.Series, name: str, min_count: int) -> CategoricalColumn:
    counts = series.dropna().astype(str).value_counts()
    frequent = counts[counts >= min_count]
    ordered = sorted(frequent.items(), key=lambda item: (-item[1], item[0]))
    return CategoricalColumn(name, [value for value, _ in ordered])


def _quantile_normal(values: np.ndarray, quantiles: list[float]) -> np.ndarray:
    """Map values through the training quantiles to a standard normal, clipped.

    Ties in the quantiles (a value shared by many rows) map to the middle of their ranks:
    interpolating upwards and downwards and averaging, as scikit-learn's transformer does.
    """
    from scipy.special import ndtri

    q = np.asarray(quantiles, dtype=np.float64)
    if q[0] == q[-1]:
        return np.zeros_like(values, dtype=np.float64)
    ranks = np.linspace(0.0, 1.0, q.size)
    upward = np.interp(values, q, ranks)
    downward = -np.interp(-values, -q[::-1], -ranks[::-1])
    uniform = np.clip(0.5 * (upward + downward), _UNIFORM_EPS, 1 - _UNIFORM_EPS)
    return np.clip(ndtri(uniform), -NORMAL_CLIP, NORMAL_CLIP)


def _encode(series: pd.Series, column: CategoricalColumn) -> np.ndarray:
    lookup = {value: index + 2 for index, value in enumerate(column.vocabulary)}
    missing = series.isna().to_numpy()
    as_text = series.astype(str).to_numpy()
    codes = np.fromiter(
        (lookup.get(v, UNKNOWN_INDEX) for v in as_text),
        dtype=np.int64,
        count=len(as_text),
    )
    codes[missing] = MISSING_INDEX
    return codes


def _as_float(series: pd.Series) -> np.ndarray:
    import pandas as pd

    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)


def _require_columns(frame: pd.DataFrame, names: list[str]) -> None:
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise ColumnNotFoundError(
            f"columns {missing} are missing from the frame; it has "
            f"{list(frame.columns)[:20]}. Pass every feature the model was trained on, "
            f"with its safe name",
            column=missing[0],
            available=[str(c) for c in frame.columns],
        )


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
