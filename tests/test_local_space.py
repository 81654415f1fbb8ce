"""Search spaces and the random strategy of the local backend."""

from __future__ import annotations

import random

import pytest

from broker.errors import ConfigurationError
from broker.local.search import RandomStrategy
from broker.local.space import (
    DEFAULT_CONFIG,
    Categorical,
    FloatLogRange,
    IntRange,
    SearchSpace,
    default_space,
)


def test_space_same_seed_gives_same_configurations() -> None:
    space = default_space()

    first = [space.sample(random.Random(7)) for _ in range(3)]
    second = [space.sample(random.Random(7)) for _ in range(3)]

    assert first == second


def test_space_samples_stay_inside_their_ranges() -> None:
    space = SearchSpace(
        params={
            "depth": IntRange(1, 4),
            "lr": FloatLogRange(1e-4, 1e-2),
            "act": Categorical(["relu", "gelu"]),
        }
    )
    rng = random.Random(0)

    samples = [space.sample(rng) for _ in range(200)]

    assert {s["depth"] for s in samples} == {1, 2, 3, 4}
    assert all(1e-4 <= s["lr"] <= 1e-2 for s in samples)
    assert {s["act"] for s in samples} == {"relu", "gelu"}


def test_space_size_counts_finite_spaces_only() -> None:
    finite = SearchSpace(params={"a": Categorical([1, 2]), "b": IntRange(0, 2)})
    continuous = SearchSpace(params={"lr": FloatLogRange(1e-4, 1e-2)})

    assert finite.size == 6
    assert continuous.size is None


def test_space_empty_ranges_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match=r"integer range \[3, 1\] is empty"):
        IntRange(3, 1)
    with pytest.raises(ConfigurationError, match=r"needs 0 < low <= high"):
        FloatLogRange(0.0, 1.0)
    with pytest.raises(ConfigurationError, match=r"at least one choice"):
        Categorical([])


def test_random_strategy_tries_the_default_first_and_never_repeats() -> None:
    space = SearchSpace(
        params={"width": Categorical([8, 16]), "depth": Categorical([1, 2])},
        fixed={"dropout": 0.0},
        default={"width": 16, "depth": 1},
    )
    strategy = RandomStrategy(space, seed=0)

    configs = [strategy.ask() for _ in range(5)]

    assert configs[0] == {"dropout": 0.0, "width": 16, "depth": 1}
    drawn = [c for c in configs if c is not None]
    assert len(drawn) == 4  # the 2 x 2 space, each once
    assert len({(c["width"], c["depth"]) for c in drawn}) == 4
    assert configs[4] is None


def test_default_space_first_trial_is_the_default_configuration() -> None:
    strategy = RandomStrategy(default_space(), seed=3)

    assert strategy.ask() == DEFAULT_CONFIG
