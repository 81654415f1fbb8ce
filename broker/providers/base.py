"""The contract every backend implements, documented once here.

A provider adapts one engine (a cloud's AutoML service, H2O, the local search) to the broker.
The broker loop calls, in order: :meth:`Provider.availability` (no network), then
:meth:`Provider.submit`, :meth:`Provider.poll` until a terminal state, :meth:`Provider.result`,
and :meth:`Provider.predict` on the broker's held-out rows. :meth:`Provider.cancel` may come at
any time and must be safe to call twice. Cloud SDKs are imported inside methods, never at module
import, so ``automl-broker --help`` stays fast.

Errors leave a provider only as :class:`broker.errors.ProviderError` subclasses: each adapter
translates its SDK's exceptions at this boundary.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from broker.states import JobState

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from broker.schema import Schema
    from broker.spec import JobSpec, LeaderboardEntry


@dataclass(frozen=True)
class Availability:
    """Whether the provider can be used here, decided without touching the network."""

    available: bool
    reason: str  # why not, or where the credentials came from
    credential_source: str | None = None


@dataclass(frozen=True)
class RunShape:
    """How a provider's AutoML job uses machines, for pricing: `nodes` machines of the
    chosen type at once, for at least `min_runtime_s` whatever the budget allows."""

    nodes: int = 1
    min_runtime_s: int = 0


@dataclass(frozen=True)
class Placement:
    """The regions and machine types a configured provider will use (None: any), and
    the shape of its jobs when its settings change the class default."""

    regions: frozenset[str] | None = None
    machines: frozenset[str] | None = None
    shape: RunShape | None = None


@dataclass(frozen=True)
class ProviderJob:
    """Everything a provider needs to run one job. The held-out rows are not in `train`."""

    job_id: str
    idempotency_key: str
    spec: JobSpec
    schema: Schema
    train: pd.DataFrame  # safe column names: features plus the target
    machine: str | None
    region: str | None
    runtime_limit_s: float
    run_dir: Path
    max_usd: Decimal | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProviderJobRef:
    """A handle to a submitted job, enough to find it again after a restart."""

    provider: str
    job_id: str  # the provider's own id
    idempotency_key: str
    region: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProviderStatus:
    state: JobState
    secondary: str | None = None  # the provider's own state name
    message: str | None = None
    progress: float | None = None  # 0..1 when the provider knows
    started_at: datetime | None = None
    ended_at: datetime | None = None
    error: Exception | None = None  # set with FAILED: already a ProviderError


@dataclass
class ProviderResult:
    leaderboard: list[LeaderboardEntry]
    best_model_id: str | None
    model_path: Path | None = None  # the exported model inside the run folder
    model_format: str | None = None
    provider_units: dict[str, Any] = field(default_factory=dict)
    actual_cost_usd: Decimal | None = None
    runtime_s: float | None = None
    notes: list[str] = field(default_factory=list)


class SavedModel(Protocol):
    """A trained model loaded back from a run folder, without executing stored code."""

    classes: list[Any] | None

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray: ...

    def predict(self, frame: pd.DataFrame) -> np.ndarray: ...


class Provider(abc.ABC):
    """Base class of every backend.

    Subclasses set `name` and `kind`, and declare what they cannot do in `unsupported`: a
    mapping from feature to a sentence saying why, which the planner turns into a rejection.
    Features named there: "regression", "multiclass", "binary", "gpu", "predict".
    """

    name: ClassVar[str]
    kind: ClassVar[Literal["cloud", "local"]] = "cloud"
    unsupported: ClassVar[dict[str, str]] = {}
    # How a job of this provider uses machines, for the planner's quotes.
    run_shape: ClassVar[RunShape] = RunShape()
    # Seconds from a cancel call until the provider stops billing; the budget watch
    # cancels this early so that the final cost stays within the cap.
    cancel_latency_s: float = 60.0

    @abc.abstractmethod
    def availability(self) -> Availability:
        """Whether this provider can run here now. Must not touch the network."""

    @abc.abstractmethod
    def submit(self, job: ProviderJob) -> ProviderJobRef:
        """Start the job and return its handle; attach to an existing one with the same
        idempotency key instead of creating a second."""

    @abc.abstractmethod
    def poll(self, ref: ProviderJobRef) -> ProviderStatus:
        """The job's state now."""

    @abc.abstractmethod
    def cancel(self, ref: ProviderJobRef) -> None:
        """Ask the provider to stop the job. A no-op when it is already ending or ended."""

    @abc.abstractmethod
    def result(self, ref: ProviderJobRef, job: ProviderJob) -> ProviderResult:
        """Leaderboard, best model and cost units of a succeeded job; exports the best
        model into `job.run_dir / "model"` where the provider allows it."""

    @abc.abstractmethod
    def predict(
        self, ref: ProviderJobRef, job: ProviderJob, frame: pd.DataFrame
    ) -> np.ndarray:
        """Predictions of the best model on `frame` (safe column names, no target).

        Classification: an (n, k) array of probabilities in `job.schema.classes` order.
        Regression: an (n,) array of values.
        """

    def placement(self) -> Placement | None:
        """Where this provider is set up to run (its region, its machine type), so the
        planner quotes what will really run. None: wherever the plan chooses."""
        return None

    def billed_usd(self, ref: ProviderJobRef) -> Decimal | None:
        """What the provider has billed for the job so far, when it can tell; used for
        jobs that end without a result (cancelled, stopped)."""
        return None

    def find_by_idempotency_key(self, key: str) -> ProviderJobRef | None:
        """The job created with `key`, if any: how a lost create reply is recovered."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook; most providers hold nothing
        """Release what the provider holds (a JVM, a client session)."""
