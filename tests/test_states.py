import pytest

from broker.errors import IllegalTransitionError
from broker.states import ALLOWED, TERMINAL, JobState, check_transition


def test_states_terminal_set_is_exact():
    assert {
        JobState.SUCCEEDED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.STOPPED,
    } == TERMINAL
    # a terminal state has no way out
    for state in TERMINAL:
        assert ALLOWED[state] == frozenset()


@pytest.mark.parametrize(
    "path",
    [
        ["pending", "queued", "running", "succeeded"],
        ["pending", "queued", "running", "cancelling", "cancelled"],
        ["pending", "queued", "running", "stopped"],
        ["pending", "queued", "running", "detached", "running", "succeeded"],
        ["pending", "queued", "cancelling", "cancelled"],
    ],
)
def test_states_allowed_paths_pass(path):
    states = [JobState(s) for s in path]
    for old, new in zip(states, states[1:], strict=False):
        check_transition(old, new)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("succeeded", "running"),
        ("cancelled", "queued"),
        ("failed", "succeeded"),
        ("pending", "succeeded"),
        ("stopped", "cancelled"),
    ],
)
def test_states_illegal_transition_names_both_states(old, new):
    with pytest.raises(IllegalTransitionError, match=f"from '{old}' to '{new}'"):
        check_transition(JobState(old), JobState(new))


def test_states_staying_put_is_allowed_even_when_final():
    check_transition(JobState.SUCCEEDED, JobState.SUCCEEDED)
