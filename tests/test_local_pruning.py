"""Cost cutting across trials: epoch pruners (median, ASHA, Hyperband) and stopping the
whole search after trials that bring no improvement."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _local_settings import SMALL as SHARED_SMALL

from broker.errors import ConfigurationError
from broker.local.pruning import EpochPruner
from broker.local.search import SearchOptions, run_search
from broker.local.space import Categorical, SearchSpace

SMALL = {**SHARED_SMALL, "batch_size": 32}


def _run(pruner: EpochPruner, number: int, rewards: list[float]) -> int | None:
    """Report `rewards` epoch by epoch; the epoch count at which it was pruned."""
    pruner.start(number)
    for epoch, reward in enumerate(rewards, start=1):
        if pruner.report(number, epoch, reward):
            pruner.finish(number, reward, pruned=True)
            return epoch
    pruner.finish(number, max(rewards), pruned=False)
    return None


def test_asha_never_judges_the_warm_up_epoch() -> None:
    pruner = EpochPruner("asha", max_epochs=27, warmup_epochs=3)
    for number in (1, 2, 3):
        _run(pruner, number, [0.90] * 9)

    # the first rung comes after three warm-up epochs
    assert _run(pruner, 4, [0.10] * 9) == 4


def test_asha_prunes_a_trailing_trial_at_the_first_rung() -> None:
    pruner = EpochPruner("asha", max_epochs=27, reduction_factor=3)
    for number in (1, 2, 3):
        assert _run(pruner, number, [0.80 + 0.01 * number] * 9) is None

    # after the warm-up epoch, at epoch 2, only the top third of four trials go on
    assert _run(pruner, 4, [0.50] * 9) == 2


def test_asha_lets_a_leading_trial_through_every_rung() -> None:
    pruner = EpochPruner("asha", max_epochs=27, reduction_factor=3)
    for number in (1, 2, 3):
        _run(pruner, number, [0.70] * 9)

    assert _run(pruner, 4, [0.90] * 9) is None


def test_median_rule_waits_for_startup_trials_then_prunes_below_the_median() -> None:
    pruner = EpochPruner("median", max_epochs=10, startup_trials=2)

    # two startup trials are never pruned, however poor
    assert _run(pruner, 1, [0.60, 0.61, 0.62]) is None
    assert _run(pruner, 2, [0.80, 0.81, 0.82]) is None
    # epoch 1 is the warm-up; at epoch 2 the median of (0.61, 0.81) is 0.71
    assert _run(pruner, 3, [0.50, 0.55, 0.90]) == 2
    assert _run(pruner, 4, [0.75, 0.76, 0.77]) is None


def test_hyperband_prunes_trailing_trials_at_each_bracket_first_rung() -> None:
    pruner = EpochPruner("hyperband", max_epochs=18, reduction_factor=3)

    leading = [_run(pruner, n, [0.80 + 0.01 * n] * 18) for n in range(1, 13)]
    trailing = [_run(pruner, n, [0.50] * 18) for n in range(13, 25)]

    # each improving trial goes on; every trailing one stops, at the first rung of its
    # bracket: 2, 6 or 18 epochs (one warm-up epoch, 18 epochs, reduction factor 3)
    assert leading == [None] * 12
    assert None not in trailing
    assert set(trailing) == {2, 6, 18}


@pytest.mark.parametrize("name", ["median", "asha", "hyperband"])
def test_pruner_replay_of_completed_trials_judges_new_trials_as_before(
    name: str,
) -> None:
    curves = [[0.60 + 0.02 * n + 0.01 * e for e in range(6)] for n in range(1, 7)]
    newcomers = [[0.5] * 6, [0.9] * 6, [0.62, 0.64, 0.66, 0.68, 0.7, 0.72]]
    live = EpochPruner(name, max_epochs=6, startup_trials=2)
    ends = [_run(live, n, curve) for n, curve in enumerate(curves, start=1)]
    resumed = EpochPruner(name, max_epochs=6, startup_trials=2)
    for n, (curve, end) in enumerate(zip(curves, ends, strict=True), start=1):
        seen = curve if end is None else curve[:end]
        resumed.replay(n, seen, max(seen), pruned=end is not None)
    fresh = EpochPruner(name, max_epochs=6, startup_trials=2)

    after_live = [_run(live, 7 + i, c) for i, c in enumerate(newcomers)]
    after_resume = [_run(resumed, 7 + i, c) for i, c in enumerate(newcomers)]
    after_nothing = [_run(fresh, 7 + i, c) for i, c in enumerate(newcomers)]

    assert after_resume == after_live
    # the weak newcomer is stopped only by a pruner that remembers the earlier trials
    assert after_live[0] is not None
    assert after_nothing[0] is None


def test_pruner_unknown_name_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"pruner 'bohb' is not available"):
        EpochPruner("bohb", max_epochs=10)


def _frame(n: int = 160) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    a = rng.normal(size=n)
    b = rng.normal(size=n)
    return pd.DataFrame({"a": a, "b": b, "label": np.where(a + b > 0, "yes", "no")})


def _search(  # type: ignore[no-untyped-def]
    space: SearchSpace, options: SearchOptions, metric: str = "roc_auc"
):
    return run_search(
        _frame(),
        target="label",
        task="binary",
        numeric=["a", "b"],
        categorical=[],
        metric=metric,
        budget_s=60,
        classes=["no", "yes"],
        positive_class="yes",
        space=space,
        options=options,
    )


def test_search_with_asha_prunes_weak_trials_and_spends_fewer_epochs() -> None:
    # the first trial learns fast; learning rates 50,000 times smaller barely move
    space = SearchSpace(
        params={"learning_rate": Categorical([5e-2, 1e-6, 1.1e-6, 1.2e-6, 1.3e-6])},
        fixed={**SMALL, "batch_size": 16},
        default={"learning_rate": 5e-2},
    )
    options = {"max_epochs": 6, "patience": 50, "seed": 0, "strategy": "grid"}

    plain = _search(space, SearchOptions(**options), "log_loss")  # type: ignore[arg-type]
    pruned = _search(
        space,
        SearchOptions(pruner="asha", **options),  # type: ignore[arg-type]
        "log_loss",
    )

    # each slow learner trails the first trial's loss at the first rung (epoch 2)
    assert plain.epochs_total == 5 * 6
    assert [t.stop_reason for t in pruned.trials] == ["max_epochs"] + ["pruned"] * 4
    assert pruned.epochs_total == 6 + 4 * 2
    # the best trial is the same and keeps its score
    assert pruned.best.trial_number == plain.best.trial_number == 1
    assert pruned.best.score == plain.best.score


def test_search_stops_after_trials_without_improvement() -> None:
    space = SearchSpace(
        params={"learning_rate": Categorical([1e-2, 1e-5, 2e-5, 3e-5, 4e-5, 5e-5])},
        fixed=SMALL,
        default={"learning_rate": 1e-2},
    )

    result = _search(
        space,
        SearchOptions(
            max_epochs=5, seed=0, strategy="grid", stop_after_no_improvement=2
        ),
    )

    # trial 1 stays best, trials 2 and 3 do not beat it, and the search ends there
    assert result.stop_reason == "no_improvement"
    assert [t.trial_number for t in result.trials] == [1, 2, 3]
    assert result.best.trial_number == 1
