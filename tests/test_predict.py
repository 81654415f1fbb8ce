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
from broker.errors import DataWarning, InputError
from broker.intake import load_dataset
from broker.predict import RunModel, predict_from_run
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
