"""Predicting from a run folder: rows read as training read them, labels before files."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from broker import predict
from broker.errors import DataWarning, InputError, MetricWarning
from broker.intake import load_dataset, load_holdout, read_table
from broker.predict import HOLDOUT_FILE, RunModel, predict_from_run
from broker.runner import _as_numbers_read
from broker.spec import JobSpec


class _SumModel:
    """Predicts the sum of a row's features: what it was given is what it returns."""

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return frame.sum(axis=1).to_numpy()


def _percent_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Any]:
    rows = [(f"{n}.5%", n % 3, f"{2 * n}%") for n in range(1, 13)]
    data = tmp_path / "train.csv"
    data.write_text("rate,x,y\n" + "".join(f"{r},{x},{y}\n" for r, x, y in rows))
    with pytest.warns(DataWarning):
        schema = load_dataset(JobSpec(data=data, target="y")).schema
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "schema.json").write_text(json.dumps(schema.to_dict()))
    model = RunModel(schema, _SumModel())
    monkeypatch.setattr(predict, "load_run", lambda _: model)
    return run_dir, model


def test_refused_labels_leave_no_predictions_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir, _ = _percent_run(tmp_path, monkeypatch)
    new = tmp_path / "new.csv"
    new.write_text("rate,x,y\n1.5%,1,4%\n2.5%,0,oops\n")

    with pytest.raises(InputError) as caught:
        predict_from_run(run_dir, new)

    assert str(caught.value).startswith(
        "new rows' labels of 'y' must be percentages (such as '12.5%'), as in the "
        "training data (a regression target), but 1 distinct value(s) are not, such "
        "as 'oops'"
    )
    assert list(run_dir.glob("predictions*")) == []


def test_a_semicolon_file_is_read_with_its_own_decimal_comma(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir, _ = _percent_run(tmp_path, monkeypatch)
    new = tmp_path / "new.csv"
    new.write_text("rate;x;y\n1,5%;1,25;4%\n2,5%;0,5;10,5%\n")

    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        outcome = predict_from_run(run_dir, new)

    # rate + x: 0.015 + 1.25 and 0.025 + 0.5, never 125 or 25
    written = pd.read_csv(outcome.path)["prediction"].tolist()
    assert written == pytest.approx([1.265, 0.525])
    assert outcome.metrics is not None


def test_plain_numbers_beyond_1_for_percentages_are_warned_of(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, model = _percent_run(tmp_path, monkeypatch)

    with pytest.warns(DataWarning) as caught:
        as_percent = model.predict(pd.DataFrame({"rate": [5.9, 0.1], "x": [0, 0]}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        as_fractions = model.predict(pd.DataFrame({"rate": [0.059, 0.1], "x": [0, 0]}))

    assert [str(w.message) for w in caught] == [
        "column 'rate' of the rows holds plain numbers, such as 5.9, where training "
        "read percentages (such as '12.5%'); they are taken as fractions (0.5 for "
        "50%). Write them with a '%' sign if they are percentages"
    ]
    assert as_percent.tolist() == [5.9, 0.1]
    assert as_fractions.tolist() == [0.059, 0.1]


def test_a_blank_label_column_still_writes_the_predictions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir, _ = _percent_run(tmp_path, monkeypatch)
    new = tmp_path / "new.csv"
    new.write_text("rate,x,y\n1.5%,1,\n2.5%,0,\n")

    outcome = predict_from_run(run_dir, new)

    assert outcome.metrics is None
    assert pd.read_csv(outcome.path)["prediction"].tolist() == [1.015, 0.025]


def test_a_semicolon_file_with_decimal_points_is_read_as_pandas_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, model = _percent_run(tmp_path, monkeypatch)
    new = tmp_path / "new.csv"
    new.write_text("rate;x\n1.5%;0.125\n2.5%;0.250\n3.5%;?\n")
    frame, _ = read_table(new)

    with pytest.warns(DataWarning, match=r"column 'x': 1 value\(s\) are not numbers"):
        features = model.features(frame)

    # no comma anywhere: the dots are decimal points, never thousands (125, 250)
    assert features["rate"].tolist() == [0.015, 0.025, 0.035]
    assert features["x"].tolist()[:2] == [0.125, 0.25]


def test_the_run_folders_own_rows_read_back_as_scored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir, _ = _percent_run(tmp_path, monkeypatch)
    holdout = tmp_path / "hold.csv"
    holdout.write_text("rate;x;y\n2,5%;-1,671;4%\n1.000,5%;2,25;600%\n")
    spec = JobSpec(data=tmp_path / "train.csv", target="y", holdout_data=holdout)
    with pytest.warns(DataWarning):
        schema = load_dataset(spec).schema
    held = load_holdout(spec, schema)
    assert held is not None
    _as_numbers_read(held.frame, schema).to_csv(run_dir / HOLDOUT_FILE, index=False)

    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        outcome = predict_from_run(run_dir)

    # rate + x as the holdout file wrote them: 0.025 - 1.671 and 10.005 + 2.25
    written = pd.read_csv(outcome.path)["prediction"].tolist()
    assert written == pytest.approx([-1.646, 12.255])
    assert outcome.metrics is not None


def test_labels_of_blank_text_are_not_scored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir, _ = _percent_run(tmp_path, monkeypatch)
    new = tmp_path / "new.csv"
    new.write_text('rate,x,y\n1.5%,1," "\n2.5%,0,10%\n')

    with pytest.warns(MetricWarning, match="r2 is undefined"):  # one row scored
        outcome = predict_from_run(run_dir, new)

    assert outcome.metrics is not None and outcome.metrics.n == 1
    assert pd.read_csv(outcome.path)["prediction"].tolist() == [1.015, 0.025]
