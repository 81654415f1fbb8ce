"""Small synthetic tables and ready-made :class:`ProviderJob` objects for provider tests."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from broker.providers.base import ProviderJob
from broker.schema import Column, ColumnKind, Schema
from broker.spec import JobSpec, Task

__all__ = ["SyntheticJob", "synthetic_job", "synthetic_table"]


def synthetic_table(task: Task, n_rows: int = 600, seed: int = 0) -> pd.DataFrame:
    """A table with three numeric features, one categorical feature and a target ``y``.

    The target depends on ``x1``, ``x2`` and ``colour``, so a fitted model scores well
    above chance on held-out rows (AUC about 0.9 for the binary task).
    """
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n_rows)
    x2 = rng.normal(size=n_rows)
    x3 = rng.normal(size=n_rows)  # noise
    colour = rng.choice(["red", "green", "blue"], size=n_rows)
    signal = 1.5 * x1 - 1.0 * x2 + np.where(colour == "red", 1.0, 0.0)
    frame = pd.DataFrame({"x1": x1, "x2": x2, "x3": x3, "colour": colour})
    if task == Task.REGRESSION:
        frame["y"] = 3.0 * signal + rng.normal(scale=0.5, size=n_rows)
    elif task == Task.BINARY:
        frame["y"] = (signal + rng.normal(scale=0.7, size=n_rows) > 0.3).astype(int)
    else:
        frame["y"] = np.digitize(
            signal + rng.normal(scale=0.5, size=n_rows), [-1.0, 1.0]
        )
    return frame


@dataclass(frozen=True)
class SyntheticJob:
    """A provider job over a synthetic table, with the held-out rows kept aside."""

    job: ProviderJob
    test_features: pd.DataFrame
    test_target: pd.Series


def synthetic_job(
    run_dir: Path,
    *,
    task: Task = Task.BINARY,
    n_rows: int = 600,
    seed: int = 0,
    max_usd: Decimal | None = Decimal("100"),
    runtime_limit_s: float = 3600.0,
    metric: str | None = None,
    job_id: str = "job-0001",
    idempotency_key: str = "key-0001",
    machine: str | None = None,
    region: str | None = None,
    options: dict[str, Any] | None = None,
) -> SyntheticJob:
    """A :class:`ProviderJob` over :func:`synthetic_table`, 25% of rows held out."""
    frame = synthetic_table(task, n_rows, seed)
    test = frame.sample(frac=0.25, random_state=seed)
    train = frame.drop(index=test.index)
    classes: tuple[Any, ...] = (
        () if task == Task.REGRESSION else tuple(sorted(frame["y"].unique().tolist()))
    )
    columns = (
        Column("x1", "x1", ColumnKind.NUMERIC),
        Column("x2", "x2", ColumnKind.NUMERIC),
        Column("x3", "x3", ColumnKind.NUMERIC),
        Column("colour", "colour", ColumnKind.CATEGORICAL, n_unique=3),
        Column("y", "y", ColumnKind.TARGET),
    )
    schema = Schema(
        columns=columns,
        target="y",
        target_safe_name="y",
        task=task,
        classes=classes,
        positive_class=classes[-1] if task == Task.BINARY else None,
        n_rows=n_rows,
    )
    spec = JobSpec(data=frame, target="y", task=task, metric=metric)
    job = ProviderJob(
        job_id=job_id,
        idempotency_key=idempotency_key,
        spec=spec,
        schema=schema,
        train=train.reset_index(drop=True),
        machine=machine,
        region=region,
        runtime_limit_s=runtime_limit_s,
        run_dir=run_dir,
        max_usd=max_usd,
        options=options or {},
    )
    return SyntheticJob(
        job,
        test.drop(columns="y").reset_index(drop=True),
        test["y"].reset_index(drop=True),
    )
