"""The local provider: the PyTorch network search of :mod:`broker.local` on this machine,
beside classical models (boosted trees, linear models, extremely randomised trees), with
an ensemble of the best of both.

Options come from ``JobSpec.provider_options["local"]`` (see
:class:`broker.local.search.SearchOptions`): ``strategy`` (random, grid, tpe, rl,
evolution), ``pruner`` (none, median, asha, hyperband), ``max_trials``,
``stop_after_no_improvement``, ``workers``, ``ray_address``, ``input_shape``,
``warm_start``, ``classical`` and ``ensemble`` (both on by default; off, the job's model
is the best network alone) and the trial settings. The leaderboard lists the network
trials ("mlp" or "cnn"), the classical models ("hist_gradient_boosting", "linear",
"extra_trees") and the ensemble ("ensemble", its params the member weights);
``best_model_id`` names the job's model.

A submitted job runs in a background thread of this process (its trials in worker
processes when ``workers`` > 1). Each completed trial is written to
``run_dir/local/trials.jsonl`` and the best weights so far beside it (see
:mod:`broker.local.journal`); submitting the same job again (the same idempotency key)
after the process died resumes the search from those trials with the runtime that is
left, instead of starting over. `poll` reads its progress, `cancel` stops it at the next
epoch boundary and waits for the thread, `result` exports the job's model into the run
folder (format ``local-ensemble``, see :mod:`broker.local.export`), and `predict` uses
it. Nothing is billed by a service; the cost model prices local runs from the user's
configured local rate.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from broker.errors import (
    BrokerError,
    InvalidRequestError,
    NoModelTrainedError,
    ProviderError,
    ProviderJobFailedError,
)
from broker.providers.base import (
    Availability,
    Provider,
    ProviderJob,
    ProviderJobRef,
    ProviderResult,
    ProviderStatus,
)
from broker.schema import ColumnKind
from broker.spec import LeaderboardEntry
from broker.states import JobState

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from broker.local.export import LocalEnsembleModel, TorchTabularModel
    from broker.local.journal import ResumeState
    from broker.local.knowledge import KnowledgeBase
    from broker.local.search import SearchOptions, SearchResult
    from broker.local.space import SearchSpace

logger = logging.getLogger(__name__)

MODEL_FORMAT = "local-ensemble"


def load_model(path: str | Path) -> LocalEnsembleModel | TorchTabularModel:
    """Load a model the local provider exported (`run_dir/model`), running no stored code.

    A run folder of this version holds a :class:`~broker.local.export.LocalEnsembleModel`;
    one written before holds a network alone (format ``torch-tabular``), still loaded.
    """
    from broker.local.export import load_local_model

    return load_local_model(path)


@dataclass
class _Run:
    """One job's thread and what it has reported so far; fields guarded by `lock`."""

    ref: ProviderJobRef
    job: ProviderJob
    options: SearchOptions
    metric: str
    submitted_mono: float
    submitted_at: datetime
    stop_event: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    thread: threading.Thread | None = None
    state: JobState = JobState.QUEUED
    started_at: datetime | None = None
    ended_at: datetime | None = None
    trials_done: int = 0
    best_score: float | None = None
    search: SearchResult | None = None
    model: LocalEnsembleModel | TorchTabularModel | None = None
    model_path: Path | None = None
    error: Exception | None = None
    resume: ResumeState | None = None
    notes: list[str] = field(default_factory=list)


