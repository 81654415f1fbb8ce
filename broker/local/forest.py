"""Extremely randomised trees of the local backend's classical stage, kept as arrays.

The trees read the numeric matrix the boosting models read
(:class:`broker.local.classical.ColumnCodes`), with missing values filled first:
numeric columns by their training median, category codes (missing or unseen) by -1,
below every known code. Each fitted tree's node arrays are read from scikit-learn's
public ``tree_`` attribute into one :class:`ForestArrays` (leaf values as class
probabilities, or the leaf's mean for regression), saved as an ``.npz`` of plain
arrays and predicted by a vectorised numpy walk averaged over the trees, so loading
runs no stored code and needs no scikit-learn.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from broker.errors import ConfigurationError
from broker.local.classical import ArrayModel, ColumnCodes, read_arrays

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

MODEL_FORMAT = "extra-trees"
FORMAT_VERSION = 1
ALGORITHM = "extra_trees"
TREES_FILE = "forest.npz"
DEFAULT_TREES = 300
# Trees are grown in steps of this many, so that the time cap can stop the forest.
TREES_PER_STEP = 100
# The most leaves a tree may have: on larger data the smallest leaf grows instead, so
# that a forest stays about ten megabytes per thousand rows at most. Up to this many
# rows the trees grow to single-row leaves, as extremely randomised trees are meant to:
# a floor of two rows cost 0.011 ROC AUC on phoneme's folds of 3,458 rows.
MAX_LEAVES_PER_TREE = 4096
# Rows walked through all trees at once (bounds the walk's memory).
WALK_NODES = 1 << 20


@dataclass
class ForestArrays:
    """Every tree of a forest as flat node arrays.

    Child indices are positions in the flat arrays and a leaf is its own child, so a
    walk of `depth` steps from `roots` ends at every row's leaf in every tree.
    """

    feature: np.ndarray  # int64 (0 at leaves)
    threshold: np.ndarray  # float64; a row goes left when its value <= threshold
    left: np.ndarray  # int64
    right: np.ndarray  # int64
    value: np.ndarray  # float64 (nodes, outputs): class probabilities or the value
    roots: np.ndarray  # int64, one per tree
    depth: int

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "feature": self.feature,
            "threshold": self.threshold,
            "left": self.left,
            "right": self.right,
            "value": self.value,
            "roots": self.roots,
            "depth": np.asarray(self.depth, dtype=np.int64),
        }

    def mean_output(self, x: np.ndarray) -> np.ndarray:
        """The trees' average leaf value: (n, outputs) float64.

        Values are compared as float32, as scikit-learn's trees compare them.
        """
        x = np.asarray(x, dtype=np.float32).astype(np.float64)
        out = np.zeros((len(x), self.value.shape[1]), dtype=np.float64)
        chunk_rows = max(1, WALK_NODES // max(1, len(self.roots)))
        for start in range(0, len(x), chunk_rows):
            part = x[start : start + chunk_rows]
            leaves = self._leaves(part)
            for tree in range(len(self.roots)):  # fitting order, as the trees add
                out[start : start + len(part)] += self.value[leaves[:, tree]]
        out /= max(1, len(self.roots))
        return out

    def _leaves(self, x: np.ndarray) -> np.ndarray:
        # every row walks every tree at once, one level per pass
        rows = np.arange(len(x))[:, None]
        node = np.broadcast_to(self.roots, (len(x), len(self.roots))).copy()
        for _ in range(self.depth):
            go_left = x[rows, self.feature[node]] <= self.threshold[node]
            step = np.where(go_left, self.left[node], self.right[node])
            if np.array_equal(step, node):
                break
            node = step
        return node


def extract_forest(estimator: Any) -> ForestArrays:
    """Read a fitted scikit-learn forest's trees (``estimators_[i].tree_``).

    Raises:
        ConfigurationError: the estimator holds no fitted trees.
    """
    try:
        tables = [tree.tree_ for tree in estimator.estimators_]
    except AttributeError as exc:
        raise ConfigurationError(
            f"cannot export the forest: {type(exc).__name__}: {exc}; fit it first"
        ) from None
    if not tables:
        raise ConfigurationError("cannot export a forest without trees; fit it first")

    sizes = [int(t.node_count) for t in tables]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    feature, threshold, left, right, value = [], [], [], [], []
    for table, offset in zip(tables, offsets, strict=True):
        own = np.arange(table.node_count, dtype=np.int64)
        leaf = np.asarray(table.children_left) < 0
        feature.append(np.where(leaf, 0, table.feature).astype(np.int64))
        threshold.append(np.where(leaf, 0.0, table.threshold).astype(np.float64))
        left.append(np.where(leaf, own, table.children_left) + offset)
        right.append(np.where(leaf, own, table.children_right) + offset)
        value.append(_leaf_values(np.asarray(table.value, dtype=np.float64)))
    return ForestArrays(
        feature=np.concatenate(feature),
        threshold=np.concatenate(threshold),
        left=np.concatenate(left).astype(np.int64),
        right=np.concatenate(right).astype(np.int64),
        value=np.concatenate(value),
        roots=offsets,
        depth=max(int(t.max_depth) for t in tables),
    )


def _leaf_values(value: np.ndarray) -> np.ndarray:
    """(nodes, 1, k) counts or fractions -> (nodes, k); rows of several classes are
    normalised to probabilities (regression keeps its one value)."""
    flat = value[:, 0, :]
    if flat.shape[1] == 1:
        return flat.copy()
    total = flat.sum(axis=1, keepdims=True)
    total[total == 0.0] = 1.0
    return flat / total


class ExtraTreesModel(ArrayModel):
    """A fitted forest as arrays, with its column encoding and fill values.

    Frames passed in use the features' safe names; extra columns are ignored.

    Args:
        task: "binary", "multiclass" or "regression".
        classes: the job's class labels in output order (empty for regression).
        class_columns: for each class the forest saw, the index in `classes` it scores
            (classes absent from the training rows get probability 0).
        codes: the column encoding fitted on the training rows.
        fill: per matrix column, the value that replaces a missing one.
        forest: the trees.
        metadata: the configuration name, parameters and validation score.
    """

    def __init__(
        self,
        *,
        task: str,
        classes: list[Any],
        class_columns: list[int],
        codes: ColumnCodes,
        fill: np.ndarray,
        forest: ForestArrays,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(task=task, classes=classes, class_columns=class_columns)
        self.codes = codes
        self.fill = np.asarray(fill, dtype=np.float64)
        self.forest = forest
        self.metadata = dict(metadata or {})

    @property
    def feature_names(self) -> list[str]:
        return self.codes.feature_names

    def matrix(self, frame: pd.DataFrame) -> np.ndarray:
        return self.codes.transform(frame)

    def output_from_matrix(self, x: np.ndarray) -> np.ndarray:
        """Probabilities (n, k) or values (n,) from the codes' matrix (NaN allowed)."""
        output = self.forest.mean_output(fill_missing(x, self.fill))
        if self.task == "regression":
            return output[:, 0]
        return self.place_classes(output)

    def save(self, folder: str | Path) -> Path:
        """Write model.json and forest.npz (plain arrays) into `folder`; return it."""
        fields = {
            "format": MODEL_FORMAT,
            "format_version": FORMAT_VERSION,
            "features": self.feature_names,
            "codes": self.codes.to_dict(),
            "trees": len(self.forest.roots),
        }
        arrays = {**self.forest.arrays(), "fill": self.fill}
        return self.write(folder, fields, TREES_FILE, arrays)


