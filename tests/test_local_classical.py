"""The local backend's classical stage: boosted trees (encoding, array export), the
order and time cap of all configurations, and loading every kind back."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
)
from threadpoolctl import threadpool_limits

import broker.local.classical as classical_module
from broker.errors import ConfigurationError
from broker.local.classical import (
    CONFIGS,
    SEARCH_CONFIGS,
    ClassicalConfig,
    ClassicalExportError,
    ColumnCodes,
    GradientBoostingModel,
    extract_trees,
    fit_classical,
    load_classical,
    sampled_configs,
)


@pytest.fixture(autouse=True)
def _one_openmp_thread() -> Iterator[None]:
    """scikit-learn's own fits and predictions here use one thread, as the backend's
    do on a two-core machine (spinning OpenMP threads stall a busy machine)."""
    with threadpool_limits(limits=1, user_api="openmp"):
        yield


def _real_table(task: str) -> tuple[pd.DataFrame, np.ndarray, list[str], list[str]]:
    """A bundled real data set with missing values and a categorical column added."""
    loader = {
        "binary": load_breast_cancer,
        "multiclass": load_wine,
        "regression": load_diabetes,
    }[task]
    data = loader()
    frame = pd.DataFrame(data.data[:, :6], columns=[f"x{i}" for i in range(6)])
    rng = np.random.default_rng(0)
    frame.loc[rng.random(len(frame)) < 0.1, "x0"] = np.nan  # missing numbers
    # a category that carries signal: the quartile of x2, with some missing
    quartile = pd.qcut(frame["x2"], 4, labels=["q1", "q2", "q3", "q4"]).astype(object)
    quartile[rng.random(len(frame)) < 0.05] = None
    frame["band"] = quartile
    return frame, np.asarray(data.target), [f"x{i}" for i in range(6)], ["band"]


def _fit(task: str, x: np.ndarray, y: np.ndarray) -> Any:
    settings: dict[str, Any] = {"categorical_features": None, "max_iter": 60}
    if task == "regression":
        return HistGradientBoostingRegressor(**settings).fit(x, y)
    return HistGradientBoostingClassifier(**settings).fit(x, y)


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_classical_numpy_predictor_equals_sklearn(task: str) -> None:
    frame, y, numeric, categorical = _real_table(task)
    codes = ColumnCodes.fit(frame.iloc[:-40], numeric, categorical)
    estimator = _fit(task, codes.transform(frame.iloc[:-40]), y[:-40])
    classes = [] if task == "regression" else list(estimator.classes_)
    model = GradientBoostingModel(
        task=task,
        classes=classes,
        class_columns=list(range(len(classes))),
        codes=codes,
        trees=extract_trees(estimator),
    )
    test = frame.iloc[-40:].copy()
    test.iloc[0, test.columns.get_loc("band")] = "q9"  # a category never seen

    x_test = codes.transform(test)
    if task == "regression":
        expected, got = estimator.predict(x_test), model.predict(test)
    else:
        expected, got = estimator.predict_proba(x_test), model.predict_proba(test)

    # the walk over the arrays gives scikit-learn's own numbers
    assert np.isnan(x_test[0, -1])
    assert np.isnan(x_test[:, 0]).any()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)


def test_classical_codes_follow_sorted_training_values_unseen_and_missing_are_nan() -> (
    None
):
    train = pd.DataFrame({"n": [1.5, None, 3.0], "c": ["b", "a", "b"]})
    codes = ColumnCodes.fit(train, ["n"], ["c"])

    matrix = codes.transform(pd.DataFrame({"n": ["2", 4], "c": ["a", "zz"]}))
    missing = codes.transform(pd.DataFrame({"n": [None], "c": [None]}))

    assert codes.categorical == {"c": ["a", "b"]}
    np.testing.assert_array_equal(matrix, [[2.0, 0.0], [4.0, np.nan]])
    assert np.isnan(missing).all()


def test_classical_saved_model_is_plain_arrays_and_predicts_the_same(
    tmp_path: Path,
) -> None:
    frame, y, numeric, categorical = _real_table("multiclass")
    run = fit_classical(
        frame,
        y,
        frame,
        task="multiclass",
        classes=["c0", "c1", "c2"],
        numeric=numeric,
        categorical=categorical,
        seed=0,
        time_cap_s=60,
        configs={"hgb-default": CONFIGS["hgb-default"]},
    )
    model = run.fits[0].model

    loaded = load_classical(model.save(tmp_path / "hgb"))

    np.testing.assert_array_equal(
        loaded.predict_proba(frame), model.predict_proba(frame)
    )
    assert list(loaded.predict(frame[:3])) == list(model.predict(frame[:3]))
    meta = json.loads((tmp_path / "hgb" / "model.json").read_text())
    assert meta["format"] == "hist-gradient-boosting"
    assert meta["codes"]["categorical"] == {"band": ["q1", "q2", "q3", "q4"]}
    with zipfile.ZipFile(tmp_path / "hgb" / "trees.npz") as archive:
        names = sorted(archive.namelist())
    assert names == sorted(
        f"{n}.npy"
        for n in (
            "baseline",
            "feature",
            "is_leaf",
            "left",
            "missing_left",
            "outputs",
            "right",
            "roots",
            "threshold",
            "value",
        )
    )


def test_classical_class_missing_from_training_rows_gets_probability_zero() -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"x": rng.normal(size=60)})
    y = (frame["x"] > 0).astype(int).to_numpy() * 2  # classes 0 and 2 of three

    run = fit_classical(
        frame,
        y,
        frame,
        task="multiclass",
        classes=["a", "b", "c"],
        numeric=["x"],
        categorical=[],
        seed=0,
        time_cap_s=60,
        configs={"hgb-default": CONFIGS["hgb-default"]},
    )
    proba = run.fits[0].validation_output

    assert proba.shape == (60, 3)
    np.testing.assert_array_equal(proba[:, 1], 0.0)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)


class _TickingClock:
    """Monotonic seconds that move one second each time they are read."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_classical_time_cap_stops_starting_configurations() -> None:
    frame, y, numeric, categorical = _real_table("binary")

    run = fit_classical(
        frame,
        y,
        frame,
        task="binary",
        classes=[0, 1],
        numeric=numeric,
        categorical=categorical,
        seed=0,
        time_cap_s=2.5,
        clock=_TickingClock(),
    )

    # reads: start 1; first check 2 (1 s spent), fit 3..4; second check 5 (4 s): stop
    assert [f.name for f in run.fits] == ["hgb-default"]
    assert run.skipped == list(CONFIGS)[1:]
    assert "time cap of 2.5 s was spent" in run.notes[0]


