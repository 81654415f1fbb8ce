"""The five search strategies: grid, random, TPE, REINFORCE and regularised evolution."""

from __future__ import annotations

import itertools
import math
import statistics

import numpy as np
import pandas as pd
import pytest
from _local_settings import SMALL

from broker.errors import ConfigurationError
from broker.local.search import SearchOptions, run_search
from broker.local.space import (
    Categorical,
    Conditional,
    FloatRange,
    IntRange,
    SearchSpace,
    config_key,
)
from broker.local.strategies import (
    STRATEGIES,
    EvolutionStrategy,
    GridStrategy,
    ReinforceStrategy,
    TPEStrategy,
    make_strategy,
)


def _conditional_space() -> SearchSpace:
    return SearchSpace(
        params={
            "depth": IntRange(1, 2),
            "width": Categorical([4, 8]),
            "width_2": Conditional(Categorical([4, 8]), parent="depth", values=(2,)),
            "lr": FloatRange(1e-3, 1e-1, log=True),
        },
        fixed={"dropout": 0.0},
    )


def _synthetic_space() -> SearchSpace:
    return SearchSpace(
        params={
            "x": FloatRange(-5.0, 5.0),
            "y": FloatRange(1e-4, 1.0, log=True),
            "kind": Categorical(["a", "b", "c", "d"]),
            "n": IntRange(1, 20),
        }
    )


def _synthetic_reward(config: dict[str, object]) -> float:
    """Highest (0) at x=1.3, y=10**-2.5, kind="c", n=7."""
    x, y, n = float(config["x"]), float(config["y"]), int(config["n"])  # type: ignore[arg-type]
    return -(
        (x - 1.3) ** 2
        + (math.log10(y) + 2.5) ** 2
        + (0.0 if config["kind"] == "c" else 2.0)
        + ((n - 7) / 5) ** 2
    )


def _drain(strategy: object, limit: int = 10_000) -> list[dict[str, object]]:
    configs = []
    for _ in range(limit):
        config = strategy.ask()  # type: ignore[attr-defined]
        if config is None:
            break
        strategy.tell(config, 0.0)  # type: ignore[attr-defined]
        configs.append(config)
    return configs


def test_grid_covers_every_grid_point_exactly_once() -> None:
    space = _conditional_space()

    configs = _drain(GridStrategy(space, seed=3, points=3))

    # depth 1: 2 widths x 3 lrs; depth 2: 2 x 2 widths x 3 lrs
    expected = [
        {"dropout": 0.0, "depth": d, "width": w, "lr": lr}
        | ({"width_2": w2} if d == 2 else {})
        for d, w, lr in itertools.product([1, 2], [4, 8], [1e-3, 1e-2, 1e-1])
        for w2 in ([4, 8] if d == 2 else [None])
    ]
    assert len(configs) == 18
    assert len({config_key(c) for c in configs}) == 18
    keys = {config_key({**c, "lr": round(c["lr"], 12)}) for c in configs}  # type: ignore[arg-type]
    rounded = [{**c, "lr": round(c["lr"], 12)} for c in expected]  # type: ignore[arg-type]
    assert keys == {config_key(c) for c in rounded}


def test_grid_tries_a_first_configuration_once_even_when_it_is_a_grid_point() -> None:
    space = SearchSpace(params={"a": Categorical([1, 2, 3])})

    configs = _drain(GridStrategy(space, seed=0, first=[{"a": 2}]))

    assert configs[0] == {"a": 2}
    assert sorted(c["a"] for c in configs) == [1, 2, 3]  # type: ignore[type-var]


def test_grid_same_seed_same_order_other_seed_other_order() -> None:
    space = SearchSpace(params={"a": IntRange(0, 9), "b": Categorical(["x", "y"])})

    first = _drain(GridStrategy(space, seed=1, points=10))
    again = _drain(GridStrategy(space, seed=1, points=10))
    other = _drain(GridStrategy(space, seed=2, points=10))
    coarse = _drain(GridStrategy(space, seed=1, points=3))

    assert first == again
    assert len(first) == 20
    assert sorted(map(config_key, other)) == sorted(map(config_key, first))
    assert other != first
    # three points over 0..9 are its ends and middle
    assert sorted({c["a"] for c in coarse}) == [0, 4, 9]  # type: ignore[type-var]


def test_rl_controller_moves_probability_toward_rewarded_choices() -> None:
    space = SearchSpace(
        params={
            "activation": Categorical(["relu", "silu", "gelu"]),
            "width": Categorical(list(range(10))),
            "depth": Categorical(list(range(10))),
        }
    )
    controller = ReinforceStrategy(space, seed=0)
    before = controller.probabilities("activation").tolist()
    sampled_relu = []

    for _ in range(40):
        config = controller.ask()
        assert config is not None
        sampled_relu.append(config["activation"] == "relu")
        controller.tell(config, 1.0 if config["activation"] == "relu" else 0.0)

    # the rewarded value gains at the others' expense, and is drawn more often later
    after = controller.probabilities("activation")
    assert before == pytest.approx([1 / 3, 1 / 3, 1 / 3])
    assert after[0] > 0.8
    assert after[1] < 1 / 3 and after[2] < 1 / 3
    assert sum(sampled_relu[20:]) > sum(sampled_relu[:20])
    assert controller.baseline is not None and 0 < controller.baseline < 1