class LocalProvider(Provider):
    """Runs the local network search in a background thread.

    Args:
        space: the search space; None uses :func:`broker.local.space.default_space`.
        after_preprocess: called in the search thread once the data is prepared (a seam
            for tests that simulate slow preprocessing).
        cancel_wait_s: how long `cancel` and `close` wait for the thread to end.
        knowledge: where earlier searches are kept for warm starts; default the
            ``local-searches.json`` file in ``$AUTOML_BROKER_HOME`` or the user data
            folder.
    """

    name: ClassVar[str] = "local"
    kind: ClassVar[Literal["cloud", "local"]] = "local"
    unsupported: ClassVar[dict[str, str]] = {}

    def __init__(
        self,
        *,
        space: SearchSpace | None = None,
        after_preprocess: Callable[[], None] | None = None,
        cancel_wait_s: float = 120.0,
        knowledge: KnowledgeBase | None = None,
    ) -> None:
        self._space = space
        self._knowledge = knowledge
        self._after_preprocess = after_preprocess
        self._cancel_wait_s = cancel_wait_s
        self._runs: dict[str, _Run] = {}
        self._by_key: dict[str, str] = {}
        self._lock = threading.Lock()

    # --- contract ------------------------------------------------------------------------

    def availability(self) -> Availability:
        import torch

        if torch.cuda.is_available():
            return Availability(True, f"CUDA device {torch.cuda.get_device_name(0)}")
        return Availability(True, f"CPU with {os.cpu_count() or 1} cores")

    def submit(self, job: ProviderJob) -> ProviderJobRef:
        with self._lock:
            known = self._by_key.get(job.idempotency_key)
            if known is not None:
                return self._runs[known].ref

        options = self._options(job)
        options, notes = _ray_or_here(options)
        metric = job.spec.metric_for(job.schema.task)
        resume = _read_resume(job)
        ref = ProviderJobRef(
            provider=self.name,
            job_id=f"local-{job.job_id}",
            idempotency_key=job.idempotency_key,
        )
        run = _Run(
            ref=ref,
            job=job,
            options=options,
            metric=metric,
            submitted_mono=time.monotonic(),
            submitted_at=_now(),
            resume=resume,
            trials_done=len(resume.trials) if resume else 0,
            notes=notes,
        )
        run.thread = threading.Thread(
            target=self._search, args=(run,), name=f"{ref.job_id}-search", daemon=False
        )
        with self._lock:
            self._runs[ref.job_id] = run
            self._by_key[job.idempotency_key] = ref.job_id
        run.thread.start()
        logger.info(
            "local job %s submitted: %d rows, budget %.0f s, %s%s",
            ref.job_id,
            len(job.train),
            job.runtime_limit_s,
            options,
            f"; resuming after {len(resume.trials)} completed trials" if resume else "",
        )
        return ref

    def poll(self, ref: ProviderJobRef) -> ProviderStatus:
        run = self._run(ref)
        with run.lock:
            state = run.state
            if state.terminal:
                progress = 1.0
            else:
                elapsed = time.monotonic() - run.submitted_mono
                progress = min(1.0, elapsed / max(run.job.runtime_limit_s, 1e-9))
            message = f"{run.trials_done} trial(s) done"
            if run.best_score is not None:
                message += f", best validation {run.metric} {run.best_score:.5f}"
            return ProviderStatus(
                state=state,
                secondary=state.value,
                message=message,
                progress=progress,
                started_at=run.started_at,
                ended_at=run.ended_at,
                error=run.error,
            )

    def cancel(self, ref: ProviderJobRef) -> None:
        run = self._run(ref)
        with run.lock:
            if run.state.terminal:
                return
            run.state = JobState.CANCELLING
            run.stop_event.set()
        self._join(run)

    def result(self, ref: ProviderJobRef, job: ProviderJob) -> ProviderResult:
        run = self._run(ref)
        with run.lock:
            state, search, error = run.state, run.search, run.error
        if error is not None:
            raise error
        if search is None or search.best is None or not state.terminal:
            raise InvalidRequestError(
                f"local job {ref.job_id} has no result: it is {state.value}; wait until "
                f"poll reports succeeded",
                provider=self.name,
                provider_job_id=ref.job_id,
            )

        model = self._model(run)
        if run.model_path is None:
            run.model_path = model.save(Path(job.run_dir) / "model")
        leaderboard = self._leaderboard(search)
        return ProviderResult(
            leaderboard=leaderboard,
            best_model_id=search.best_model_id,
            model_path=run.model_path,
            model_format=MODEL_FORMAT,
            provider_units={
                "trials": len(search.trials),
                "device": self.availability().reason,
                "train_rows": search.n_train_rows,
                "validation_rows": search.n_validation_rows,
                "stop_reason": search.stop_reason,
                "strategy": search.strategy,
                "pruner": search.pruner,
                "epochs": search.epochs_total,
                "space": search.space_kind,
                "models": {
                    "networks": len(search.trials),
                    "classical": len(search.classical.fits) if search.classical else 0,
                },
                "ensemble": _ensemble_units(search),
            },
            actual_cost_usd=None,
            runtime_s=search.elapsed_s,
            notes=[*run.notes, *search.notes],
        )

    def predict(
        self, ref: ProviderJobRef, job: ProviderJob, frame: pd.DataFrame
    ) -> np.ndarray:
        run = self._run(ref)
        model = self._model(run)
        if model.task == "regression":
            return model.predict(frame)
        return model.predict_proba(frame)

    def find_by_idempotency_key(self, key: str) -> ProviderJobRef | None:
        with self._lock:
            job_id = self._by_key.get(key)
            return self._runs[job_id].ref if job_id else None

    def close(self) -> None:
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            self.cancel(run.ref)

    # --- the search thread ---------------------------------------------------------------

    def _search(self, run: _Run) -> None:
        from broker.local.search import run_automl

        job = run.job
        with run.lock:
            run.state = (
                JobState.CANCELLING if run.stop_event.is_set() else JobState.RUNNING
            )
            run.started_at = _now()
        numeric, categorical = _feature_kinds(job)

        def on_trial(outcome: Any, best: Any) -> None:
            with run.lock:
                run.trials_done += 1
                run.best_score = best.score

        from broker.local.journal import JOURNAL_FOLDER, TrialJournal

        spent_s = run.resume.spent_s if run.resume is not None else 0.0
        journal = TrialJournal(
            Path(job.run_dir) / JOURNAL_FOLDER,
            job.idempotency_key,
            spent_before_s=spent_s,
        )
        search = None
        error: Exception | None = None
        try:
            knowledge = self._knowledge_base() if run.options.warm_start else None
            search = run_automl(
                job.train,
                target=job.schema.target_safe_name,
                task=job.schema.task.value,
                numeric=numeric,
                categorical=categorical,
                metric=run.metric,
                budget_s=_search_budget(job.runtime_limit_s) - spent_s,
                classes=list(job.schema.classes) or None,
                positive_class=job.schema.positive_class,
                options=run.options,
                space=self._space,
                stop_event=run.stop_event,
                started=run.submitted_mono,
                after_preprocess=self._after_preprocess,
                on_trial=on_trial,
                knowledge=knowledge,
                dropped=[c.safe_name for c in job.schema.columns if c.dropped_reason],
                journal=journal,
                resume=run.resume,
            )
        except NoModelTrainedError as exc:
            error = exc
        except BrokerError as exc:
            error = InvalidRequestError(
                str(exc),
                provider=self.name,
                provider_job_id=run.ref.job_id,
                original_type=type(exc).__name__,
            )
        except Exception as exc:  # a failure of the trainer itself
            logger.exception("local job %s failed", run.ref.job_id)
            error = ProviderJobFailedError(
                f"the local search failed: {type(exc).__name__}: {exc}",
                provider=self.name,
                provider_job_id=run.ref.job_id,
                original_type=type(exc).__name__,
            )

        with run.lock:
            run.search = search
            run.error = error
            run.ended_at = _now()
            if error is not None:
                run.state = JobState.FAILED
            elif run.stop_event.is_set():
                run.state = JobState.CANCELLED
            else:
                run.state = JobState.SUCCEEDED
        logger.info("local job %s ended %s", run.ref.job_id, run.state.value)

    # --- helpers -------------------------------------------------------------------------

    def _options(self, job: ProviderJob) -> SearchOptions:
        """The job's search options, checked before any thread starts.

        Raises:
            InvalidRequestError: an unknown option or a value out of range.
            ProviderUnavailableError: `ray_address` without Ray installed.
        """
        from broker.local.search import SearchOptions, require_ray

        merged: dict[str, Any] = {"seed": job.spec.seed}
        merged.update(job.spec.provider_options.get(self.name, {}))
        merged.update(job.options)
        try:
            options = SearchOptions.from_mapping(merged)
        except BrokerError as exc:
            raise InvalidRequestError(
                str(exc), provider=self.name, original_type=type(exc).__name__
            ) from None
        if options.ray_address:
            require_ray(options.ray_address)
        return options

    def _knowledge_base(self) -> KnowledgeBase:
        if self._knowledge is None:
            from broker.local.knowledge import KnowledgeBase

            self._knowledge = KnowledgeBase()
        return self._knowledge

    def _run(self, ref: ProviderJobRef) -> _Run:
        with self._lock:
            run = self._runs.get(ref.job_id)
        if run is None:
            raise InvalidRequestError(
                f"local job {ref.job_id!r} is not known to this process; submit it "
                f"again with the same idempotency key to resume its search from the "
                f"trials it completed",
                provider=self.name,
                provider_job_id=ref.job_id,
            )
        return run

    def _join(self, run: _Run) -> None:
        if run.thread is None or run.thread is threading.current_thread():
            return
        run.thread.join(self._cancel_wait_s)
        if run.thread.is_alive():
            logger.warning(
                "local job %s did not stop within %.0f s; it ends at its next epoch",
                run.ref.job_id,
                self._cancel_wait_s,
            )

    def _model(self, run: _Run) -> LocalEnsembleModel | TorchTabularModel:
        if run.model is not None:
            return run.model
        if run.search is not None and run.search.best is not None:
            run.model = run.search.final_model()
        elif run.model_path is not None:
            run.model = load_model(run.model_path)
        else:
            raise ProviderError(
                f"local job {run.ref.job_id} has no trained model",
                provider=self.name,
                provider_job_id=run.ref.job_id,
            )
        return run.model

    def _leaderboard(self, search: SearchResult) -> list[LeaderboardEntry]:
        metric = search.metric
        entries = [
            LeaderboardEntry(
                model_id=f"trial-{t.trial_number}",
                provider=self.name,
                algorithm="cnn" if search.space_kind == "image" else "mlp",
                validation_metrics={metric.name: _finite(t.score)},
                training_time_s=t.training_time_s,
                predict_time_per_row_s=t.predict_time_per_row_s,
                params={**t.config, "epochs": t.epochs_run, "best_epoch": t.best_epoch},
                notes=f"stopped by {t.stop_reason}",
            )
            for t in search.trials
        ]
        entries.extend(_classical_entries(search, self.name))
        if search.selection is not None and search.selection.is_ensemble:
            entries.append(
                LeaderboardEntry(
                    model_id="ensemble",
                    provider=self.name,
                    algorithm="ensemble",
                    validation_metrics={metric.name: _finite(search.selection.score)},
                    params=dict(search.selection.weights),
                    notes=_ensemble_note(search),
                )
            )
        sign = -1.0 if metric.direction == "maximize" else 1.0

        winner = search.best_model_id

        def rank(entry: LeaderboardEntry) -> tuple[bool, float, bool]:
            value = entry.validation_metrics[metric.name]
            score = sign * value if value is not None else 0.0
            # the job's model comes first among models of equal score
            return (value is None, score, entry.model_id != winner)

        return sorted(entries, key=rank)


