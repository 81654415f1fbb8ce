"""The small real model that the cloud fakes train on staged data (scikit-learn)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd


@dataclass
class TrainedTabularModel:
    """A fitted scikit-learn pipeline plus what the fake reports about it."""

    estimator: Any
    task: str  # "classification" or "regression"
    feature_names: list[str]
    numeric: list[str]
    classes: list[str]  # class labels as strings (classification)
    validation_metrics: dict[str, float]
    algorithm: str

    def frame(self, rows: list[dict[str, Any]]) -> pd.DataFrame:
        """Turn instances (values often strings) into a typed frame."""
        frame = pd.DataFrame(rows, columns=self.feature_names)
        for name in self.feature_names:
            if name in self.numeric:
                frame[name] = pd.to_numeric(
                    frame[name].replace("", np.nan), errors="coerce"
                )
            else:
                frame[name] = frame[name].astype("string").fillna("").astype(object)
        return frame

    def predict_rows(self, rows: list[dict[str, Any]]) -> list[Any]:
        frame = self.frame(rows)
        if self.task == "classification":
            return [list(map(float, p)) for p in self.estimator.predict_proba(frame)]
        return [float(v) for v in self.estimator.predict(frame)]


def read_csv_bytes(data: bytes) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)


def train_tabular(
    frame: pd.DataFrame,
    *,
    target: str,
    task: str,
    numeric: list[str],
    categorical: list[str],
    algorithm: str = "hist_gradient_boosting",
    seed: int = 0,
) -> TrainedTabularModel:
    """Fit a small model on string-valued `frame` and score it on a 20% validation cut.

    Args:
        frame: the staged table, every value a string (as read from a CSV).
        target: the target column.
        task: "classification" or "regression".
        numeric: feature columns to treat as numbers.
        categorical: feature columns to treat as categories.
        algorithm: "hist_gradient_boosting" or "linear".
        seed: seed of the validation cut and the estimator.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import (
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
    )
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import (
        log_loss,
        mean_absolute_error,
        r2_score,
        roc_auc_score,
    )
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    # Keep the table's own column order: a headerless CSV (batch transform input) is
    # read back by position.
    wanted = set(numeric) | set(categorical)
    features = [c for c in frame.columns if c in wanted]
    model = TrainedTabularModel(None, task, features, numeric, [], {}, algorithm)
    x = model.frame(frame[features].to_dict("records"))
    y_text = frame[target].astype(str)
    preprocess = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(), StandardScaler()), numeric),
            (
                "cat",
                OneHotEncoder(handle_unknown="ignore", min_frequency=5),
                categorical,
            ),
        ],
        sparse_threshold=0.0,
    )
    if task == "classification":
        y: Any = y_text
        learner: Any = (
            LogisticRegression(max_iter=500)
            if algorithm == "linear"
            else HistGradientBoostingClassifier(max_iter=60, random_state=seed)
        )
        stratify = y if y.value_counts().min() >= 2 else None
    else:
        y = pd.to_numeric(y_text, errors="coerce").astype(float)
        learner = (
            Ridge()
            if algorithm == "linear"
            else HistGradientBoostingRegressor(max_iter=60, random_state=seed)
        )
        stratify = None
    x_fit, x_val, y_fit, y_val = train_test_split(
        x, y, test_size=0.2, random_state=seed, stratify=stratify
    )
    estimator = make_pipeline(preprocess, learner).fit(x_fit, y_fit)
    model.estimator = estimator
    if task == "classification":
        model.classes = [str(c) for c in estimator.classes_]
        proba = estimator.predict_proba(x_val)
        labels = model.classes
        if len(labels) == 2:
            auc = roc_auc_score(y_val == labels[1], proba[:, 1])
        else:
            auc = roc_auc_score(y_val, proba, multi_class="ovr", labels=labels)
        model.validation_metrics = {
            "roc_auc": float(auc),
            "log_loss": float(log_loss(y_val, proba, labels=labels)),
            "accuracy": float(np.mean(np.asarray(labels)[proba.argmax(1)] == y_val)),
        }
    else:
        pred = estimator.predict(x_val)
        model.validation_metrics = {
            "rmse": float(np.sqrt(np.mean((pred - y_val) ** 2))),
            "mae": float(mean_absolute_error(y_val, pred)),
            "r2": float(r2_score(y_val, pred)),
        }
    return model
