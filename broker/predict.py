"""Predicting with a run folder's saved model, and scoring when the rows carry the target."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from broker.errors import InputError

if TYPE_CHECKING:
    from broker.metrics import MetricReport

logger = logging.getLogger(__name__)

HOLDOUT_FILE = "holdout.csv.gz"


@dataclass
class PredictOutcome:
    path: Path
    n: int
    metrics: MetricReport | None


def predict_from_run(
    run_dir: Path, data: Path | None = None, out: Path | None = None
) -> PredictOutcome:
    """Predict on `data` (default: the run's own held-out rows) with the run's best model.

    Writes a CSV with the prediction and, for classification, one probability column per
    class. When the rows hold the target column, the metrics on them are returned too.
    """
    import numpy as np
    import pandas as pd

    from broker import intake
    from broker.metrics import compute_metrics
    from broker.models import load_saved_model
    from broker.schema import Schema

    schema_path = run_dir / "schema.json"
    if not schema_path.is_file():
        raise InputError(
            f"{str(run_dir)!r} is not a run folder (schema.json is missing); pass the "
            "folder that `automl-broker run` wrote"
        )
    schema = Schema.from_dict(json.loads(schema_path.read_text(encoding="utf-8")))
    source = data if data is not None else run_dir / HOLDOUT_FILE
    if not source.is_file():
        raise InputError(f"no data to predict on: {str(source)!r} does not exist")

    frame, _ = intake.read_table(source)
    missing = [name for name in schema.feature_names if name not in frame.columns]
    if missing:
        raise InputError(
            f"the data lacks feature column(s) {missing} that the model was trained on"
        )
    model = load_saved_model(run_dir / "model")
    features = intake.to_safe_frame(frame, schema, include_target=False)
    raw = model.predict_proba(features) if schema.classes else model.predict(features)

    result = pd.DataFrame(index=frame.index)
    if schema.classes:
        labels = np.asarray(schema.classes, dtype=object)[np.argmax(raw, axis=1)]
        result["prediction"] = labels
        for i, label in enumerate(schema.classes):
            result[f"proba_{label}"] = raw[:, i]
    else:
        result["prediction"] = raw
    out = out or run_dir / "predictions.csv"
    result.to_csv(out, index=False)

    metrics = None
    if schema.target in frame.columns:
        labelled = frame[schema.target].notna().to_numpy()
        y_true = frame[schema.target].to_numpy()[labelled]
        if schema.classes and schema.task.value != "regression":
            y_true = _as_class_labels(y_true, schema.classes)
        metrics = compute_metrics(schema, y_true, raw[labelled])
    logger.info("predicted %d rows with %s", len(result), run_dir / "model")
    return PredictOutcome(path=out, n=len(result), metrics=metrics)


def _as_class_labels(values: object, classes: tuple[object, ...]) -> object:
    """Labels read back from CSV may be numbers where training saw the same numbers."""
    import numpy as np

    array = np.asarray(values, dtype=object)
    by_text = {str(c): c for c in classes}
    return np.asarray([by_text.get(str(v), v) for v in array], dtype=object)
