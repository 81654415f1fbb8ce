"""Multi-fidelity pruning of local trials, epochs being the fidelity.

Each trial reports its best validation reward (higher is better) after every epoch; a
pruner compares it with what other trials had reached after as many epochs and may stop
the trial there. The first `warmup_epochs` epochs are never judged: a score after one
epoch says more about the random start than about the configuration. The pruners are
Optuna's, driven through an in-memory study that only keeps these intermediate values:

- median: stop a trial whose best reward is below the median of earlier trials at the
  same epoch (after a few trials and the warm-up);
- asha: asynchronous successive halving; at epochs 2, 6, 18, ... (with one warm-up
  epoch) only the top third of the trials that reached that epoch go on;
- hyperband: several successive-halving brackets with different first rungs.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from broker.errors import ConfigurationError

logger = logging.getLogger(__name__)

PRUNERS = ("none", "median", "asha", "hyperband")


class EpochPruner:
    """Decide, epoch by epoch, whether a running trial should stop.

    Args:
        name: "median", "asha" or "hyperband".
        max_epochs: the most epochs a trial may run (hyperband's largest budget).
        reduction_factor: how many trials compete for each place at the next rung.
        startup_trials: trials the median rule lets finish before it prunes.
        warmup_epochs: epochs no pruner judges; the first rung comes after them.

    Raises:
        ConfigurationError: an unknown pruner name.
    """

    def __init__(
        self,
        name: str,
        *,
        max_epochs: int,
        reduction_factor: int = 3,
        startup_trials: int = 3,
        warmup_epochs: int = 1,
    ) -> None:
        from broker.local.strategies import _import_optuna

        if name not in PRUNERS or name == "none":
            raise ConfigurationError(
                f"pruner {name!r} is not available; choose from {list(PRUNERS)}"
            )
        optuna = _import_optuna()
        pruners = optuna.pruners
        first_rung = warmup_epochs + 1  # steps count epochs done, from 1
        pruner: Any
        if name == "median":
            pruner = pruners.MedianPruner(
                n_startup_trials=startup_trials, n_warmup_steps=first_rung
            )
        elif name == "asha":
            pruner = pruners.SuccessiveHalvingPruner(
                min_resource=first_rung, reduction_factor=reduction_factor
            )
        else:
            pruner = pruners.HyperbandPruner(
                min_resource=first_rung,
                max_resource=max(max_epochs, first_rung * reduction_factor),
                reduction_factor=reduction_factor,
            )
        self.name = name
        # a fixed name: hyperband assigns trials to brackets by hashing it
        self.study = optuna.create_study(
            study_name="local-epochs",
            direction="maximize",
            sampler=optuna.samplers.RandomSampler(seed=0),
            pruner=pruner,
        )
        self._trials: dict[int, Any] = {}

    def start(self, number: int) -> None:
        """Open the record of trial `number`."""
        self._trials[number] = self.study.ask()

    def report(self, number: int, epochs_done: int, reward: float) -> bool:
        """Record the best reward after `epochs_done` epochs; True: prune the trial."""
        trial = self._trials[number]
        if math.isnan(reward):
            return False
        trial.report(reward, epochs_done)
        return bool(trial.should_prune())

    def replay(
        self, number: int, rewards: list[float], reward: float, *, pruned: bool
    ) -> None:
        """Take back a trial an interrupted search completed: its reward after each
        epoch, asked about as it was then (rungs are recorded when a trial is judged),
        and its end."""
        self.start(number)
        trial = self._trials[number]
        for epochs_done, value in enumerate(rewards, start=1):
            if math.isnan(value):
                continue
            trial.report(value, epochs_done)
            trial.should_prune()
        self.finish(number, reward, pruned=pruned)

    def finish(self, number: int, reward: float, *, pruned: bool) -> None:
        """Close the record: a finished trial's reward, or that it was pruned."""
        from optuna.trial import TrialState

        trial = self._trials.pop(number, None)
        if trial is None:
            return
        if pruned:
            self.study.tell(trial, state=TrialState.PRUNED)
        elif math.isnan(reward):
            self.study.tell(trial, state=TrialState.FAIL)
        else:
            self.study.tell(trial, reward)
