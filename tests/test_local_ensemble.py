"""Greedy ensemble selection and the local job's model (networks plus boosted trees)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _local_settings import SMALL as SHARED_SMALL

from broker.errors import ConfigurationError
from broker.local.classical import CONFIGS, SEARCH_CONFIGS, sampled_configs
from broker.local.ensemble import Candidate, combine, greedy_selection
from broker.local.export import LocalEnsembleModel
from broker.local.journal import ResumeState, TrialJournal, read_journal
from broker.local.scoring import ValidationMetric
from broker.local.search import SearchOptions, SearchResult, run_automl
from broker.local.space import Categorical, SearchSpace
from broker.local.trainer import TrialOutcome
from broker.models import load_saved_model

SMALL = {**SHARED_SMALL, "batch_size": 32}


def _candidate(name: str, output: list[float] | np.ndarray) -> Candidate:
    return Candidate(
        name=name,
        kind="network",
        algorithm="mlp",
        validation_output=np.asarray(output, dtype=np.float64),
        score=float("nan"),
    )


def _binary(positive: np.ndarray) -> np.ndarray:
    return np.stack([1 - positive, positive], axis=1)


def test_greedy_selection_two_complementary_members_get_half_each() -> None:
    metric = ValidationMetric.create("rmse", "regression")
    y = np.zeros(6)
    high, low = _candidate("high", np.ones(6)), _candidate("low", -np.ones(6))

    selection = greedy_selection([high, low], y, metric, rounds=20, seed=0)

    # each alone is 1 off everywhere; their average is exact, reached at round 2
    assert selection.weights == {"high": 0.5, "low": 0.5}
    assert selection.score == 0.0
    assert selection.best_single_score == 1.0
    assert selection.chosen_round == 2


def test_greedy_selection_mix_of_two_half_right_classifiers_beats_both() -> None:
    metric = ValidationMetric.create("roc_auc", "binary")
    y = np.array([1, 0, 1, 0, 1, 0, 1, 0])
    # "left" ranks the first four rows right and the last four backwards; "right"
    # the other way round; each is confident only where it is right
    left = _candidate(
        "left", _binary(np.array([0.9, 0.1, 0.9, 0.1, 0.4, 0.6, 0.4, 0.6]))
    )
    right = _candidate(
        "right", _binary(np.array([0.4, 0.6, 0.4, 0.6, 0.9, 0.1, 0.9, 0.1]))
    )

    selection = greedy_selection([left, right], y, metric, rounds=20, seed=0)

    # each alone: AUC 0.75 (its unsure positives trail its unsure negatives); the
    # average puts every positive (0.65) over every negative (0.35): AUC 1
    assert selection.best_single_score == 0.75
    assert selection.weights == {"left": 0.5, "right": 0.5}
    assert selection.score == 1.0
    averaged = combine([left.validation_output, right.validation_output], [0.5, 0.5])
    assert metric(y, averaged) == 1.0


def test_greedy_selection_keeps_the_best_single_member_when_no_mix_is_better() -> None:
    metric = ValidationMetric.create("roc_auc", "binary")
    y = np.array([1, 0, 1, 0])
    perfect = _candidate("perfect", _binary(np.array([0.8, 0.2, 0.7, 0.3])))
    noisy = _candidate("noisy", _binary(np.array([0.1, 0.9, 0.8, 0.3])))

    selection = greedy_selection([noisy, perfect], y, metric, rounds=25, seed=0)

    assert selection.weights == {"perfect": 1.0}
    assert selection.is_ensemble is False
    assert selection.score == 1.0


@pytest.mark.parametrize("metric_name", ["roc_auc", "log_loss", "accuracy"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_selection_is_never_worse_than_the_best_member(
    metric_name: str, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=200)
    metric = ValidationMetric.create(metric_name, "binary")
    members = [
        _candidate(f"m{i}", _binary(np.clip(0.5 * y + rng.random(200) * 0.7, 0, 1)))
        for i in range(5)
    ]

    selection = greedy_selection(members, y, metric, rounds=30, seed=seed)

    singles = [metric(y, m.validation_output) for m in members]
    best = max(singles) if metric.direction == "maximize" else min(singles)
    assert selection.best_single_score == best
    if metric.direction == "maximize":
        assert selection.score >= best
    else:
        assert selection.score <= best
    assert sum(selection.weights.values()) == pytest.approx(1.0, abs=1e-12)


def test_greedy_selection_breaks_ties_the_same_way_for_the_same_seed() -> None:
    metric = ValidationMetric.create("accuracy", "binary")
    y = np.array([1, 0])
    same = [_candidate(f"m{i}", _binary(np.array([0.9, 0.1]))) for i in range(4)]

    first = greedy_selection(same, y, metric, seed=7)
    again = greedy_selection(same, y, metric, seed=7)

    assert first == again
    assert list(first.weights.values()) == [1.0]


def test_search_options_classical_and_ensemble_must_be_booleans() -> None:
    with pytest.raises(
        ConfigurationError, match=r"classical must be true or false, got 'no'"
    ):
        SearchOptions.from_mapping({"classical": "no"})
    with pytest.raises(ConfigurationError, match=r"ensemble must be true or false"):
        SearchOptions.from_mapping({"ensemble": 1})


# --- the local job's model ------------------------------------------------------------


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
            "label": np.where(signal + rng.normal(scale=0.7, size=n) > 0.8, "y", "n"),
        }
    )


def _automl(
    *,
    space: SearchSpace | None = None,
    budget_s: float = 60,
    stop_event: threading.Event | None = None,
    on_trial: Callable[[TrialOutcome, TrialOutcome], None] | None = None,
    journal: TrialJournal | None = None,
    resume: ResumeState | None = None,
    **options: object,
) -> SearchResult:
    return run_automl(
        _table(),
        target="label",
        task="binary",
        numeric=["f_a", "f_b"],
        categorical=["f_color"],
        metric="roc_auc",
        budget_s=budget_s,
        classes=["n", "y"],
        positive_class="y",
        options=SearchOptions.from_mapping(
            {
                "max_trials": 3,
                "max_epochs": 3,
                "warm_start": False,
                "folds": 0,  # one split: networks and trees on the same rows
                **options,
            }
        ),
        space=space or SearchSpace(params={"width": Categorical([4, 8])}, fixed=SMALL),
        stop_event=stop_event,
        on_trial=on_trial,
        journal=journal,
        resume=resume,
    )


@pytest.fixture(scope="module")
def automl() -> SearchResult:
    return _automl()


def test_automl_fits_networks_and_trees_on_the_same_validation_rows(
    automl: SearchResult,
) -> None:
    candidates = automl.candidates()

    # the space holds two configurations, so both trials are kept
    assert [c.kind for c in candidates].count("network") == len(automl.trials) == 2
    names = [c.name for c in candidates if c.kind == "classical"]
    assert names[:8] == list(CONFIGS)
    # then the drawn configurations that had time, in their drawn order
    drawn = [name for name, _ in sampled_configs(0)]
    assert names[8:] == [name for name in drawn if name in names[8:]]
    assert automl.validation_target is not None
    assert {len(c.validation_output) for c in candidates} == {60}
    assert automl.best is not None
    assert automl.networks[0].name == f"trial-{automl.best.trial_number}"


def test_automl_model_is_not_worse_than_any_member_on_validation(
    automl: SearchResult,
) -> None:
    selection = automl.selection
    assert selection is not None

    model = automl.final_model()

    assert selection.score >= max(c.score for c in automl.candidates())
    members = {m["name"]: m for m in model.describe()}
    assert {k: v["weight"] for k, v in members.items() if v["weight"] > 0} == (
        selection.weights
    )
    # the best network is always a member, to compare with
    assert model.best_network() is not None
    assert model.metadata["best_network"] in members
    assert model.metadata["winner"] == automl.best_model_id


def test_automl_saved_model_loads_and_predicts_exactly_as_in_memory(
    automl: SearchResult, tmp_path: Path
) -> None:
    model = automl.final_model()
    frame = _table(80, seed=5).drop(columns="label")
    frame.loc[0, "f_color"] = "purple"  # a category never seen

    loaded = load_saved_model(model.save(tmp_path / "model"))

    assert isinstance(loaded, LocalEnsembleModel)
    assert loaded.describe() == model.describe()
    np.testing.assert_array_equal(
        loaded.predict_proba(frame), model.predict_proba(frame)
    )
    np.testing.assert_array_equal(loaded.predict(frame), model.predict(frame))
    np.testing.assert_array_equal(
        loaded.best_network().predict_proba(frame),
        automl.best_model().predict_proba(frame),
    )


def test_automl_classical_and_ensemble_off_gives_the_best_network_alone() -> None:
    result = _automl(classical=False, ensemble=False)

    model = result.final_model()

    assert result.classical is None
    assert [c.kind for c in result.candidates()] == ["network"]
    best = f"trial-{result.best.trial_number}"  # type: ignore[union-attr]
    assert [(m["name"], m["kind"], m["weight"]) for m in model.describe()] == [
        (best, "network", 1.0)
    ]
    frame = _table(20, seed=3).drop(columns="label")
    np.testing.assert_array_equal(
        model.predict_proba(frame), result.best_model().predict_proba(frame)
    )


def test_automl_ensemble_off_takes_the_best_single_model() -> None:
    result = _automl(ensemble=False, max_trials=1)

    assert result.selection is not None
    assert list(result.selection.weights.values()) == [1.0]
    best = max(result.candidates(), key=lambda c: c.score)
    assert result.selection.score == best.score


def test_local_run_folder_predict_reproduces_the_held_out_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from broker.predict import load_run, predict_from_run
    from broker.runner import Broker
    from broker.spec import Budget, Constraints, JobSpec
    from broker.store import JobStore
    from cost_models.catalog import Catalog, PriceRow

    monkeypatch.setenv("AUTOML_BROKER_HOME", str(tmp_path / "home"))
    _table(400).to_csv(tmp_path / "table.csv", index=False)
    broker = Broker(
        store=JobStore(tmp_path / "jobs.db"),
        catalog=Catalog.from_rows(
            [PriceRow("local", "this-machine", "local", price=None, memory_gib=64)]
        ),
        local_rate_usd_per_hour=Decimal("0"),
        poll_interval_s=0.2,
    )
    spec = JobSpec(
        data=str(tmp_path / "table.csv"),
        target="label",
        budget=Budget(max_runtime_s=60),
        constraints=Constraints(providers=["local"]),
        provider_options={
            "local": {"max_trials": 2, "max_epochs": 3, "warm_start": False}
        },
    )

    result = broker.run(spec, run_dir=tmp_path / "run")
    again = predict_from_run(tmp_path / "run")

    assert result.state == "succeeded"
    algorithms = {e.algorithm for e in result.leaderboard}
    assert {"mlp", "hist_gradient_boosting", "linear", "extra_trees"} <= algorithms
    assert result.leaderboard[0].model_id == result.best_model_id
    assert again.metrics is not None
    assert again.metrics.values == result.holdout_metrics
    units = result.cost.provider_units
    # the eight seeded classical configurations and the drawn ones that had time
    kinds = {"hist_gradient_boosting", "linear", "extra_trees"}
    classical = [e for e in result.leaderboard if e.algorithm in kinds]
    assert units["models"] == {"networks": 2, "classical": len(classical)}
    assert 8 <= len(classical) <= 8 + SEARCH_CONFIGS
    assert sum(units["ensemble"]["weights"].values()) == pytest.approx(1.0)
    # the SDK's run model takes the user's own column names, as the CLI does
    run = load_run(tmp_path / "run")
    holdout = pd.read_csv(tmp_path / "run" / "holdout.csv.gz")
    written = pd.read_csv(again.path)
    np.testing.assert_allclose(
        run.predict_proba(holdout)[:, 1], written[f"proba_{run.schema.classes[1]}"]
    )
    assert list(run.predict(holdout)) == [str(v) for v in written["prediction"]]
    network = run.best_network().predict_proba(holdout)
    assert network.shape == (len(holdout), 2)


def _resumable(folder: Path) -> tuple[SearchResult, ResumeState]:
    """A search stopped after its second trial, and what its journal keeps."""
    stop = threading.Event()

    def stop_after_second(outcome: TrialOutcome, best: TrialOutcome) -> None:
        if outcome.trial_number == 2:
            stop.set()

    first = _automl(
        max_trials=4,
        stop_event=stop,
        on_trial=stop_after_second,
        journal=TrialJournal(folder, "key-1"),
        space=_wide_space(),
    )
    resume = read_journal(folder, "key-1")
    assert resume is not None and resume.checkpoint_trial is not None
    return first, resume


def _wide_space() -> SearchSpace:
    return SearchSpace(
        params={
            "width": Categorical([4, 6, 8, 10, 12]),
            "learning_rate": Categorical([1e-3, 1e-2, 3e-2]),
        },
        fixed={k: v for k, v in SMALL.items() if k not in ("width", "learning_rate")},
    )


def test_automl_resumed_search_keeps_the_checkpointed_network_and_refits_trees(
    tmp_path: Path,
) -> None:
    _, resume = _resumable(tmp_path / "local")

    resumed = _automl(
        max_trials=4,
        resume=resume,
        journal=TrialJournal(tmp_path / "local", "key-1"),
        space=_wide_space(),
    )

    # the resumed trials keep only the checkpointed best's weights; 3 and 4 are new
    networks = {c.name for c in resumed.candidates() if c.kind == "network"}
    assert networks == {f"trial-{resume.checkpoint_trial}", "trial-3", "trial-4"}
    assert resumed.classical is not None
    assert [f.name for f in resumed.classical.fits[:8]] == list(CONFIGS)


def test_automl_resumed_without_budget_is_the_checkpointed_network_alone(
    tmp_path: Path,
) -> None:
    first, resume = _resumable(tmp_path / "local")

    result = _automl(max_trials=4, resume=resume, budget_s=0, space=_wide_space())
    model = result.final_model()

    assert result.classical is None and result.selection is None
    assert [(m["name"], m["weight"]) for m in model.describe()] == [
        (f"trial-{resume.checkpoint_trial}", 1.0)
    ]
    frame = _table(20, seed=3).drop(columns="label")
    np.testing.assert_allclose(
        model.predict_proba(frame), first.best_model().predict_proba(frame), rtol=1e-6
    )