def _classical_entries(search: SearchResult, provider: str) -> list[LeaderboardEntry]:
    fits = search.classical.fits if search.classical is not None else []
    return [
        LeaderboardEntry(
            model_id=fit.name,
            provider=provider,
            algorithm=fit.algorithm,
            validation_metrics={search.metric.name: _finite(fit.score)},
            training_time_s=fit.training_time_s,
            params={**fit.params, "iterations": fit.iterations},
        )
        for fit in fits
    ]


def _ensemble_units(search: SearchResult) -> dict[str, Any]:
    """What the job's model is made of, for the result's provider units."""
    selection = search.selection
    if selection is None:
        best = f"trial-{search.best.trial_number}" if search.best else None
        return {"weights": {best: 1.0} if best else {}, "validation": None}
    return {
        "weights": dict(selection.weights),
        "validation": _finite(selection.score),
        "best_single": selection.best_single,
        "best_single_validation": _finite(selection.best_single_score),
        "rounds": selection.rounds,
    }


def _read_resume(job: ProviderJob) -> ResumeState | None:
    """The completed trials of an earlier, interrupted run of this same job, if any."""
    from broker.local.journal import JOURNAL_FOLDER, read_journal

    try:
        return read_journal(Path(job.run_dir) / JOURNAL_FOLDER, job.idempotency_key)
    except (OSError, KeyError, ValueError, BrokerError) as exc:
        logger.warning(
            "local job %s: the interrupted search's trials cannot be read back (%s); "
            "starting over",
            job.job_id,
            exc,
        )
        return None


