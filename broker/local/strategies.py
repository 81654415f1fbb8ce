"""How the local search chooses the next configuration to train.

Every strategy answers `ask` with a configuration (None once it has nothing new to offer)
and learns from `tell`, which passes a reward: the trial's validation score turned so
that higher is better (NaN for a trial without a score). Configurations given as `first`
(the space's default, then the best ones of earlier searches on similar data) are
tried before the strategy's own choices and taught to it like any other trial.

- random: uniform draws, never the same configuration twice;
- grid: every grid point once, in a seeded shuffled order;
- tpe: Bayesian optimisation with Optuna's tree-structured Parzen estimator;
- rl: a REINFORCE controller, one softmax policy per parameter, rewarded by the
  validation score against a moving-average baseline;
- evolution: regularised evolution, tournament selection, one-parameter mutation and
  ageing out of the oldest member.
"""

from __future__ import annotations

import logging
import math
import random
from collections import deque
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from broker.errors import ConfigurationError
from broker.local.space import (
    DEFAULT_GRID_POINTS,
    Categorical,
    FloatRange,
    IntRange,
    SearchSpace,
    config_key,
)

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

STRATEGIES = ("random", "grid", "tpe", "rl", "evolution")
_MAX_DRAWS = 1000


class Strategy(Protocol):
    name: str

    def ask(self) -> dict[str, Any] | None:
        """The next configuration, or None when the space is exhausted."""

    def tell(self, config: dict[str, Any], reward: float) -> None:
        """The reward (higher is better, NaN: no score) a configuration reached."""


def make_strategy(
    name: str,
    space: SearchSpace,
    *,
    seed: int,
    first: Sequence[dict[str, Any]] = (),
    grid_points: int = DEFAULT_GRID_POINTS,
) -> Strategy:
    """The strategy called `name` over `space`.

    Raises:
        ConfigurationError: `name` is not one of :data:`STRATEGIES`.
    """
    if name == "random":
        return RandomStrategy(space, seed, first=first)
    if name == "grid":
        return GridStrategy(space, seed, first=first, points=grid_points)
    if name == "tpe":
        return TPEStrategy(space, seed, first=first)
    if name == "rl":
        return ReinforceStrategy(space, seed, first=first)
    if name == "evolution":
        return EvolutionStrategy(space, seed, first=first)
    raise ConfigurationError(
        f"search strategy {name!r} is not available; choose from {list(STRATEGIES)}"
    )


class _FirstQueue:
    """Configurations tried before the strategy's own, each once."""

    def __init__(self, space: SearchSpace, first: Sequence[dict[str, Any]]) -> None:
        self.space = space
        self._first = deque(space.complete(c) for c in first)
        self._seen: set[str] = set()

    def _take_first(self) -> dict[str, Any] | None:
        while self._first:
            config = self._first.popleft()
            if self._mark(config):
                return config
        return None

    def _mark(self, config: dict[str, Any]) -> bool:
        """Remember `config`; False when it was tried already."""
        key = config_key(config)
        if key in self._seen:
            return False
        self._seen.add(key)
        return True


