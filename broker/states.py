"""One job state machine for every provider.

Each provider maps its own states onto :class:`JobState` and keeps its own name as the
secondary state. Transitions outside :data:`ALLOWED` raise :class:`IllegalTransitionError`.
"""

from __future__ import annotations

from enum import Enum

from broker.errors import IllegalTransitionError


class JobState(str, Enum):
    PENDING = "pending"  # accepted by the broker's store, nothing submitted yet
    QUEUED = "queued"  # submitted; the provider has not started it
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"  # ended by a cancel we asked for
    STOPPED = "stopped"  # ended by the provider itself (its own limit), not by us
    DETACHED = "detached"  # we lost track (credentials expired); the remote job may run

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.STOPPED}
)

ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset(
        {JobState.QUEUED, JobState.RUNNING, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.QUEUED: frozenset(
        {
            JobState.RUNNING,
            JobState.CANCELLING,
            JobState.SUCCEEDED,
            JobState.FAILED,
            JobState.CANCELLED,
            JobState.STOPPED,
            JobState.DETACHED,
        }
    ),
    JobState.RUNNING: frozenset(
        {
            JobState.QUEUED,  # failover: the next candidate of the plan takes the job
            JobState.CANCELLING,
            JobState.SUCCEEDED,
            JobState.FAILED,
            JobState.CANCELLED,
            JobState.STOPPED,
            JobState.DETACHED,
        }
    ),
    JobState.CANCELLING: frozenset(
        {
            JobState.QUEUED,  # failover after cancelling a stuck attempt
            JobState.CANCELLED,
            JobState.STOPPED,
            JobState.SUCCEEDED,
            JobState.FAILED,
            JobState.DETACHED,
        }
    ),
    JobState.DETACHED: frozenset(
        {
            JobState.QUEUED,
            JobState.RUNNING,
            JobState.CANCELLING,
            JobState.SUCCEEDED,
            JobState.FAILED,
            JobState.CANCELLED,
            JobState.STOPPED,
        }
    ),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
    JobState.STOPPED: frozenset(),
}


def check_transition(old: JobState, new: JobState) -> None:
    """Raise unless `old -> new` is allowed. Staying in a state is always allowed."""
    if old == new:
        return
    if new not in ALLOWED[old]:
        allowed = sorted(s.value for s in ALLOWED[old]) or ["none: it is final"]
        raise IllegalTransitionError(
            f"job state cannot go from {old.value!r} to {new.value!r}; "
            f"allowed from {old.value!r}: {', '.join(allowed)}"
        )