def _ray_or_here(options: SearchOptions) -> tuple[SearchOptions, list[str]]:
    """`options`, or without `ray_address` when nothing at that address answers as a
    Ray cluster (within the check's five seconds): the job then trains here, and the
    note says why, rather than failing or waiting on Ray's own retries."""
    if not options.ray_address:
        return options, []
    from dataclasses import replace

    from broker.local.cluster import probe_address

    try:
        probe_address(options.ray_address)
    except OSError as exc:  # ConnectionError included
        note = (
            f"the Ray cluster at {options.ray_address} cannot be reached "
            f"({type(exc).__name__}: {exc}); the search trained on this machine"
        )
        logger.warning("%s", note)
        return replace(options, ray_address=None), [note]
    return options, []


def _feature_kinds(job: ProviderJob) -> tuple[list[str], list[str]]:
    numeric, categorical = [], []
    for column in job.schema.features:
        if column.kind == ColumnKind.NUMERIC:
            numeric.append(column.safe_name)
        else:
            # TODO(local-datetime): datetime and text columns are read as categories;
            # calendar parts and token features would serve them better.
            categorical.append(column.safe_name)
    return numeric, categorical


def _search_budget(runtime_limit_s: float) -> float:
    """The search's share of the runtime limit; the rest is kept for export."""
    return max(0.5, runtime_limit_s - min(10.0, 0.05 * runtime_limit_s))


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _ensemble_note(search: SearchResult) -> str:
    """What the ensemble was chosen from: the kept networks (not every trial on the
    leaderboard) and the classical models."""
    networks = len(search.networks)
    classical = len(search.candidates()) - networks
    kind = "bagged " if search.networks_bagged else ""
    assert search.selection is not None
    return (
        f"greedy selection over {networks + classical} models (the {networks} best "
        f"{kind}networks and {classical} classical models), "
        f"{search.selection.chosen_round} of {search.selection.rounds} rounds"
    )
