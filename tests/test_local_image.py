"""The image path: pixel columns read as an image and searched with convolution blocks."""

from __future__ import annotations

import logging
import time
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from broker.errors import ConfigurationError
from broker.local.export import load_model
from broker.local.network import ConvNetConfig
from broker.local.search import SearchOptions, detect_image_shape, run_search
from broker.local.space import SearchSpace

TINY_CONV = {
    "conv_blocks": 1,
    "channels": 4,
    "kernel_size": 3,
    "pooling": "max",
    "head_width": 0,
    "activation": "relu",
    "norm": "none",
    "dropout": 0.0,
    "learning_rate": 1e-2,
    "weight_decay": 0.0,
    "batch_size": 16,
}


def _bars(n: int = 80, side: int = 4) -> pd.DataFrame:
    """Images with a bright horizontal ("h") or vertical ("v") bar."""
    rng = np.random.default_rng(0)
    rows, labels = [], []
    for i in range(n):
        image = rng.uniform(0, 2, size=(side, side))
        line = rng.integers(side)
        if i % 2:
            image[line, :] += 14
        else:
            image[:, line] += 14
        rows.append(image.ravel())
        labels.append("h" if i % 2 else "v")
    frame = pd.DataFrame(rows, columns=[f"pixel_{i}" for i in range(side * side)])
    frame["label"] = labels
    return frame


def test_detect_image_shape_reads_square_pixel_columns() -> None:
    pixels = [f"pixel_{i}" for i in range(64)]

    assert detect_image_shape(pixels, []) == [1, 8, 8]
    assert detect_image_shape(list(reversed(pixels)), []) == [1, 8, 8]
    assert detect_image_shape([f"px{i}" for i in range(1, 17)], []) == [1, 4, 4]
    # not square, not all pixels, or with a categorical column: a table
    assert detect_image_shape(pixels[:60], []) is None
    assert detect_image_shape([*pixels[:63], "age"], []) is None
    assert detect_image_shape(pixels, ["color"]) is None
    # constant pixels the intake dropped keep their places
    assert detect_image_shape(pixels[1:40], [], dropped=pixels[40:] + pixels[:1]) == [
        1,
        8,
        8,
    ]


def test_search_on_pixel_columns_trains_a_conv_net_that_saves_and_loads(
    tmp_path: Path,
) -> None:
    frame = _bars()
    pixels = [c for c in frame.columns if c != "label"]

    result = run_search(
        frame,
        target="label",
        task="binary",
        numeric=pixels,
        categorical=[],
        metric="accuracy",
        budget_s=60,
        classes=["h", "v"],
        space=SearchSpace(params={}, fixed=TINY_CONV, kind="image"),
        options=SearchOptions(max_trials=1, max_epochs=30, patience=30),
    )
    model = result.best_model()
    loaded = load_model(model.save(tmp_path / "model"))

    assert isinstance(result.best.network, ConvNetConfig)
    assert result.best.network.input_shape == [1, 4, 4]
    # a bar's direction is plain to a 3x3 convolution
    assert result.best.score == 1.0
    np.testing.assert_allclose(
        loaded.predict_proba(frame), model.predict_proba(frame), rtol=1e-6
    )
    assert (loaded.predict(frame) == frame["label"].to_numpy()).mean() > 0.95


def test_search_input_shape_that_does_not_match_the_columns_is_refused() -> None:
    frame = _bars()

    with pytest.raises(
        ConfigurationError, match=r"input_shape \[1, 2, 2\] needs at most 4 numeric"
    ):
        run_search(
            frame,
            target="label",
            task="binary",
            numeric=[c for c in frame.columns if c != "label"],
            categorical=[],
            metric="accuracy",
            budget_s=60,
            options=SearchOptions(max_trials=1, input_shape=[1, 2, 2]),
        )


@pytest.mark.slow
def test_digits_through_the_broker_reach_097_accuracy_within_five_minutes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sklearn.datasets import load_digits

    from broker.runner import Broker
    from broker.spec import JobSpec
    from broker.store import JobStore
    from cost_models.catalog import Catalog, PriceRow

    monkeypatch.setenv("AUTOML_BROKER_HOME", str(tmp_path / "home"))
    digits = load_digits()
    frame = pd.DataFrame(digits.data, columns=[f"pixel_{i}" for i in range(64)])
    frame["digit"] = digits.target
    frame.to_csv(tmp_path / "digits.csv", index=False)
    broker = Broker(
        store=JobStore(tmp_path / "jobs.db"),
        catalog=Catalog.from_rows(
            [PriceRow("local", "this-machine", "local", price=None, memory_gib=64)]
        ),
        local_rate_usd_per_hour=Decimal("0"),
        poll_interval_s=1.0,
    )
    spec = JobSpec(
        data=tmp_path / "digits.csv",
        target="digit",
        task="multiclass",
        budget={"max_runtime_s": 240},
        constraints={"providers": ["local"]},
        provider_options={"local": {"max_trials": 3}},
    )
    started = time.monotonic()

    result = broker.run(spec, run_dir=tmp_path / "run")

    elapsed = time.monotonic() - started
    logging.getLogger(__name__).warning(
        "digits through the broker: held-out accuracy %s, %d trials, %.1f s",
        result.holdout_metrics.get("accuracy"),
        len(result.leaderboard),
        elapsed,
    )
    assert result.state == "succeeded"
    assert result.best is not None and result.best.algorithm in {"cnn", "ensemble"}
    # images get networks only (and an ensemble of them), no boosted trees
    assert {e.algorithm for e in result.leaderboard} <= {"cnn", "ensemble"}
    assert result.holdout_metrics["accuracy"] is not None
    assert result.holdout_metrics["accuracy"] >= 0.97
    assert elapsed < 300
