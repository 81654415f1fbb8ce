"""A small binary search that the Ray tests, fake cluster and real nodes alike, run."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pandas as pd
from _local_settings import SMALL

from broker.local.search import SearchOptions, SearchResult, run_search
from broker.local.space import Categorical, SearchSpace


def frame(n: int = 200, noise: float = 1.0) -> pd.DataFrame:
    """Two numeric columns and a yes/no label that depends on them, with noise."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=n)
    b = rng.normal(size=n)
    label = np.where(a + 0.5 * b + noise * rng.normal(size=n) > 0, "yes", "no")
    return pd.DataFrame({"a": a, "b": b, "label": label})


def search(
    data: pd.DataFrame,
    budget_s: float = 60,
    stop_event: threading.Event | None = None,
    on_trial: Any = None,
    space: SearchSpace | None = None,
    **options: object,
) -> SearchResult:
    """The local search on `data` (from `frame`) with the given search options."""
    return run_search(
        data,
        target="label",
        task="binary",
        numeric=["a", "b"],
        categorical=[],
        metric="roc_auc",
        budget_s=budget_s,
        classes=["no", "yes"],
        positive_class="yes",
        space=space
        or SearchSpace(
            params={
                "width": Categorical([4, 8, 16]),
                "learning_rate": Categorical([1e-3, 1e-2, 5e-2]),
            },
            fixed=SMALL,
        ),
        options=SearchOptions(**options),  # type: ignore[arg-type]
        stop_event=stop_event,
        on_trial=on_trial,
    )


def trials(result: SearchResult) -> list[tuple[int, int, str, float]]:
    """Each trial's number, epochs, stop reason and score, by trial number."""
    return [
        (t.trial_number, t.epochs_run, t.stop_reason, t.score)
        for t in sorted(result.trials, key=lambda t: t.trial_number)
    ]