class RandomStrategy(_FirstQueue):
    """The space's default first, then uniform draws, never the same configuration twice.

    Args:
        first: tried before the draws; None of them given means the space's default.
    """

    name = "random"

    def __init__(
        self,
        space: SearchSpace,
        seed: int,
        *,
        first: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        default = space.default_config()
        super().__init__(space, _with_default(first, default))
        self._rng = random.Random(seed)
        self._size = space.size

    def ask(self) -> dict[str, Any] | None:
        config = self._take_first()
        if config is not None:
            return config
        if self._size is not None and len(self._seen) >= self._size:
            return None
        for _ in range(_MAX_DRAWS):
            config = self.space.sample(self._rng)
            if self._mark(config):
                return config
        return None

    def tell(self, config: dict[str, Any], reward: float) -> None:
        return None


class GridStrategy(_FirstQueue):
    """Each grid point once (`points` values per numeric range), in a shuffled order."""

    name = "grid"

    def __init__(
        self,
        space: SearchSpace,
        seed: int,
        *,
        first: Sequence[dict[str, Any]] = (),
        points: int = DEFAULT_GRID_POINTS,
    ) -> None:
        super().__init__(space, first)
        self._grid: Iterator[dict[str, Any]] = space.grid(points).configs(seed)

    def ask(self) -> dict[str, Any] | None:
        config = self._take_first()
        if config is not None:
            return config
        for config in self._grid:
            if self._mark(config):
                return config
        return None

    def tell(self, config: dict[str, Any], reward: float) -> None:
        return None


class TPEStrategy(_FirstQueue):
    """Bayesian optimisation: Optuna's TPE sampler proposes, the rewards teach it.

    A proposal that was tried before is answered from memory and a new one is asked,
    so a finite space is not trained twice over.
    """

    name = "tpe"

    def __init__(
        self,
        space: SearchSpace,
        seed: int,
        *,
        first: Sequence[dict[str, Any]] = (),
        n_startup_trials: int = 10,
    ) -> None:
        super().__init__(space, ())
        optuna = _import_optuna()
        self.study = optuna.create_study(
            direction="maximize",
            sampler=optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=n_startup_trials
            ),
        )
        for config in first:
            self.study.enqueue_trial(space.searched(space.complete(config)))
        self._pending: dict[str, list[Any]] = {}
        self._rewards: dict[str, float] = {}

    def ask(self) -> dict[str, Any] | None:
        for _ in range(_MAX_DRAWS // 10):
            trial = self.study.ask()
            config = self._suggest(trial)
            key = config_key(config)
            if key in self._rewards:
                self._finish(trial, self._rewards[key])
                continue
            if key in self._pending:
                self._finish(trial, math.nan)
                continue
            self._pending[key] = [trial]
            return config
        return None

    def tell(self, config: dict[str, Any], reward: float) -> None:
        key = config_key(config)
        trials = self._pending.pop(key, [])
        self._rewards[key] = reward
        for trial in trials:
            self._finish(trial, reward)

    def _suggest(self, trial: optuna.trial.Trial) -> dict[str, Any]:
        config = dict(self.space.fixed)
        for name in self.space.order:
            if not self.space.is_active(name, config):
                config.pop(name, None)
                continue
            dist = self.space.distribution(name)
            if isinstance(dist, Categorical):
                config[name] = trial.suggest_categorical(name, list(dist.choices))
            elif isinstance(dist, IntRange):
                config[name] = trial.suggest_int(
                    name, dist.low, dist.high, log=dist.log
                )
            else:
                config[name] = trial.suggest_float(
                    name, dist.low, dist.high, log=dist.log
                )
        return config

    def _finish(self, trial: optuna.trial.Trial, reward: float) -> None:
        from optuna.trial import TrialState

        if math.isnan(reward):
            self.study.tell(trial, state=TrialState.FAIL)
        else:
            self.study.tell(trial, reward)


class ReinforceStrategy(_FirstQueue):
    """A policy-gradient (REINFORCE) controller over the space's parameters.

    Each parameter gets a softmax policy over its values (numeric ranges over their
    grid of `bins` points). A configuration is drawn parameter by parameter; its reward
    minus a moving-average baseline, scaled by the rewards' running spread, moves the
    logits of the chosen values up (better than the baseline) or down.

    Args:
        learning_rate: step size on the logits.
        baseline_decay: weight of the old baseline in the moving average.
        bins: values per numeric range.
    """

    name = "rl"

    def __init__(
        self,
        space: SearchSpace,
        seed: int,
        *,
        first: Sequence[dict[str, Any]] = (),
        learning_rate: float = 0.5,
        baseline_decay: float = 0.8,
        bins: int = 5,
    ) -> None:
        super().__init__(space, first)
        self._rng = random.Random(seed)
        self.learning_rate = learning_rate
        self.baseline_decay = baseline_decay
        self.values = {
            name: space.distribution(name).grid(bins) for name in space.order
        }
        self.logits = {name: np.zeros(len(v)) for name, v in self.values.items()}
        self.baseline: float | None = None
        self._spread = 0.0

    def probabilities(self, name: str) -> np.ndarray:
        """The policy's current probability of each value of parameter `name`."""
        logits = self.logits[name]
        weights = np.exp(logits - logits.max())
        return weights / weights.sum()

    def ask(self) -> dict[str, Any] | None:
        config = self._take_first()
        if config is not None:
            return config
        for _ in range(_MAX_DRAWS // 10):
            config = dict(self.space.fixed)
            for name in self.space.order:
                if not self.space.is_active(name, config):
                    config.pop(name, None)
                    continue
                weights = self.probabilities(name).tolist()
                index = self._rng.choices(range(len(weights)), weights)[0]
                config[name] = self.values[name][index]
            if self._mark(config):
                return config
        return None

    def tell(self, config: dict[str, Any], reward: float) -> None:
        if math.isnan(reward):
            return
        if self.baseline is None:
            self.baseline = reward
            return

        advantage = reward - self.baseline
        self._spread = self.baseline_decay * self._spread + (
            1 - self.baseline_decay
        ) * abs(advantage)
        scaled = float(np.clip(advantage / max(self._spread, 1e-12), -3.0, 3.0))
        for name in self.space.order:
            if not self.space.is_active(name, config) or name not in config:
                continue
            chosen = _nearest(self.values[name], config[name])
            gradient = -self.probabilities(name)
            gradient[chosen] += 1.0
            self.logits[name] += self.learning_rate * scaled * gradient
        self.baseline = (
            self.baseline_decay * self.baseline + (1 - self.baseline_decay) * reward
        )


class EvolutionStrategy(_FirstQueue):
    """Regularised evolution: the population ages, the tournament picks parents.

    The first `population_size` configurations are the `first` ones and random draws.
    After that each child is a copy of the best of `sample_size` members drawn at
    random, with one parameter changed. A told child joins the population and the
    oldest member leaves it, whatever its score.
    """

    name = "evolution"

    def __init__(
        self,
        space: SearchSpace,
        seed: int,
        *,
        first: Sequence[dict[str, Any]] = (),
        population_size: int = 8,
        sample_size: int = 3,
    ) -> None:
        if population_size < 2 or not 1 <= sample_size <= population_size:
            raise ConfigurationError(
                f"evolution needs population_size >= 2 and 1 <= sample_size <= "
                f"population_size; got {population_size} and {sample_size}"
            )
        super().__init__(space, first)
        self._rng = random.Random(seed)
        self.population_size = population_size
        self.sample_size = sample_size
        self.population: deque[tuple[dict[str, Any], float]] = deque()
        self.aged_out: list[dict[str, Any]] = []
        self._asked = 0

    def ask(self) -> dict[str, Any] | None:
        config = self._take_first()
        if config is None and (
            self._asked < self.population_size or not self.population
        ):
            config = self._draw()
        elif config is None:
            config = self._child()
        if config is not None:
            self._asked += 1
        return config

    def tell(self, config: dict[str, Any], reward: float) -> None:
        self.population.append((config, -math.inf if math.isnan(reward) else reward))
        while len(self.population) > self.population_size:
            oldest, _ = self.population.popleft()
            self.aged_out.append(oldest)

    def _child(self) -> dict[str, Any] | None:
        members = list(self.population)
        for _ in range(_MAX_DRAWS // 10):
            contenders = self._rng.sample(members, min(self.sample_size, len(members)))
            parent = max(contenders, key=lambda member: member[1])[0]
            child = self._mutate(parent)
            if child is not None and self._mark(child):
                return child
        return self._draw()

    def _mutate(self, parent: dict[str, Any]) -> dict[str, Any] | None:
        names = [n for n in self.space.order if self.space.is_active(n, parent)]
        if not names:
            return None
        name = self._rng.choice(names)
        dist = self.space.distribution(name)
        for _ in range(20):
            value = dist.sample(self._rng)
            if value != parent.get(name):
                break
        else:
            return None

        child = {**parent, name: value}
        # parameters that the change switched on are drawn afresh
        for other in self.space.order:
            if self.space.is_active(other, child) and other not in child:
                child[other] = self.space.distribution(other).sample(self._rng)
        return self.space.complete(child)

    def _draw(self) -> dict[str, Any] | None:
        for _ in range(_MAX_DRAWS):
            config = self.space.sample(self._rng)
            if self._mark(config):
                return config
        return None


def _with_default(
    first: Sequence[dict[str, Any]] | None, default: dict[str, Any] | None
) -> list[dict[str, Any]]:
    if first is not None:
        return list(first)
    return [default] if default is not None else []


def _nearest(values: list[Any], value: Any) -> int:
    if value in values:
        return values.index(value)
    try:
        return int(np.argmin([abs(float(v) - float(value)) for v in values]))
    except (TypeError, ValueError):
        return 0


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError as exc:  # pragma: no cover - optuna is a core dependency
        raise ConfigurationError(
            "the tpe strategy and epoch pruning need Optuna; install it with "
            "pip install 'optuna>=4'"
        ) from exc
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


__all__ = [
    "STRATEGIES",
    "EvolutionStrategy",
    "FloatRange",
    "GridStrategy",
    "RandomStrategy",
    "ReinforceStrategy",
    "Strategy",
    "TPEStrategy",
    "make_strategy",
]