def test_classical_cancelled_before_the_first_configuration_fits_none() -> None:
    frame, y, numeric, categorical = _real_table("regression")

    run = fit_classical(
        frame,
        y.astype(float),
        frame,
        task="regression",
        classes=[],
        numeric=numeric,
        categorical=categorical,
        seed=0,
        time_cap_s=60,
        should_stop=lambda: True,
    )

    assert run.fits == []
    assert run.skipped == list(CONFIGS)


def test_classical_one_class_in_the_training_rows_fits_nothing() -> None:
    frame = pd.DataFrame({"x": [0.1, 0.2, 0.3]})

    run = fit_classical(
        frame,
        np.array([1, 1, 1]),
        frame,
        task="binary",
        classes=["no", "yes"],
        numeric=["x"],
        categorical=[],
        seed=0,
        time_cap_s=60,
    )

    assert run.fits == []
    assert run.notes == [
        "the classical models were not fitted: the training rows hold one class"
    ]


def test_classical_extract_trees_without_the_private_attributes_is_our_error() -> None:
    class NotFitted:
        pass

    with pytest.raises(ClassicalExportError, match=r"cannot read them .*_predictors"):
        extract_trees(NotFitted())


def test_classical_load_of_a_missing_folder_names_it(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigurationError, match=r"cannot read a saved classical model"
    ):
        load_classical(tmp_path / "absent")


def test_classical_stage_fits_every_kind_in_order_on_the_same_rows() -> None:
    frame, y, numeric, categorical = _real_table("binary")

    run = fit_classical(
        frame.iloc[:400],
        y[:400],
        frame.iloc[400:],
        task="binary",
        classes=[0, 1],
        numeric=numeric,
        categorical=categorical,
        seed=0,
        time_cap_s=60,
    )

    # the fastest informative kinds first, then the slower boosting configurations
    assert [(f.name, f.algorithm) for f in run.fits] == [
        ("hgb-default", "hist_gradient_boosting"),
        ("linear-l2", "linear"),
        ("extra-trees", "extra_trees"),
        ("linear-l2-strong", "linear"),
        ("hgb-slow", "hist_gradient_boosting"),
        ("extra-trees-leaf5", "extra_trees"),
        ("hgb-wide", "hist_gradient_boosting"),
        ("hgb-l2", "hist_gradient_boosting"),
    ]
    assert {f.validation_output.shape for f in run.fits} == {(169, 2)}
    assert run.fits[2].iterations == 300  # trees grown
    assert run.skipped == [] and run.notes == []