def load_forest(folder: Path, model_json: dict[str, Any]) -> ExtraTreesModel:
    """Build an :class:`ExtraTreesModel` from its read model.json and its arrays.

    Raises:
        ConfigurationError: the arrays file is missing or unreadable.
    """
    try:
        arrays: dict[str, Any] = dict(read_arrays(folder, TREES_FILE))
        fill = arrays.pop("fill")
        arrays["depth"] = int(arrays["depth"])
        forest = ForestArrays(**arrays)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigurationError(
            f"cannot read a saved extra-trees model from {str(folder)!r}: {exc}; "
            f"point at a member folder of the run's model folder"
        ) from None
    return ExtraTreesModel(
        task=str(model_json["task"]),
        classes=list(model_json["classes"]),
        class_columns=[int(c) for c in model_json["class_columns"]],
        codes=ColumnCodes.from_dict(model_json["codes"]),
        fill=fill,
        forest=forest,
        metadata=model_json.get("metadata", {}),
    )


def fill_values(x: np.ndarray, codes: ColumnCodes) -> np.ndarray:
    """Per column of the codes' matrix: the training median for a numeric column
    (0 when all were missing), -1 for a category code."""
    fill = np.full(x.shape[1], -1.0)
    for j in range(len(codes.numeric)):
        known = x[~np.isnan(x[:, j]), j]
        fill[j] = float(np.median(known)) if len(known) else 0.0
    return fill


