"""Greedy ensemble selection over the local backend's best models.

Each candidate (a searched network or a boosting model) brings its output on the
validation rows: class probabilities, or values for regression. Selection starts from
nothing and, round after round, adds the candidate (with replacement) whose addition
gives the averaged output the best validation score (Caruana et al., 2004); ties go to a
seeded random choice. The weights are the selection counts of the best round divided by
that round's number. When no mix beats the best single candidate, that candidate alone
is the model.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from broker.local.scoring import ValidationMetric

logger = logging.getLogger(__name__)

DEFAULT_ROUNDS = 30


@dataclass
class Candidate:
    """One model that may join the ensemble.

    Args:
        name: its leaderboard id ("trial-7", "hgb-default").
        kind: "network" or "classical".
        algorithm: "mlp", "cnn" or "hist_gradient_boosting".
        validation_output: probabilities (n, k) or values (n,) on the validation rows.
        score: its own validation score.
        model: the model itself (predict / predict_proba on a frame).
    """

    name: str
    kind: str
    algorithm: str
    validation_output: np.ndarray = field(repr=False)
    score: float
    model: Any = field(default=None, repr=False)


@dataclass(frozen=True)
class Selection:
    """The chosen weights and how they were reached.

    Attributes:
        weights: candidate name -> weight, only names with a positive weight, in the
            order the candidates were given; the weights sum to 1.
        score: the weighted output's validation score.
        best_single: the name of the best single candidate.
        best_single_score: its score.
        rounds: the rounds run; `chosen_round` is the one whose counts are used.
    """

    weights: dict[str, float]
    score: float
    best_single: str
    best_single_score: float
    rounds: int
    chosen_round: int

    @property
    def is_ensemble(self) -> bool:
        return len(self.weights) > 1


def greedy_selection(
    candidates: list[Candidate],
    y_true: np.ndarray,
    metric: ValidationMetric,
    *,
    rounds: int = DEFAULT_ROUNDS,
    seed: int = 0,
) -> Selection:
    """Choose candidate weights that maximise `metric` on the validation rows.

    Args:
        candidates: at least one; their outputs must share a shape.
        y_true: what the metric compares with (class indices or values).
        rounds: additions at most; the best round's counts are kept.
        seed: breaks ties between candidates that score the same.

    Returns:
        The weights; a single candidate with weight 1 when no mix beats it.

    Raises:
        ValueError: no candidates, or outputs of different shapes.
    """
    if not candidates:
        raise ValueError("greedy_selection needs at least one candidate")
    outputs = [np.asarray(c.validation_output, dtype=np.float64) for c in candidates]
    if len({o.shape for o in outputs}) != 1:
        raise ValueError(
            f"candidate outputs differ in shape: "
            f"{[(c.name, o.shape) for c, o in zip(candidates, outputs, strict=True)]}"
        )
    rng = np.random.default_rng(seed)
    singles = [_reward(metric, metric(y_true, o)) for o in outputs]
    best_single = _pick(singles, rng)

    counts = np.zeros(len(candidates), dtype=np.int64)
    total = np.zeros_like(outputs[0])
    best_reward, best_counts, best_round = -math.inf, counts.copy(), 0
    for round_number in range(1, rounds + 1):
        n = round_number
        rewards = [
            _reward(metric, metric(y_true, (total + output) / n)) for output in outputs
        ]
        chosen = _pick(rewards, rng)
        counts[chosen] += 1
        total = total + outputs[chosen]
        if rewards[chosen] > best_reward:
            best_reward, best_counts, best_round = rewards[chosen], counts.copy(), n

    single_name = candidates[best_single].name
    single_score = float(metric(y_true, outputs[best_single]))
    if best_reward <= singles[best_single] or best_counts.max() == best_round:
        weights = {single_name: 1.0}
        score, best_round = single_score, 1
    else:
        weights = {
            c.name: float(count) / best_round
            for c, count in zip(candidates, best_counts, strict=True)
            if count > 0
        }
        score = float(metric(y_true, combine(outputs, list(best_counts / best_round))))
    logger.debug("ensemble weights %s: %s %.5f", weights, metric.name, score)
    return Selection(
        weights=weights,
        score=score,
        best_single=single_name,
        best_single_score=single_score,
        rounds=rounds,
        chosen_round=best_round,
    )


def combine(outputs: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """The weighted sum of member outputs, in member order (the exported models add
    their members the same way, so saved and in-memory predictions agree exactly)."""
    total: np.ndarray | None = None
    for output, weight in zip(outputs, weights, strict=True):
        if weight == 0:
            continue
        part = weight * np.asarray(output, dtype=np.float64)
        total = part if total is None else total + part
    if total is None:
        raise ValueError("combine needs at least one positive weight")
    return total


def _reward(metric: ValidationMetric, score: float) -> float:
    if math.isnan(score):
        return -math.inf
    return score if metric.direction == "maximize" else -score


def _pick(rewards: list[float], rng: np.random.Generator) -> int:
    best = max(rewards)
    tied = [i for i, r in enumerate(rewards) if r == best]
    return int(tied[0] if len(tied) == 1 else rng.choice(tied))


__all__ = ["DEFAULT_ROUNDS", "Candidate", "Selection", "combine", "greedy_selection"]