def test_classical_stage_is_seeded() -> None:
    frame, y, numeric, categorical = _real_table("multiclass")
    configs = {k: CONFIGS[k] for k in ("linear-l2", "extra-trees")}

    def outputs() -> list[np.ndarray]:
        run = fit_classical(
            frame.iloc[:120],
            y[:120],
            frame.iloc[120:],
            task="multiclass",
            classes=[0, 1, 2],
            numeric=numeric,
            categorical=categorical,
            seed=3,
            time_cap_s=60,
            configs=configs,
        )
        return [f.validation_output for f in run.fits]

    first, second = outputs(), outputs()

    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_classical_forest_stops_growing_when_the_job_is_cancelled() -> None:
    frame, y, numeric, categorical = _real_table("regression")
    answers = iter([False, True])  # the start check passes; the growth check stops

    run = fit_classical(
        frame,
        y.astype(float),
        frame,
        task="regression",
        classes=[],
        numeric=numeric,
        categorical=categorical,
        seed=0,
        time_cap_s=60,
        configs={"extra-trees": CONFIGS["extra-trees"]},
        should_stop=lambda: next(answers, True),
    )

    # one step of 100 trees was grown and kept, with its validation output
    assert [f.iterations for f in run.fits] == [100]
    assert run.fits[0].validation_output.shape == (len(frame),)
    assert run.notes == [
        "extra-trees: 100 of 300 trees were grown; the job was cancelled"
    ]


def test_classical_config_with_an_unknown_algorithm_is_refused() -> None:
    with pytest.raises(
        ConfigurationError, match=r"unknown classical algorithm 'svm'; use one of"
    ):
        ClassicalConfig("svm", {})


def test_classical_load_of_another_format_names_the_known_ones(
    tmp_path: Path,
) -> None:
    (tmp_path / "model.json").write_text(json.dumps({"format": "torch-tabular"}))

    with pytest.raises(
        ConfigurationError,
        match=r"format 'torch-tabular', not one of \['hist-gradient-boosting', "
        r"'linear', 'extra-trees', 'bagged'\]",
    ):
        load_classical(tmp_path)


def test_classical_every_kind_joins_the_saved_ensemble_and_loads_without_pickle(
    tmp_path: Path,
) -> None:
    from broker.local.export import EnsembleMember, LocalEnsembleModel
    from broker.models import load_saved_model

    frame, y, numeric, categorical = _real_table("multiclass")
    names = ("hgb-default", "linear-l2", "extra-trees")
    run = fit_classical(
        frame.iloc[:140],
        y[:140],
        frame.iloc[140:],
        task="multiclass",
        classes=["c0", "c1", "c2"],
        numeric=numeric,
        categorical=categorical,
        seed=0,
        time_cap_s=60,
        configs={k: CONFIGS[k] for k in names},
    )
    model = LocalEnsembleModel(
        task="multiclass",
        classes=["c0", "c1", "c2"],
        members=[
            EnsembleMember(
                name=f.name,
                kind="classical",
                algorithm=f.algorithm,
                weight=weight,
                validation=None,
                model=f.model,
            )
            for f, weight in zip(run.fits, (0.5, 0.25, 0.25), strict=True)
        ],
    )
    test = frame.iloc[140:].copy()
    test.iloc[0, test.columns.get_loc("band")] = "q9"  # a category never seen

    loaded = load_saved_model(model.save(tmp_path / "model"))

    expected = (
        0.5 * run.fits[0].validation_output
        + 0.25 * run.fits[1].validation_output
        + 0.25 * run.fits[2].validation_output
    )
    np.testing.assert_allclose(
        loaded.predict_proba(frame.iloc[140:]), expected, rtol=0, atol=1e-12
    )
    np.testing.assert_array_equal(loaded.predict_proba(test), model.predict_proba(test))
    members = json.loads((tmp_path / "model" / "model.json").read_text())["members"]
    assert [(m["kind"], m["algorithm"]) for m in members] == [
        ("classical", "hist_gradient_boosting"),
        ("classical", "linear"),
        ("classical", "extra_trees"),
    ]
    stored = sorted(p.name for p in (tmp_path / "model").rglob("*") if p.is_file())
    assert stored == sorted(
        ["model.json"] * 4 + ["trees.npz", "coefficients.npz", "forest.npz"]
    )


