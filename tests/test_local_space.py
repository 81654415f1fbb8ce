"""Search spaces and the random strategy of the local backend."""

from __future__ import annotations

import random

import pytest

from broker.errors import ConfigurationError
from broker.local.search import RandomStrategy
from broker.local.space import (
    DEFAULT_CONFIG,
    Categorical,
    Conditional,
    FloatLogRange,
    FloatRange,
    IntRange,
    SearchSpace,
    default_space,
    image_space,
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
    with pytest.raises(ConfigurationError, match=r"float range \[1.0, 0.0\] is empty"):
        FloatRange(1.0, 0.0)
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


def test_space_conditional_parameter_exists_only_while_its_parent_allows() -> None:
    space = default_space()
    rng = random.Random(0)

    samples = [space.sample(rng) for _ in range(300)]

    # width_3 is drawn for three or four layers, and absent (not fixed) otherwise
    assert all(("width_3" in s) == (s["depth"] >= 3) for s in samples)
    assert all(("width_4" in s) == (s["depth"] == 4) for s in samples)
    assert {s["depth"] for s in samples} == {1, 2, 3, 4}


def test_space_linear_float_range_samples_evenly() -> None:
    space = SearchSpace(params={"dropout": FloatRange(0.0, 0.5)})
    rng = random.Random(1)

    values = [space.sample(rng)["dropout"] for _ in range(2000)]

    assert min(values) >= 0.0 and max(values) <= 0.5
    # uniform on [0, 0.5]: mean 0.25; a log scale could not even hold 0
    assert sum(values) / len(values) == pytest.approx(0.25, abs=0.02)
    assert FloatRange(0.0, 0.5).grid(3) == [0.0, 0.25, 0.5]
    assert FloatRange(1e-4, 1e-2, log=True).grid(3) == pytest.approx([1e-4, 1e-3, 1e-2])


def test_space_size_counts_active_configurations_of_conditional_spaces() -> None:
    space = SearchSpace(
        params={
            "depth": IntRange(1, 2),
            "width": Categorical([4, 8]),
            "width_2": Conditional(
                Categorical([4, 8, 16]), parent="depth", values=(2,)
            ),
        }
    )

    # depth 1: 2 widths; depth 2: 2 x 3
    assert space.size == 8
    assert len(space.grid()) == 8


def test_space_conditional_on_a_missing_parent_is_a_configuration_error() -> None:
    with pytest.raises(
        ConfigurationError, match=r"name parents that are not in the space"
    ):
        SearchSpace(
            params={"width_2": Conditional(IntRange(1, 4), parent="depth", values=(2,))}
        )


def test_space_contains_checks_active_parameters_only() -> None:
    space = default_space()

    assert space.contains(DEFAULT_CONFIG)
    assert not space.contains({**DEFAULT_CONFIG, "width_2": 100})
    assert space.contains({**DEFAULT_CONFIG, "depth": 1, "width_2": 100})
    assert not space.contains({**DEFAULT_CONFIG, "learning_rate": 1.0})


def test_image_space_default_is_inside_the_space_and_of_kind_image() -> None:
    space = image_space()

    assert space.kind == "image"
    assert space.contains(space.default_config() or {})
    assert {"conv_blocks", "channels", "kernel_size", "pooling", "head_width"} <= set(
        space.params
    )