def test_rl_controller_ignores_trials_without_a_score() -> None:
    controller = ReinforceStrategy(
        SearchSpace(params={"a": Categorical([1, 2])}), seed=0
    )
    controller.tell({"a": 1}, 1.0)

    controller.tell({"a": 2}, math.nan)

    assert controller.baseline == 1.0
    np.testing.assert_allclose(controller.probabilities("a"), [0.5, 0.5])


def test_evolution_keeps_its_population_size_and_ages_out_the_oldest() -> None:
    space = SearchSpace(
        params={"a": IntRange(0, 50), "b": IntRange(0, 50), "c": IntRange(0, 50)}
    )
    evolution = EvolutionStrategy(space, seed=0, population_size=4, sample_size=2)
    told: list[dict[str, object]] = []

    for step in range(10):
        config = evolution.ask()
        assert config is not None
        evolution.tell(config, float(step))
        told.append(config)

    # the population holds the last four told, the six oldest aged out in order
    assert len(evolution.population) == 4
    assert [c for c, _ in evolution.population] == told[-4:]
    assert evolution.aged_out == told[:6]


def test_evolution_child_differs_from_a_member_in_one_parameter() -> None:
    space = SearchSpace(
        params={"a": IntRange(0, 50), "b": IntRange(0, 50), "c": IntRange(0, 50)}
    )
    evolution = EvolutionStrategy(space, seed=1, population_size=3, sample_size=3)
    members = []
    for _ in range(3):
        config = evolution.ask()
        assert config is not None
        evolution.tell(config, config["a"])  # type: ignore[arg-type]
        members.append(config)

    child = evolution.ask()

    # with the whole population in the tournament the parent is the best member
    parent = max(members, key=lambda c: c["a"])  # type: ignore[arg-type, return-value]
    assert child is not None
    assert sum(child[k] != parent[k] for k in "abc") == 1


def test_evolution_refuses_a_population_smaller_than_two() -> None:
    with pytest.raises(ConfigurationError, match=r"population_size >= 2"):
        EvolutionStrategy(
            SearchSpace(params={"a": IntRange(0, 3)}), 0, population_size=1
        )


def test_tpe_beats_random_on_a_synthetic_objective_over_seeds() -> None:
    space = _synthetic_space()
    best: dict[str, list[float]] = {"random": [], "tpe": []}

    for name, seed in itertools.product(best, range(8)):
        strategy = make_strategy(name, space, seed=seed)
        rewards = []
        for _ in range(40):
            config = strategy.ask()
            assert config is not None
            reward = _synthetic_reward(config)
            strategy.tell(config, reward)
            rewards.append(reward)
        best[name].append(max(rewards))

    wins = sum(t > r for t, r in zip(best["tpe"], best["random"], strict=True))
    assert wins >= 6
    assert statistics.mean(best["tpe"]) > statistics.mean(best["random"]) + 0.5


def test_tpe_tries_the_first_configurations_first() -> None:
    space = _synthetic_space()
    first = {"x": 0.5, "y": 0.01, "kind": "b", "n": 3}

    strategy = TPEStrategy(space, seed=0, first=[first])

    assert strategy.ask() == first


def test_tpe_never_proposes_a_tried_configuration_of_a_finite_space() -> None:
    space = SearchSpace(params={"a": Categorical([1, 2, 3]), "b": Categorical([1, 2])})

    configs = _drain(TPEStrategy(space, seed=0))

    assert len(configs) == 6
    assert len({config_key(c) for c in configs}) == 6


def test_make_strategy_unknown_name_lists_the_choices() -> None:
    with pytest.raises(
        ConfigurationError,
        match=r"strategy 'bandit' is not available; choose from \['random', 'grid', "
        r"'tpe', 'rl', 'evolution'\]",
    ):
        make_strategy("bandit", _synthetic_space(), seed=0)


@pytest.mark.parametrize("name", STRATEGIES)
def test_search_runs_each_strategy_to_its_trial_limit(name: str) -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=40)
    frame = pd.DataFrame(
        {"a": a, "b": rng.normal(size=40), "label": np.where(a > 0, "yes", "no")}
    )
    space = SearchSpace(
        params={
            "width": Categorical([4, 8]),
            "activation": Categorical(["relu", "gelu"]),
            "learning_rate": FloatRange(1e-3, 1e-2, log=True),
        },
        fixed=SMALL,
    )

    result = run_search(
        frame,
        target="label",
        task="binary",
        numeric=["a", "b"],
        categorical=[],
        metric="roc_auc",
        budget_s=60,
        classes=["no", "yes"],
        positive_class="yes",
        space=space,
        options=SearchOptions.from_mapping(
            {"strategy": name, "max_trials": 3, "max_epochs": 1}
        ),
    )

    assert result.strategy == name
    assert len(result.trials) == 3
    assert result.stop_reason == "max_trials"
    assert len({config_key(t.config) for t in result.trials}) == 3


@pytest.mark.parametrize("name", STRATEGIES)
def test_strategy_same_seed_proposes_the_same_configurations(name: str) -> None:
    space = SearchSpace(
        params={
            "x": FloatRange(-5.0, 5.0),
            "kind": Categorical(["a", "b", "c", "d"]),
            "n": IntRange(1, 20),
        }
    )

    def proposals(seed: int) -> list[dict[str, object]]:
        strategy = make_strategy(name, space, seed=seed, grid_points=4)
        configs = []
        for _ in range(15):
            config = strategy.ask()
            assert config is not None
            strategy.tell(config, _synthetic_reward({**config, "y": 0.01}))
            configs.append(config)
        return configs

    assert proposals(4) == proposals(4)
    assert proposals(4) != proposals(5)
