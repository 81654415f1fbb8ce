"""Predicting with a run folder's saved model, and scoring when the rows carry the target."""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.errors import DataWarning, InputError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from broker.metrics import MetricReport
    from broker.schema import Schema

logger = logging.getLogger(__name__)

HOLDOUT_FILE = "holdout.csv.gz"


@dataclass
class PredictOutcome:
    path: Path
    n: int
    metrics: MetricReport | None


@dataclass
class RunModel:
    """A run folder's model, taking rows with the user's own column names.

    The saved model itself (``model``) expects the broker's safe column names; this
    wrapper renames and types the columns as the run's schema says first.
    """

    schema: Schema
    model: Any

    def features(self, frame: pd.DataFrame) -> pd.DataFrame:
        """`frame`'s feature columns under their safe names, typed as in training."""
        from broker import intake

        missing = [n for n in self.schema.feature_names if n not in frame.columns]
        if missing:
            raise InputError(
                f"the data lacks feature column(s) {missing} that the model was "
                "trained on"
            )
        features = frame[self.schema.feature_names]
        intake.warn_of_plain_numbers_for_percentages(features, self.schema, "rows")
        return intake.to_safe_frame(frame, self.schema, include_target=False)

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """One column per class, in the order of ``schema.classes``."""
        if not self.schema.classes:
            raise InputError("a regression model has no class probabilities")
        return self.model.predict_proba(self.features(frame))  # type: ignore[no-any-return]

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Class labels for classification, values for regression."""
        import numpy as np

        if self.schema.classes:
            proba = self.predict_proba(frame)
            return np.asarray(self.schema.classes, dtype=object)[
                np.argmax(proba, axis=1)
            ]
        return self.model.predict(self.features(frame))  # type: ignore[no-any-return]

    def best_network(self) -> RunModel:
        """The best searched network alone, for a local run's ensemble."""
        if not hasattr(self.model, "best_network"):
            raise InputError(
                "this run's model is not a local ensemble; it has no parts"
            )
        return RunModel(self.schema, self.model.best_network())


def load_run(run_dir: str | Path) -> RunModel:
    """The model of a run folder written by `automl-broker run` or ``Broker.run``.

    Raises:
        InputError: the folder is not a run folder, or its job ended without a model.
    """
    from broker.models import load_saved_model
    from broker.schema import Schema

    run_dir = Path(run_dir)
    schema_path = run_dir / "schema.json"
    if not schema_path.is_file():
        raise InputError(
            f"{str(run_dir)!r} is not a run folder (schema.json is missing); pass the "
            "folder that `automl-broker run` wrote"
        )
    result_path = run_dir / "result.json"
    if not (run_dir / "model").is_dir() and result_path.is_file():
        try:
            result = json.loads(result_path.read_text(encoding="utf-8"))
        except ValueError:
            result = {}
        error = result.get("error") or {}
        raise InputError(
            f"the job of {str(run_dir)!r} ended {result.get('state', 'unfinished')} "
            f"without a model ({error.get('type', 'no detail')}: "
            f"{error.get('message', '')}); run it again"
        )
    schema = Schema.from_dict(json.loads(schema_path.read_text(encoding="utf-8")))
    return RunModel(schema, load_saved_model(run_dir / "model"))


def predict_from_run(
    run_dir: Path, data: Path | None = None, out: Path | None = None
) -> PredictOutcome:
    """Predict on `data` (default: the run's own held-out rows) with the run's best model.

    Writes a CSV with the prediction and, for classification, one probability column per
    class: to `out`, else into the run folder as predictions.csv (held-out rows) or
    predictions-<input name>.csv. When the rows hold the target column, the metrics on
    them are returned too.
    """
    import numpy as np
    import pandas as pd

    from broker import intake
    from broker.metrics import compute_metrics

    run = load_run(run_dir)
    schema = run.schema
    source = data if data is not None else run_dir / HOLDOUT_FILE
    if not source.is_file():
        raise InputError(f"no data to predict on: {str(source)!r} does not exist")

    frame, _ = intake.read_table(source)
    with warnings.catch_warnings():
        if data is None:
            # The run's own rows: numbers as intake read them (fractions for
            # percentages), text (in older run folders) as the training table wrote it.
            frame.attrs.pop(intake.DELIMITER_ATTR, None)
            warnings.filterwarnings(
                "ignore", "column .* holds plain numbers", DataWarning
            )
        elif schema.target in frame.columns:
            target = frame[[schema.target]]
            intake.warn_of_plain_numbers_for_percentages(target, schema, "rows")
        raw = run.predict_proba(frame) if schema.classes else run.predict(frame)

    metrics = None  # labels are read before anything is written: they may be refused
    labelled = _labelled(frame, schema.target)
    if labelled.any():  # rows without labels are predicted, not scored
        y_true = frame[schema.target].to_numpy()[labelled]
        if schema.task.value == "regression":  # "1,250", "12.5%" read as in training
            written = frame[schema.target][labelled]
            y_true = intake.read_labels(
                written,
                schema,
                decimal_comma=frame.attrs.get(intake.DELIMITER_ATTR) == ";",
                where="new rows'" if data is not None else "holdout",
            ).to_numpy()
        elif schema.classes:
            y_true = _as_class_labels(y_true, schema.classes)
        metrics = compute_metrics(schema, y_true, raw[labelled])

    result = pd.DataFrame(index=frame.index)
    if schema.classes:
        labels = np.asarray(schema.classes, dtype=object)[np.argmax(raw, axis=1)]
        result["prediction"] = labels
        for i, label in enumerate(schema.classes):
            result[f"proba_{label}"] = raw[:, i]
    else:
        result["prediction"] = raw
    # one file per input, so predicting on new rows keeps the held-out predictions
    default_name = f"predictions-{_file_stem(data)}.csv" if data else "predictions.csv"
    out = out or run_dir / default_name
    result.to_csv(out, index=False)
    logger.info("predicted %d rows with %s", len(result), run_dir / "model")
    return PredictOutcome(path=out, n=len(result), metrics=metrics)


def _labelled(frame: pd.DataFrame, target: str) -> np.ndarray:
    """Which rows hold a label: not missing, not blank text (as intake counts them)."""
    import numpy as np

    if target not in frame.columns:
        return np.zeros(len(frame), dtype=bool)
    labels = frame[target]
    blank = labels.map(lambda v: isinstance(v, str) and not v.strip()).astype(bool)
    return (labels.notna() & ~blank).to_numpy(dtype=bool)


def _file_stem(path: Path) -> str:
    """`new-rows` for new-rows.csv and new-rows.csv.gz alike."""
    name = path.name
    for suffix in (".gz", ".bz2", ".xz", ".zip"):
        name = name.removesuffix(suffix)
    return Path(name).stem


def _as_class_labels(values: object, classes: tuple[object, ...]) -> object:
    """Labels read back from CSV may be numbers where training saw the same numbers."""
    import numpy as np

    array = np.asarray(values, dtype=object)
    by_text = {str(c): c for c in classes}
    return np.asarray([by_text.get(str(v), v) for v in array], dtype=object)