class _CostClock:
    """Seconds that move only when a fit finishes, by that kind's cost."""

    def __init__(self, costs: dict[str, float]) -> None:
        self.now = 0.0
        self.costs = costs

    def __call__(self) -> float:
        return self.now

    def charge(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Make each fitter advance the clock by its algorithm's cost."""
        fitters = dict(classical_module._FITTERS)

        def charged(algorithm: str) -> Any:
            def fit(*args: Any) -> Any:
                fitted = fitters[algorithm](*args)
                self.now += self.costs[algorithm]
                return fitted

            return fit

        monkeypatch.setattr(
            classical_module, "_FITTERS", {a: charged(a) for a in fitters}
        )


def test_classical_drawn_configurations_are_seeded_in_turn_and_in_range() -> None:
    drawn = list(sampled_configs(0))
    again = list(sampled_configs(0))
    other = list(sampled_configs(1))

    assert drawn == again and drawn != other
    assert len(drawn) == SEARCH_CONFIGS == 16
    assert [name for name, _ in drawn[:4]] == [
        "hgb-random-1",
        "extra-trees-random-2",
        "hgb-random-3",
        "extra-trees-random-4",
    ]
    for name, config in drawn:
        params = config.params
        if name.startswith("hgb-"):
            assert config.algorithm == "hist_gradient_boosting"
            assert 0.02 <= params["learning_rate"] <= 0.2
            assert 8 <= params["max_leaf_nodes"] <= 256
            assert 2 <= params["min_samples_leaf"] <= 100
            assert 1e-3 <= params["l2_regularization"] <= 10.0
            assert 0.5 <= params["max_features"] <= 1.0
            assert params["max_iter"] == 1000
        else:
            assert config.algorithm == "extra_trees"
            assert params["max_features"] in ("sqrt", 0.5, 0.75, 1.0)
            assert 1 <= params["min_samples_leaf"] <= 8
            assert params["n_estimators"] == 300


def test_classical_search_fits_drawn_configurations_while_the_cap_has_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    frame, y, numeric, categorical = _real_table("binary")
    clock = _CostClock({"hist_gradient_boosting": 2.0, "extra_trees": 3.0})
    clock.charge(monkeypatch)
    seeded = {
        "hgb-default": CONFIGS["hgb-default"],
        "extra-trees": CONFIGS["extra-trees"],
    }
    settings: dict[str, Any] = {
        "task": "binary",
        "classes": [0, 1],
        "numeric": numeric,
        "categorical": categorical,
        "seed": 0,
        "time_cap_s": 20,
        "configs": seeded,
        "clock": clock,
    }

    run = fit_classical(
        frame.iloc[:400], y[:400], frame.iloc[400:], search=True, **settings
    )

    # seeded fits end at 5 s; a drawn one starts only with twice its kind's slowest
    # time left: boosting at 5, 10 and 15 s (4 s needed), forests at 7 and 12 s (6 s);
    # at 17 s neither fits in the 3 s left
    assert [f.name for f in run.fits] == [
        "hgb-default",
        "extra-trees",
        "hgb-random-1",
        "extra-trees-random-2",
        "hgb-random-3",
        "extra-trees-random-4",
        "hgb-random-5",
    ]
    assert clock.now == 17.0
    drawn = dict(sampled_configs(0))
    assert (
        run.fits[3].params["max_features"]
        == drawn["extra-trees-random-2"].params["max_features"]
    )
    assert run.skipped == [] and run.notes == []

    clock.now = 0.0
    plain = fit_classical(frame.iloc[:400], y[:400], frame.iloc[400:], **settings)

    assert [f.name for f in plain.fits] == ["hgb-default", "extra-trees"]


def test_classical_forest_that_the_leaf_floor_makes_a_duplicate_is_not_fitted() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9_500, 3))
    frame = pd.DataFrame(x, columns=["a", "b", "c"])
    y = (x[:, 0] + rng.normal(size=9_500) > 0).astype(int)
    forests = {
        "trees": ClassicalConfig("extra_trees", {"n_estimators": 10}),
        "trees-leaf2": ClassicalConfig(
            "extra_trees", {"n_estimators": 10, "min_samples_leaf": 2}
        ),
        "trees-leaf5": ClassicalConfig(
            "extra_trees", {"n_estimators": 10, "min_samples_leaf": 5}
        ),
    }

    run = fit_classical(
        frame.iloc[:9_000],
        y[:9_000],
        frame.iloc[9_000:],
        task="binary",
        classes=[0, 1],
        numeric=["a", "b", "c"],
        categorical=[],
        seed=0,
        time_cap_s=60,
        configs=forests,
    )

    # ceil(9,000 / 4,096) = 3 rows per leaf at least: leaves of 1 and of 2 are the same
    assert [f.name for f in run.fits] == ["trees", "trees-leaf5"]
    assert run.notes == [
        "trees-leaf2: not fitted, the same forest as trees on 9,000 rows (leaves of at "
        "least 3 rows keep each tree under 4,096 leaves)"
    ]
    assert run.skipped == []
