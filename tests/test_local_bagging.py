"""K-fold bagging of the classical models on small tables: the folds, the out-of-fold
outputs, the time cap, saving and loading, and how the local job's model is chosen."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from broker.errors import ConfigurationError
from broker.local.bagging import BaggedModel, fit_classical_cv, fold_rows
from broker.local.classical import ClassicalConfig, load_classical
from broker.local.export import TorchTabularModel, load_ensemble
from broker.local.search import SearchOptions, run_automl
from broker.local.space import Categorical, SearchSpace

SMALL = {
    "depth": 1,
    "activation": "relu",
    "dropout": 0.0,
    "norm": "none",
    "skip": False,
    "embedding_scale": 1.0,
    "optimizer": "adam",
    "learning_rate": 1e-2,
    "weight_decay": 0.0,
    "batch_size": 64,
}
TWO = {
    "hgb": ClassicalConfig("hist_gradient_boosting", {"max_iter": 20}),
    "linear": ClassicalConfig("linear", {"C": 1.0}),
}


@pytest.fixture(autouse=True)
def _one_openmp_thread() -> Iterator[None]:
    with threadpool_limits(limits=1, user_api="openmp"):
        yield


def _table(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    color = rng.choice(["red", "blue", "green"], size=n)
    signal = a + np.where(color == "red", 1.0, 0.0) + 0.5 * b**2
    a[rng.random(n) < 0.05] = np.nan
    return pd.DataFrame(
        {
            "f_a": a,
            "f_b": b,
            "f_color": color,
            "label": np.where(signal + rng.normal(scale=0.7, size=n) > 0.8, 1, 0),
        }
    )


def _cv(frame: pd.DataFrame, **settings: object) -> tuple[object, list]:
    y = frame["label"].to_numpy()
    splits = fold_rows(y, "binary", folds=5, seed=0)
    assert splits is not None
    run = fit_classical_cv(
        frame.drop(columns="label"),
        y,
        task="binary",
        classes=[0, 1],
        numeric=["f_a", "f_b"],
        categorical=["f_color"],
        seed=0,
        splits=splits,
        **{"time_cap_s": 60.0, "configs": TWO, **settings},  # type: ignore[arg-type]
    )
    return run, splits


def test_fold_rows_hold_out_every_row_exactly_once_with_balanced_classes() -> None:
    y = np.array([0] * 80 + [1] * 20)

    splits = fold_rows(y, "binary", folds=5, seed=3)

    assert splits is not None and len(splits) == 5
    held = np.concatenate([held for _, held in splits])
    assert sorted(held.tolist()) == list(range(100))
    for fit, held_out in splits:
        assert set(fit.tolist()).isdisjoint(held_out.tolist())
        assert len(fit) + len(held_out) == 100
        assert int(y[held_out].sum()) == 4  # stratified: 20 positives over 5 folds


def test_fold_rows_refuse_too_few_rows_or_a_class_of_one_row() -> None:
    assert fold_rows(np.array([0, 1] * 4), "binary", folds=5) is None  # 8 < 10 rows
    assert fold_rows(np.array([0] * 40 + [1]), "binary", folds=5) is None
    assert fold_rows(np.arange(12.0), "regression", folds=5) is not None


def test_fold_rows_keep_a_class_rarer_than_the_folds_in_every_fit() -> None:
    # as in white wine quality: the best grade has 4 training rows for 5 folds
    y = np.array([0] * 60 + [1] * 30 + [2] * 4)

    splits = fold_rows(y, "multiclass", folds=5, seed=0)

    assert splits is not None
    held_rare = [int((y[held] == 2).sum()) for _, held in splits]
    assert sorted(held_rare) == [0, 1, 1, 1, 1]
    assert all(int((y[fit] == 2).sum()) >= 3 for fit, _ in splits)


def test_cv_outputs_are_each_rows_prediction_by_the_fold_model_that_never_saw_it() -> (
    None
):
    frame = _table()
    run, splits = _cv(frame)

    assert [fit.name for fit in run.fits] == ["hgb", "linear"]
    assert run.folds == 5 and run.target is not None
    features = frame.drop(columns="label")
    for fit in run.fits:
        assert isinstance(fit.model, BaggedModel) and len(fit.model.folds) == 5
        assert fit.validation_output.shape == (300, 2)
        for fold_model, (_, held) in zip(fit.model.folds, splits, strict=True):
            expected = fold_model.predict_proba(features.iloc[held])
            np.testing.assert_allclose(
                fit.validation_output[held], expected, atol=1e-12
            )
        mean = np.mean([m.predict_proba(features) for m in fit.model.folds], axis=0)
        np.testing.assert_allclose(fit.model.predict_proba(features), mean, atol=1e-12)
        # out of fold, the signal is still found: well above chance
        assert roc_auc_score(frame["label"], fit.validation_output[:, 1]) > 0.75


def test_cv_no_configuration_starts_after_the_cap_and_the_skip_is_noted() -> None:
    ticks = iter(range(0, 10_000))

    run, _ = _cv(_table(), time_cap_s=0.5, clock=lambda: float(next(ticks)))

    assert run.fits == []
    assert run.skipped == ["hgb", "linear"]
    assert "were not fitted on all 5 folds" in run.notes[0]


def test_bagged_model_saves_and_loads_as_arrays_with_the_same_predictions(
    tmp_path: Path,
) -> None:
    frame = _table()
    run, _ = _cv(frame)
    model = run.fits[0].model
    features = frame.drop(columns="label")

    loaded = load_classical(model.save(tmp_path / "hgb"))

    assert isinstance(loaded, BaggedModel) and len(loaded.folds) == 5
    np.testing.assert_allclose(
        loaded.predict_proba(features), model.predict_proba(features), atol=1e-12
    )
    assert loaded.predict(features).tolist() == model.predict(features).tolist()
    assert sorted(p.name for p in (tmp_path / "hgb").iterdir()) == [
        "fold-0",
        "fold-1",
        "fold-2",
        "fold-3",
        "fold-4",
        "model.json",
    ]


def test_bagged_regression_predicts_the_fold_models_mean() -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"x": rng.normal(size=200), "c": rng.choice(["a", "b"], 200)})
    y = 3.0 * frame["x"].to_numpy() + (frame["c"] == "a") * 2.0
    splits = fold_rows(y, "regression", folds=4, seed=0)
    assert splits is not None

    run = fit_classical_cv(
        frame,
        y,
        task="regression",
        classes=[],
        numeric=["x"],
        categorical=["c"],
        seed=0,
        time_cap_s=60.0,
        splits=splits,
        configs={"ridge": ClassicalConfig("linear", {"C": 100.0})},
    )

    model = run.fits[0].model
    assert isinstance(model, BaggedModel)
    mean = np.mean([m.predict(frame) for m in model.folds], axis=0)
    np.testing.assert_allclose(model.predict(frame), mean, atol=1e-12)
    # ridge on the true features: out-of-fold errors are small
    assert float(np.sqrt(np.mean((run.fits[0].validation_output - y) ** 2))) < 0.1


def test_search_options_folds_must_be_zero_or_two_to_twenty() -> None:
    assert SearchOptions.from_mapping({"folds": 0}).folds == 0
    assert SearchOptions.from_mapping({"folds": 10}).folds == 10
    for bad in (1, 21, -1, True):
        with pytest.raises(ConfigurationError, match="folds must be 0 .no bagging."):
            SearchOptions.from_mapping({"folds": bad})


def _automl(**options: object):  # type: ignore[no-untyped-def]
    return run_automl(
        _table(),
        target="label",
        task="binary",
        numeric=["f_a", "f_b"],
        categorical=["f_color"],
        metric="roc_auc",
        budget_s=60,
        classes=[0, 1],
        options=SearchOptions.from_mapping(
            {"max_trials": 2, "max_epochs": 3, "warm_start": False, **options}
        ),
        space=SearchSpace(params={"width": Categorical([4, 8])}, fixed=SMALL),
    )


@pytest.fixture(scope="module")
def bagged_automl():  # type: ignore[no-untyped-def]
    return _automl()


def test_automl_on_a_small_table_weighs_bagged_trees_on_out_of_fold_outputs(
    bagged_automl,  # type: ignore[no-untyped-def]
) -> None:
    result = bagged_automl
    classical = result.classical

    assert classical is not None and classical.folds == 5
    assert classical.target is not None and len(classical.target) == 300
    selection = result.selection
    assert selection is not None
    assert result.networks_bagged
    candidates = [*classical.fits, *result.networks]
    assert set(selection.weights) <= {c.name for c in candidates}
    by_name = {c.name: c for c in candidates}
    for c in candidates:  # every candidate scored out of fold over all 300 rows
        assert c.validation_output.shape == (300, 2)
        expected = roc_auc_score(classical.target, c.validation_output[:, 1])
        assert c.score == pytest.approx(expected, abs=1e-12)
    best = max(candidates, key=lambda c: c.score)
    assert selection.best_single == best.name
    assert selection.score >= by_name[best.name].score
    assert any(
        "bagged over 5 folds of the 300 training rows" in n for n in result.notes
    )
    refitted = [n for n in result.notes if "were refitted on the same 5 folds" in n]
    assert len(refitted) == 1
    assert refitted[0].startswith(f"networks trial-{result.best.trial_number} (")


def test_automl_bagged_model_saves_its_bagged_networks_and_trees(
    bagged_automl,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    model = bagged_automl.final_model()
    frame = _table(50, seed=9).drop(columns="label")

    loaded = load_ensemble(model.save(tmp_path / "model"))

    assert all(isinstance(m.model, BaggedModel) for m in loaded.members)
    best = loaded.best_network()
    refitted = {n.name for n in bagged_automl.networks}
    assert f"trial-{bagged_automl.best.trial_number}" in refitted
    by_oof = max(bagged_automl.networks, key=lambda n: n.score)  # the best refitted
    assert loaded.metadata["best_network"] == by_oof.name
    assert f"trial-{best.metadata['trial']}" == by_oof.name
    assert [type(f).__name__ for f in best.folds] == ["TorchTabularModel"] * 5
    np.testing.assert_allclose(
        best.predict_proba(frame),
        np.mean([f.predict_proba(frame) for f in best.folds], axis=0),
        atol=1e-12,
    )
    np.testing.assert_allclose(
        loaded.predict_proba(frame), model.predict_proba(frame), atol=1e-9
    )


def test_automl_best_network_stays_the_search_best_when_it_was_not_refitted(
    bagged_automl,  # type: ignore[no-untyped-def]
) -> None:
    best_name = f"trial-{bagged_automl.best.trial_number}"
    others = [n for n in bagged_automl.networks if n.name != best_name]
    trees = {bagged_automl.classical.fits[0].name: 1.0}
    result = replace(
        bagged_automl,
        networks=others,
        selection=replace(bagged_automl.selection, weights=trees),
    )

    model = result.final_model()

    assert model.metadata["best_network"] == best_name
    member = next(m for m in model.members if m.name == best_name)
    assert isinstance(member.model, TorchTabularModel) and member.weight == 0.0


def test_automl_folds_zero_weighs_trees_and_networks_on_one_split() -> None:
    result = _automl(folds=0)

    assert result.classical is not None and result.classical.folds == 0
    assert result.classical.target is None
    assert {len(c.validation_output) for c in result.candidates()} == {60}


def test_cv_multiclass_with_a_rare_class_gives_every_row_full_probabilities() -> None:
    rng = np.random.default_rng(2)
    y = np.array([0] * 60 + [1] * 30 + [2] * 4)
    frame = pd.DataFrame({"x": y + rng.normal(scale=0.3, size=len(y))})
    splits = fold_rows(y, "multiclass", folds=5, seed=0)
    assert splits is not None

    run = fit_classical_cv(
        frame,
        y,
        task="multiclass",
        classes=["low", "mid", "high"],
        numeric=["x"],
        categorical=[],
        seed=0,
        time_cap_s=60.0,
        splits=splits,
        configs={"linear": ClassicalConfig("linear", {"C": 1.0})},
    )

    output = run.fits[0].validation_output
    assert output.shape == (94, 3)
    np.testing.assert_allclose(output.sum(axis=1), 1.0, atol=1e-9)
    assert float(output[y == 2, 2].mean()) > 0.3  # the rare class is still predicted
    assert run.fits[0].model.classes == ["low", "mid", "high"]


def test_automl_bagging_out_of_time_leaves_the_rest_of_the_budget_to_the_networks() -> (
    None
):
    import threading

    from broker.local.search import _fit_classical

    run = _fit_classical(
        _table(),
        target="label",
        task="binary",
        numeric=["f_a", "f_b"],
        categorical=["f_color"],
        classes=[0, 1],
        options=SearchOptions(),
        budget_s=0.0,
        stop_event=threading.Event(),
    )

    # the bagged stage ran out of its share; no second, single-split stage follows
    assert run.folds == 5 and run.fits == []
    assert len(run.skipped) == 8
    assert "were not fitted on all 5 folds" in run.notes[-1]


def test_cv_search_times_a_drawn_configuration_by_its_kind_over_all_folds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import broker.local.classical as classical_module

    frame = _table(200)
    y = frame.pop("label").to_numpy()
    splits = fold_rows(y, "binary", folds=2, seed=0)
    assert splits is not None
    now = [0.0]
    fitters = dict(classical_module._FITTERS)

    def charged(algorithm: str, cost: float) -> object:
        def fit(*args: object) -> object:
            fitted = fitters[algorithm](*args)  # type: ignore[arg-type]
            now[0] += cost
            return fitted

        return fit

    monkeypatch.setattr(
        classical_module,
        "_FITTERS",
        {**fitters, "hist_gradient_boosting": charged("hist_gradient_boosting", 1.0)},
    )

    run = fit_classical_cv(
        frame,
        y,
        task="binary",
        classes=[0, 1],
        numeric=["f_a", "f_b"],
        categorical=["f_color"],
        seed=0,
        time_cap_s=9,
        splits=splits,
        configs={"hgb": TWO["hgb"]},
        clock=lambda: now[0],
        search=True,
    )

    # 2 s per boosting configuration (two folds of 1 s); a drawn one needs 4 s left:
    # drawn at 2 and 4 s, not at 6 s; forests never ran, so none is drawn
    assert [f.name for f in run.fits] == ["hgb", "hgb-random-1", "hgb-random-3"]
    assert now[0] == 6.0
    for fit in run.fits:
        assert fit.validation_output.shape == (200, 2)
        assert isinstance(fit.model, BaggedModel) and len(fit.model.folds) == 2


def test_cv_forest_that_the_leaf_floor_makes_a_duplicate_is_not_fitted() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6_000, 2))
    frame = pd.DataFrame(x, columns=["a", "b"])
    y = (x[:, 0] + rng.normal(size=6_000) > 0).astype(int)
    splits = fold_rows(y, "binary", folds=5, seed=0)
    forests = {
        "trees": ClassicalConfig("extra_trees", {"n_estimators": 5}),
        "trees-leaf2": ClassicalConfig(
            "extra_trees", {"n_estimators": 5, "min_samples_leaf": 2}
        ),
    }

    run = fit_classical_cv(
        frame,
        y,
        task="binary",
        classes=[0, 1],
        numeric=["a", "b"],
        categorical=[],
        seed=0,
        time_cap_s=60.0,
        splits=splits,
        configs=forests,
    )

    # each fold fits on 4,800 rows: leaves of at least ceil(4,800 / 4,096) = 2 rows
    assert [f.name for f in run.fits] == ["trees"]
    assert run.notes == [
        "trees-leaf2: not fitted, the same forest as trees on 4,800 rows (leaves of at "
        "least 2 rows keep each tree under 4,096 leaves)"
    ]
    assert run.skipped == []
