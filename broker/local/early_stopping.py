"""The early-stopping rule every local trial follows.

A trial reports one validation score per epoch. The rule remembers the best score and stops
the trial once `patience` epochs in a row have brought no improvement. An improvement must
beat the best score by more than `min_delta` in the metric's own direction; an equal value is
not an improvement, so a plateau ends the trial.
"""

from __future__ import annotations

import math
from typing import Literal

from broker.errors import ConfigurationError

Direction = Literal["maximize", "minimize"]


class EarlyStopping:
    """Decide after each epoch whether a trial should stop.

    Args:
        patience: epochs without improvement after which the trial stops; at least 1.
        direction: "maximize" for scores such as AUC, "minimize" for losses.
        min_delta: how much a score must beat the best one to count as better.

    Raises:
        ConfigurationError: patience below 1, a negative min_delta or an unknown direction.

    Example:
        >>> rule = EarlyStopping(patience=2, direction="minimize")
        >>> [rule.update(v) for v in [0.50, 0.45, 0.46, 0.47]]
        [False, False, False, True]
        >>> rule.best_index, rule.best_score
        (1, 0.45)
    """

    def __init__(
        self, *, patience: int, direction: Direction, min_delta: float = 0.0
    ) -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ConfigurationError(
                f"early-stopping patience must be an integer of at least 1, "
                f"got {patience!r}; use 1 to stop after the first epoch that does not "
                f"improve"
            )
        if direction not in ("maximize", "minimize"):
            raise ConfigurationError(
                f"early-stopping direction must be 'maximize' or 'minimize', "
                f"got {direction!r}"
            )
        if not min_delta >= 0:
            raise ConfigurationError(
                f"early-stopping min_delta must be 0 or more, got {min_delta!r}"
            )

        self.patience = patience
        self.direction: Direction = direction
        self.min_delta = float(min_delta)
        self.best_score: float | None = None
        self.best_index: int | None = None
        self.stopped_index: int | None = None
        self.epochs_seen = 0
        self._bad_epochs = 0

    @property
    def should_stop(self) -> bool:
        return self.stopped_index is not None

    def is_improvement(self, score: float) -> bool:
        """Whether `score` beats the best score so far (always true for the first one)."""
        if math.isnan(score):
            return False
        if self.best_score is None:
            return True
        if self.direction == "maximize":
            return score > self.best_score + self.min_delta
        return score < self.best_score - self.min_delta

    def update(self, score: float) -> bool:
        """Record the score of the next epoch; return True when the trial should stop.

        A NaN score counts as no improvement.
        """
        index = self.epochs_seen
        self.epochs_seen += 1

        if self.is_improvement(score):
            self.best_score = float(score)
            self.best_index = index
            self._bad_epochs = 0
        else:
            self._bad_epochs += 1

        if self._bad_epochs >= self.patience and self.stopped_index is None:
            self.stopped_index = index
        return self.should_stop
