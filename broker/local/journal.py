"""A search's completed trials and best weights, kept in the run folder to resume from.

Layout of `run_dir/local/`:

- trials.jsonl: a header line (``{"kind": "search", "idempotency_key": ...}``) then one
  line per completed trial (its configuration, network, validation score, epochs, its
  best validation score after each epoch, seconds, stop reason, and the seconds the
  search had spent when it ended), each flushed and fsynced before the search goes on;
  a resumed search gives the curves back to its pruner;
- best-<trial>/: the best trial so far in the export format of
  :mod:`broker.local.export`, written to a temporary folder and renamed, so a kill never
  leaves a half-written model. A trial line that names its checkpoint is written only
  after the rename, and older checkpoints are removed only after that line.

A search killed part way is resumed by reading the folder back (:func:`read_journal`)
when the same attempt (the same idempotency key) is submitted again.

# TODO(local-resume-time): the seconds spent are those at the last completed trial;
# the trial that was running when the process died, and the time until the restart,
# are not counted against the runtime budget (no heartbeat is written between trials).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.local.network import network_from_dict
from broker.local.trainer import TrialOutcome

if TYPE_CHECKING:
    from broker.local.export import TorchTabularModel

logger = logging.getLogger(__name__)

JOURNAL_FOLDER = "local"
TRIALS_FILE = "trials.jsonl"
CHECKPOINT_PREFIX = "best-"


@dataclass
class ResumeState:
    """What an interrupted search had finished: its trials, time spent and best model.

    Attributes:
        trials: the completed trials in the order they ended; `state_dict` is empty
            except on the checkpointed best one.
        spent_s: seconds the search had run when its last trial ended.
        checkpoint: the best trial's saved model; None when no checkpoint was written.
        checkpoint_trial: that trial's number.
        header: the first line of the journal (options and data sizes).
    """

    trials: list[TrialOutcome]
    spent_s: float
    checkpoint: TorchTabularModel | None = None
    checkpoint_trial: int | None = None
    header: dict[str, Any] = field(default_factory=dict)


class TrialJournal:
    """Appends completed trials and checkpoints the best one under `folder`.

    Args:
        folder: the run folder's ``local`` folder.
        idempotency_key: the attempt's key; a resumed submit must bring the same one.
        spent_before_s: seconds an earlier, interrupted run of the search spent.
    """

    def __init__(
        self, folder: Path, idempotency_key: str, *, spent_before_s: float = 0.0
    ) -> None:
        self.folder = Path(folder)
        self.idempotency_key = idempotency_key
        self.spent_before_s = spent_before_s
        self.path = self.folder / TRIALS_FILE

    def start(self, header: dict[str, Any]) -> None:
        """Create the folder and write the header line, unless resuming a journal."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.path.is_file() and self.path.stat().st_size > 0:
            return
        self._append(
            {"kind": "search", "idempotency_key": self.idempotency_key, **header}
        )

    def record(
        self,
        outcome: TrialOutcome,
        elapsed_s: float,
        best_model: TorchTabularModel | None,
    ) -> None:
        """Write one completed trial; with `best_model` (it is the new best), save it
        first and name the checkpoint in the trial's line."""
        checkpoint = None
        if best_model is not None:
            checkpoint = self._checkpoint(outcome.trial_number, best_model)
        self._append(
            {
                "kind": "trial",
                "trial_number": outcome.trial_number,
                "config": outcome.config,
                "network": outcome.network.to_dict(),
                "score": None if math.isnan(outcome.score) else outcome.score,
                "best_epoch": outcome.best_epoch,
                "epochs_run": outcome.epochs_run,
                "stop_reason": outcome.stop_reason,
                "training_time_s": outcome.training_time_s,
                "predict_time_per_row_s": outcome.predict_time_per_row_s,
                "curve": [None if math.isnan(v) else v for v in outcome.curve],
                "spent_s": self.spent_before_s + elapsed_s,
                "checkpoint": checkpoint,
            }
        )
        if checkpoint is not None:
            self._remove_checkpoints(keep=checkpoint)

    def _append(self, line: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(line, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def _checkpoint(self, number: int, model: TorchTabularModel) -> str:
        name = f"{CHECKPOINT_PREFIX}{number}"
        temporary = self.folder / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(temporary, ignore_errors=True)
        model.save(temporary)
        for part in temporary.iterdir():
            with part.open("rb") as handle:
                os.fsync(handle.fileno())
        final = self.folder / name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(temporary, final)
        _fsync_folder(self.folder)
        return name

    def _remove_checkpoints(self, *, keep: str) -> None:
        for path in self.folder.iterdir():
            if (
                path.is_dir()
                and path.name != keep
                and (
                    path.name.startswith(CHECKPOINT_PREFIX) or path.name.startswith(".")
                )
            ):
                shutil.rmtree(path, ignore_errors=True)


def read_journal(folder: Path, idempotency_key: str) -> ResumeState | None:
    """The completed trials an interrupted search left in `folder`, or None.

    None when there is no journal, or it belongs to another attempt (another key). A
    torn last line (the process died while writing it) is ignored.
    """
    from broker.local.export import load_model

    path = Path(folder) / TRIALS_FILE
    if not path.is_file():
        return None
    lines: list[dict[str, Any]] = []
    for text in path.read_text(encoding="utf-8").splitlines():
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            logger.warning("ignoring a torn line at the end of %s", path)
            break
    if not lines or lines[0].get("kind") != "search":
        return None
    if lines[0].get("idempotency_key") != idempotency_key:
        return None

    records = [line for line in lines[1:] if line.get("kind") == "trial"]
    state = ResumeState(
        trials=[_outcome(line) for line in records],
        spent_s=max((float(line["spent_s"]) for line in records), default=0.0),
        header=lines[0],
    )
    for line in reversed(records):
        name = line.get("checkpoint")
        if name and (Path(folder) / name / "model.json").is_file():
            state.checkpoint = load_model(Path(folder) / name)
            state.checkpoint_trial = int(line["trial_number"])
            break
    for outcome in state.trials:
        if state.checkpoint is not None and outcome.trial_number == (
            state.checkpoint_trial
        ):
            outcome.state_dict = state.checkpoint.state_dict()
    return state


def _outcome(line: dict[str, Any]) -> TrialOutcome:
    score = line.get("score")
    return TrialOutcome(
        trial_number=int(line["trial_number"]),
        config=dict(line["config"]),
        network=network_from_dict(line["network"]),
        score=math.nan if score is None else float(score),
        best_epoch=int(line["best_epoch"]),
        epochs_run=int(line["epochs_run"]),
        stop_reason=str(line["stop_reason"]),
        training_time_s=float(line["training_time_s"]),
        predict_time_per_row_s=float(line["predict_time_per_row_s"]),
        curve=[math.nan if v is None else float(v) for v in line.get("curve") or []],
    )


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = [
    "JOURNAL_FOLDER",
    "TRIALS_FILE",
    "ResumeState",
    "TrialJournal",
    "read_journal",
]