def fill_missing(x: np.ndarray, fill: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(x), fill, x)


def smallest_leaf(params: dict[str, Any], rows: int) -> int:
    """The smallest leaf a forest of `params` grows on `rows` rows: the asked-for one,
    raised so that no tree passes :data:`MAX_LEAVES_PER_TREE` leaves."""
    asked = int(params.get("min_samples_leaf", 1))
    return max(asked, math.ceil(rows / MAX_LEAVES_PER_TREE))


def fit_forest_estimator(
    x: np.ndarray,
    y: np.ndarray,
    *,
    task: str,
    params: dict[str, Any],
    seed: int,
    threads: int,
    keep_growing: Callable[[], bool] = lambda: True,
) -> Any:
    """Grow extremely randomised trees in steps until `n_estimators` or a stop.

    The forest grows :data:`TREES_PER_STEP` trees at a time (the same trees as one
    fit of them all) and stops early when `keep_growing` returns False.

    Args:
        x: the filled matrix of the training rows (no NaN).
        y: class indices, or values for regression.
        params: ``n_estimators`` (default :data:`DEFAULT_TREES`), ``min_samples_leaf``
            (raised on large data so that no tree passes
            :data:`MAX_LEAVES_PER_TREE` leaves), other ExtraTrees parameters.
        threads: trees fitted in parallel.
    """
    from sklearn.ensemble import ExtraTreesClassifier, ExtraTreesRegressor

    settings = {k: v for k, v in params.items() if k != "n_estimators"}
    settings["min_samples_leaf"] = smallest_leaf(params, len(x))
    total = int(params.get("n_estimators", DEFAULT_TREES))
    kind = ExtraTreesRegressor if task == "regression" else ExtraTreesClassifier
    estimator = kind(
        n_estimators=min(total, TREES_PER_STEP),
        warm_start=True,
        random_state=seed,
        n_jobs=threads,
        **settings,
    )

    estimator.fit(x, y)
    while len(estimator.estimators_) < total and keep_growing():
        estimator.n_estimators = min(total, estimator.n_estimators + TREES_PER_STEP)
        estimator.fit(x, y)
    return estimator


def forest_model(
    estimator: Any,
    *,
    task: str,
    classes: list[Any],
    codes: ColumnCodes,
    fill: np.ndarray,
    metadata: dict[str, Any],
) -> ExtraTreesModel:
    """The :class:`ExtraTreesModel` of a fitted scikit-learn forest."""
    return ExtraTreesModel(
        task=task,
        classes=classes,
        class_columns=[int(c) for c in getattr(estimator, "classes_", [])],
        codes=codes,
        fill=fill,
        forest=extract_forest(estimator),
        metadata=metadata,
    )


__all__ = [
    "ALGORITHM",
    "MODEL_FORMAT",
    "ExtraTreesModel",
    "ForestArrays",
    "extract_forest",
    "fill_values",
    "fit_forest_estimator",
    "forest_model",
    "load_forest",
]
