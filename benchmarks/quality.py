"""Model quality of the local backend against H2O AutoML and FLAML, on shared splits.

Nine datasets from the shared datasets folder: the seven binary ones (adult, australian,
bank-marketing, blood-transfusion, credit-g, kc1, phoneme), wine-quality-white as a
multiclass task and abalone as a regression task. For every dataset and seed the rows
are split 80/20 once (stratified; regression on ten quantile bins of the target), the
two halves are written as CSV files, and every backend trains on the same train file and
is scored on the same test file:

- ``local``: ``Broker.run`` with only the local provider and the budget as
  ``max_runtime_s``; its saved model's best network alone is also scored on the test
  rows, as ``local-networks`` (no extra training; on tables the local backend bags,
  the refitted network with the best out-of-fold score, the mean of its fold
  networks);
- ``h2o``: ``Broker.run`` with only the H2O provider, closed after each cell so no JVM
  stays;
- ``flaml``: FLAML AutoML with ``time_budget`` = the budget, in a subprocess of a
  separate interpreter (``--flaml-python``), scored with ``broker.metrics``.

Datasets under 5,000 rows run seeds 0..4, larger ones seed 0; budgets are 60 and 300
seconds. Each finished cell is appended to ``quality.jsonl``; running the same command
again skips the cells already there. The report (``quality.md``, ``quality.json``,
``quality.png``) is rewritten after every cell.

Usage::

    scripts/benchmark-quality.sh                      # everything (about ten hours)
    scripts/benchmark-quality.sh --datasets blood-transfusion --seeds 0 \\
        --budgets 60 --out /tmp/quality-smoke          # a smoke run, about 3.5 minutes
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from broker.runner import Prepared

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATASETS_DIR = ROOT.parent / "shared" / "datasets"
DEFAULT_OUT = ROOT / "benchmarks" / "results"
DEFAULT_WORK = Path(tempfile.gettempdir()) / "automl-broker-quality"
DEFAULT_FLAML_PYTHON = ROOT / ".venv-bench" / "bin" / "python"

logger = logging.getLogger("benchmarks.quality")


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset of the benchmark: its CSV file stem, target column and task."""

    name: str
    target: str
    task: str


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("adult", "class", "binary"),
        DatasetInfo("australian", "A15", "binary"),
        DatasetInfo("bank-marketing", "y", "binary"),
        DatasetInfo(
            "blood-transfusion", "whether he/she donated blood in March 2007", "binary"
        ),
        DatasetInfo("credit-g", "class", "binary"),
        DatasetInfo("kc1", "defects", "binary"),
        DatasetInfo("phoneme", "Class", "binary"),
        DatasetInfo("wine-quality-white", "quality", "multiclass"),
        DatasetInfo("abalone", "Rings", "regression"),
    )
}
BINARY_DATASETS = tuple(d.name for d in DATASETS.values() if d.task == "binary")
BACKENDS = ("local", "h2o", "flaml")
NETWORKS = "local-networks"  # scored from the local cell's model, never run alone
REPORT_BACKENDS = ("local", NETWORKS, "h2o", "flaml")

PRIMARY_METRIC = {"binary": "roc_auc", "multiclass": "log_loss", "regression": "rmse"}
SHOWN_METRICS = {
    "binary": ("roc_auc",),
    "multiclass": ("log_loss", "accuracy"),
    "regression": ("rmse", "r2"),
}
LOWER_IS_BETTER = frozenset({"log_loss", "rmse", "mae"})
LOCAL_AUC_MARGIN = 0.005  # local counts as level with H2O within this much AUC
NETWORKS_AUC_MARGIN = 0.01
SMALL_DATASET_ROWS = 5_000
TEST_FRACTION = 0.2
REGRESSION_BINS = 10
SAMPLE_INTERVAL_S = 0.5

Record = dict[str, Any]
CellKey = tuple[str, str, int, int, str]  # dataset, task, seed, budget_s, backend


@dataclass(frozen=True)
class Cell:
    """One unit of work: a backend on one dataset, seed and budget."""

    dataset: str
    task: str
    seed: int
    budget_s: int
    backend: str

    @property
    def key(self) -> CellKey:
        return (self.dataset, self.task, self.seed, self.budget_s, self.backend)

    @property
    def label(self) -> str:
        return f"{self.dataset} seed {self.seed} {self.budget_s} s {self.backend}"


@dataclass(frozen=True)
class SplitFiles:
    """The train and test CSV files of one dataset and seed."""

    train: Path
    test: Path
    n_train: int
    n_test: int


# --- planning -------------------------------------------------------------------------


def seeds_for(
    n_rows: int,
    *,
    small_seeds: int,
    large_seeds: int,
    only: Sequence[int] | None = None,
) -> list[int]:
    """The seeds a dataset of `n_rows` rows runs: 0..small_seeds-1 under 5,000 rows.

    Args:
        n_rows: The dataset's row count.
        small_seeds: How many seeds a dataset under 5,000 rows runs.
        large_seeds: How many seeds a larger dataset runs.
        only: When given, keep only these seeds.

    Returns:
        The seeds in increasing order.
    """
    count = small_seeds if n_rows < SMALL_DATASET_ROWS else large_seeds
    seeds = list(range(count))
    if only is not None:
        seeds = [s for s in seeds if s in set(only)]
    return seeds


def report_seeds(
    datasets_dir: Path,
    *,
    small_seeds: int,
    large_seeds: int,
    loaded: dict[str, pd.DataFrame] | None = None,
) -> dict[str, list[int]]:
    """The seeds the report expects of every dataset found in `datasets_dir`.

    The report counts each dataset against its full plan, whatever one run's --seeds or
    --datasets were, so that rows filled over several runs read complete only when every
    seed is in.

    Args:
        datasets_dir: The folder of dataset CSV files.
        small_seeds: How many seeds a dataset under 5,000 rows runs.
        large_seeds: How many seeds a larger dataset runs.
        loaded: Frames already read, by dataset name (not read again).

    Returns:
        Dataset name to its seeds, for each dataset whose file exists.
    """
    loaded = loaded or {}
    expected = {}
    for name in DATASETS:
        path = datasets_dir / f"{name}.csv"
        if name not in loaded and not path.is_file():
            continue
        frame = loaded[name] if name in loaded else read_dataset_text(path)
        expected[name] = seeds_for(
            len(frame), small_seeds=small_seeds, large_seeds=large_seeds
        )
    return expected


def plan_cells(
    seeds_by_dataset: dict[str, list[int]],
    *,
    budgets: Sequence[int],
    backends: Sequence[str],
) -> list[Cell]:
    """Every cell, the most useful first.

    The first seed at the first budget for every dataset comes first, then the first
    seed at each further budget, then the other seeds (seed by seed, budget by budget).

    Args:
        seeds_by_dataset: Dataset name to its seeds, in the order datasets should run.
        budgets: Budgets in seconds, in the order given.
        backends: Backends to run, in the order given.

    Returns:
        The cells in the order to run them.
    """
    cells = [
        Cell(name, DATASETS[name].task, seed, budget, backend)
        for name, seeds in seeds_by_dataset.items()
        for seed in seeds
        for budget in budgets
        for backend in backends
    ]
    datasets = list(seeds_by_dataset)

    def priority(cell: Cell) -> tuple[int, int, int, int]:
        seed_rank = seeds_by_dataset[cell.dataset].index(cell.seed)
        return (
            seed_rank,
            list(budgets).index(cell.budget_s),
            datasets.index(cell.dataset),
            list(backends).index(cell.backend),
        )

    return sorted(cells, key=priority)


def pending_cells(
    cells: Iterable[Cell],
    records: Iterable[Record],
    *,
    retry_failed: bool = False,
    current_commit: str | None = None,
) -> list[Cell]:
    """The cells that have no record yet, or only a failed one (with `retry_failed`),
    or only one made on another commit than `current_commit` (when given)."""
    latest = latest_records(records)
    pending = []
    for cell in cells:
        found = latest.get(cell.key)
        if (
            found is None
            or (retry_failed and found.get("error"))
            or (current_commit is not None and found.get("commit") != current_commit)
        ):
            pending.append(cell)
    return pending


def run_plan(
    cells: Sequence[Cell],
    *,
    execute: Callable[[Cell], list[Record]],
    on_record: Callable[[Record], None],
    max_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Run cells in order until done or until `max_s` seconds have passed.

    A cell that has started always finishes; no cell starts after `max_s`.

    Args:
        cells: The cells to run, in order.
        execute: Runs one cell and returns its records (a failed cell returns a record
            with an error, it does not raise).
        on_record: Called with each record as soon as its cell is done.
        max_s: Stop starting new cells after this many seconds; None: no limit.
        clock: Seconds on a monotonic clock.

    Returns:
        How many cells ran.
    """
    started = clock()
    ran = 0
    for cell in cells:
        if max_s is not None and clock() - started >= max_s:
            logger.warning(
                "time limit of %.0f s reached; %d cell(s) not started",
                max_s,
                len(cells) - ran,
            )
            break
        for record in execute(cell):
            on_record(record)
        ran += 1
    return ran


# --- the results file -----------------------------------------------------------------


def record_key(record: Record) -> CellKey:
    return (
        record["dataset"],
        record["task"],
        int(record["seed"]),
        int(record["budget_s"]),
        record["backend"],
    )


def read_records(path: Path) -> list[Record]:
    """The records of a JSON-lines results file; a torn last line is skipped."""
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("%s line %d is not JSON; skipped", path, number)
    return records


def latest_records(records: Iterable[Record]) -> dict[CellKey, Record]:
    """The last record of each cell (a rerun of a failed cell replaces it)."""
    return {record_key(r): r for r in records}


def append_record(path: Path, record: Record) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, default=str) + "\n")


# --- splits ---------------------------------------------------------------------------


def stratify_labels(labels: pd.Series, task: str) -> pd.Series:
    """What the split stratifies on: the class, or the target's quantile bin."""
    import pandas as pd

    if task != "regression":
        return labels.astype(str)
    values = pd.to_numeric(labels, errors="raise")
    return pd.qcut(values, q=REGRESSION_BINS, labels=False, duplicates="drop")


def split_indices(
    labels: pd.Series, task: str, seed: int, *, test_fraction: float = TEST_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train and test row positions for one seed, each sorted.

    Args:
        labels: The target column, one value per row.
        task: ``binary``, ``multiclass`` or ``regression``.
        seed: The split's random seed.
        test_fraction: The share of rows held out.

    Returns:
        Train positions and test positions.
    """
    import numpy as np
    from sklearn.model_selection import train_test_split

    positions = np.arange(len(labels))
    train, test = train_test_split(
        positions,
        test_size=test_fraction,
        stratify=stratify_labels(labels, task).to_numpy(),
        random_state=seed,
    )
    return np.sort(train), np.sort(test)


def read_dataset_text(path: Path) -> pd.DataFrame:
    """Every cell as its original text, so split files repeat the source verbatim."""
    import pandas as pd

    return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[])


def write_split(
    frame: pd.DataFrame, info: DatasetInfo, seed: int, folder: Path
) -> SplitFiles:
    """Write the train and test CSV files of one seed (reused when already there)."""
    train_path, test_path = folder / "train.csv", folder / "test.csv"
    train, test = split_indices(frame[info.target], info.task, seed)
    if not (train_path.is_file() and test_path.is_file()):
        folder.mkdir(parents=True, exist_ok=True)
        frame.iloc[train].to_csv(train_path, index=False)
        frame.iloc[test].to_csv(test_path, index=False)
    return SplitFiles(train_path, test_path, len(train), len(test))


# --- memory ---------------------------------------------------------------------------


def read_process_table() -> dict[int, tuple[int, int]]:
    """Process id to (parent id, resident bytes) for every process in /proc."""
    page_bytes = os.sysconf("SC_PAGE_SIZE")
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name: state, ppid, ..., rss is the 22nd.
        fields = stat.rsplit(")", 1)[1].split()
        table[int(entry.name)] = (int(fields[1]), int(fields[21]) * page_bytes)
    return table


def tree_rss_bytes(table: dict[int, tuple[int, int]], root: int) -> int:
    """Summed resident bytes of `root` and all its descendants in `table`."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    total, stack, seen = 0, [root], set()
    while stack:
        pid = stack.pop()
        if pid in seen or pid not in table:
            continue
        seen.add(pid)
        total += table[pid][1]
        stack.extend(children.get(pid, []))
    return total


class PeakMemory:
    """Samples the resident memory of this process tree in a thread, as a context.

    Attributes:
        baseline_mib: The tree's resident memory when the context was entered.
        peak_mib: The highest sample seen.
    """

    def __init__(self, *, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.baseline_mib = 0.0
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> PeakMemory:
        self.baseline_mib = self._sample()
        self.peak_mib = self.baseline_mib
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mib = max(self.peak_mib, self._sample())

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_mib = max(self.peak_mib, self._sample())

    @staticmethod
    def _sample() -> float:
        return tree_rss_bytes(read_process_table(), os.getpid()) / 2**20


def child_processes() -> list[str]:
    """Live descendants of this process, as ``pid: command`` lines."""
    table = read_process_table()
    mine = os.getpid()
    found = []
    for pid in table:
        parent = table[pid][0]
        while parent not in (0, 1, mine) and parent in table:
            parent = table[parent][0]
        if parent != mine or pid == mine:
            continue
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        command = raw.replace(b"\0", b" ").decode(errors="replace")
        found.append(f"{pid}: {command[:80]}")
    return found


# --- labels and predictions -----------------------------------------------------------


def label_key(value: Any) -> str:
    """A label as comparable text: ``True``, ``'true'`` and ``'True'`` agree, so do
    ``1``, ``1.0`` and ``'1'``."""
    text = str(value).strip().lower()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def align_probabilities(
    proba: Any, model_classes: Sequence[Any], schema_classes: Sequence[Any]
) -> np.ndarray:
    """Reorder probability columns from the model's class order to the schema's.

    Raises:
        ValueError: A class of the schema is not among the model's classes.
    """
    import numpy as np

    proba = np.asarray(proba, dtype=float)
    column = {label_key(c): i for i, c in enumerate(model_classes)}
    missing = [c for c in schema_classes if label_key(c) not in column]
    if missing:
        raise ValueError(
            f"the model has no probability for class(es) {missing}; its classes are "
            f"{list(model_classes)}"
        )
    return proba[:, [column[label_key(c)] for c in schema_classes]]


# --- running a cell -------------------------------------------------------------------


def run_cell(
    cell: Cell,
    split: SplitFiles,
    *,
    work: Path,
    flaml_python: Path,
    commit: str,
    keep_runs: bool = False,
) -> list[Record]:
    """Run one cell and return its records; a failure is recorded, never raised."""
    folder = (
        work / "cells" / f"{cell.dataset}-s{cell.seed}-b{cell.budget_s}-{cell.backend}"
    )
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)

    started = time.monotonic()
    outcomes: dict[str, Record] = {}
    error = None
    with PeakMemory() as memory:
        try:
            if cell.backend == "flaml":
                outcomes["flaml"] = run_flaml(cell, split, folder, flaml_python)
            else:
                outcomes.update(run_broker(cell, split, folder))
        except Exception as exc:  # a failed cell is recorded, the benchmark goes on
            logger.debug("%s failed", cell.label, exc_info=True)
            error = f"{type(exc).__name__}: {exc}"[:2000]
    wall_s = time.monotonic() - started
    left = child_processes()
    if not keep_runs:
        shutil.rmtree(folder, ignore_errors=True)

    backends = [cell.backend] + ([NETWORKS] if cell.backend == "local" else [])
    records = []
    for backend in backends:
        outcome = outcomes.get(backend, {})
        records.append(
            {
                "dataset": cell.dataset,
                "task": cell.task,
                "seed": cell.seed,
                "budget_s": cell.budget_s,
                "backend": backend,
                "metrics": outcome.get("metrics", {}),
                "n_train": split.n_train,
                "n_test": split.n_test,
                "wall_s": round(wall_s, 1),
                "peak_mib": round(memory.peak_mib),
                "baseline_mib": round(memory.baseline_mib),
                "commit": commit,
                "error": outcome.get("error", error),
                "details": {**outcome.get("details", {}), "processes_left": left},
                "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
        )
    return records


def run_broker(cell: Cell, split: SplitFiles, folder: Path) -> dict[str, Record]:
    """Train through ``Broker.run`` with one provider; score its networks when local."""
    from broker.runner import Broker
    from broker.spec import JobSpec
    from broker.store import JobStore

    spec = JobSpec.model_validate(
        {
            "data": split.train,
            "holdout_data": split.test,
            "target": DATASETS[cell.dataset].target,
            "task": cell.task,
            "seed": cell.seed,
            "constraints": {"providers": [cell.backend]},
            "budget": {"max_runtime_s": cell.budget_s},
        }
    )
    # A home of the cell's own: no search memory from another seed's split (which may
    # hold this seed's test rows) warms the local search, and the user's home is left
    # alone.
    previous_home = os.environ.get("AUTOML_BROKER_HOME")
    os.environ["AUTOML_BROKER_HOME"] = str(folder / "home")
    broker = Broker(store=JobStore(path=folder / "jobs.db"))
    try:
        prepared = broker.prepare(spec)
        result = broker.run(spec, run_dir=folder / "run", prepared=prepared)
    finally:
        broker.close()
        if previous_home is None:
            os.environ.pop("AUTOML_BROKER_HOME", None)
        else:
            os.environ["AUTOML_BROKER_HOME"] = previous_home

    best = result.best
    outcomes = {
        cell.backend: {
            "metrics": dict(result.holdout_metrics),
            "details": {
                "algorithm": best.algorithm if best else None,
                "leaderboard_size": len(result.leaderboard),
                "broker_runtime_s": result.runtime_s,
                "notes": list(result.holdout_notes),
            },
        }
    }
    if cell.backend == "local":
        outcomes[NETWORKS] = score_networks(folder / "run" / "model", prepared)
    return outcomes


def score_networks(model_dir: Path, prepared: Prepared) -> Record:
    """Score the best network of a local model on the test rows, without training.

    A model with ``best_network()`` is an ensemble and its best network is scored; an
    older model is itself the network.
    """
    from broker.intake import to_safe_frame
    from broker.metrics import compute_metrics
    from broker.models import load_saved_model

    try:
        model = load_saved_model(model_dir)
        best_network = getattr(model, "best_network", None)
        network = best_network() if callable(best_network) else model
        describe = getattr(model, "describe", None)
        description = describe() if callable(describe) else None

        schema = prepared.dataset.schema
        assert prepared.holdout is not None, "the spec names holdout_data"
        test = prepared.holdout.frame
        features = to_safe_frame(test, schema, include_target=False)
        if schema.task.value == "regression":
            predictions = network.predict(features)
        else:
            predictions = align_probabilities(
                network.predict_proba(features), network.classes or [], schema.classes
            )
        report = compute_metrics(schema, test[schema.target].to_numpy(), predictions)
    except Exception as exc:  # the local cell itself still counts
        return {"error": f"{type(exc).__name__}: {exc}"[:2000]}

    return {
        "metrics": dict(report.values),
        "details": {
            "ensemble": callable(best_network),
            "describe": _jsonable(description),
        },
    }


def run_flaml(
    cell: Cell, split: SplitFiles, folder: Path, flaml_python: Path
) -> Record:
    """Run FLAML in a subprocess of `flaml_python`, then score it with the broker."""
    from broker.intake import load_dataset, load_holdout
    from broker.metrics import compute_metrics
    from broker.spec import JobSpec

    info = DATASETS[cell.dataset]
    job: Record = {
        "train": str(split.train),
        "test": str(split.test),
        "target": info.target,
        "task": cell.task,
        "metric": PRIMARY_METRIC[cell.task],
        "budget_s": cell.budget_s,
        "seed": cell.seed,
        "output": str(folder / "flaml-output.json"),
    }
    job_path = folder / "flaml-job.json"
    job_path.write_text(json.dumps(job))
    completed = subprocess.run(
        [str(flaml_python), str(Path(__file__).resolve()), "--flaml-worker", job_path],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=cell.budget_s * 3 + 300,
    )
    if completed.returncode != 0:
        tail = completed.stderr.strip().splitlines()[-5:]
        raise RuntimeError(
            f"FLAML subprocess exited {completed.returncode}: " + " | ".join(tail)
        )
    output = json.loads(Path(job["output"]).read_text())

    spec = JobSpec.model_validate(
        {
            "data": split.train,
            "holdout_data": split.test,
            "target": info.target,
            "task": cell.task,
        }
    )
    schema = load_dataset(spec).schema
    holdout = load_holdout(spec, schema)
    assert holdout is not None, "the spec names holdout_data"
    predictions = output["predictions"]
    if cell.task != "regression":
        predictions = align_probabilities(
            predictions, output["classes"], schema.classes
        )
    report = compute_metrics(
        schema, holdout.frame[schema.target].to_numpy(), predictions
    )
    return {
        "metrics": dict(report.values),
        "details": {
            "algorithm": output["best_estimator"],
            "fit_s": output["fit_s"],
            "flaml_version": output["flaml_version"],
        },
    }


def flaml_worker(job_path: Path) -> int:
    """Train FLAML on a job file's train CSV and write test predictions (subprocess).

    Runs in the FLAML interpreter, which has pandas and FLAML but not the broker.
    Feature columns are renamed by position, since some learners reject characters
    such as ``:`` or ``"`` in names.
    """
    import importlib.metadata

    import pandas as pd
    from flaml import AutoML

    job = json.loads(job_path.read_text())
    target, task = job["target"], job["task"]
    dtype = None if task == "regression" else {target: str}
    train = pd.read_csv(job["train"], dtype=dtype)
    test = pd.read_csv(job["test"], dtype=dtype)
    labels = train.pop(target)
    test = test.drop(columns=[target])
    names = {name: f"f{i}" for i, name in enumerate(train.columns)}
    train, test = train.rename(columns=names), test.rename(columns=names)

    automl = AutoML()
    started = time.monotonic()
    automl.fit(
        train,
        labels,
        task="regression" if task == "regression" else "classification",
        metric=job["metric"],
        time_budget=job["budget_s"],
        seed=job["seed"],
        verbose=0,
    )
    fit_s = time.monotonic() - started

    output: Record = {
        "best_estimator": automl.best_estimator,
        "fit_s": round(fit_s, 1),
        "flaml_version": importlib.metadata.version("flaml"),
    }
    if task == "regression":
        output["predictions"] = automl.predict(test).tolist()
    else:
        output["classes"] = [str(c) for c in automl.classes_]
        output["predictions"] = automl.predict_proba(test).tolist()
    Path(job["output"]).write_text(json.dumps(output))
    return 0


# --- the report -----------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def metric_values(
    latest: dict[CellKey, Record],
    dataset: str,
    budget_s: int,
    backend: str,
    metric: str,
) -> dict[int, float]:
    """Seed to metric value of the finished cells of one dataset, budget and backend."""
    values = {}
    for (name, _, seed, budget, which), record in latest.items():
        if (name, budget, which) != (dataset, budget_s, backend):
            continue
        value = record.get("metrics", {}).get(metric)
        if value is not None and not record.get("error"):
            values[seed] = float(value)
    return values


def paired_means(
    latest: dict[CellKey, Record],
    dataset: str,
    budget_s: int,
    backends: tuple[str, str],
    metric: str,
) -> tuple[float, float, int] | None:
    """Means of two backends over the seeds both have; None when they share none."""
    first = metric_values(latest, dataset, budget_s, backends[0], metric)
    second = metric_values(latest, dataset, budget_s, backends[1], metric)
    seeds = sorted(set(first) & set(second))
    if not seeds:
        return None
    mean_first = _mean([first[s] for s in seeds])
    mean_second = _mean([second[s] for s in seeds])
    assert mean_first is not None and mean_second is not None, seeds
    return mean_first, mean_second, len(seeds)


def aggregate(
    records: Iterable[Record], expected_seeds: dict[str, list[int]]
) -> list[Record]:
    """One row per dataset, budget and backend: means over seeds and the H2O ratio.

    The ratio to H2O divides the two backends' means of the task's main metric over the
    seeds both finished (for rmse and log_loss lower is better).

    Args:
        records: Every record read from the results file.
        expected_seeds: Dataset name to the seeds the plan runs; a dataset absent from
            it expects the seeds it has records for.

    Returns:
        Rows sorted by dataset order, budget and backend order.
    """
    latest = latest_records(records)
    groups: dict[tuple[str, int, str], list[Record]] = {}
    for (dataset, _, _, budget, backend), record in latest.items():
        groups.setdefault((dataset, budget, backend), []).append(record)

    rows = []
    for (dataset, budget, backend), group in groups.items():
        task = group[0]["task"]
        main = PRIMARY_METRIC[task]
        done = [r for r in group if not r.get("error")]
        expected = expected_seeds.get(dataset) or sorted({r["seed"] for r in group})
        means = {
            name: _mean(
                [r["metrics"][name] for r in done if r["metrics"].get(name) is not None]
            )
            for name in SHOWN_METRICS[task]
        }
        paired = paired_means(latest, dataset, budget, (backend, "h2o"), main)
        rows.append(
            {
                "dataset": dataset,
                "task": task,
                "budget_s": budget,
                "backend": backend,
                "metric": main,
                "lower_is_better": main in LOWER_IS_BETTER,
                "means": means,
                "seeds_done": len(done),
                "seeds_expected": len(expected),
                "failed": len(group) - len(done),
                "errors": sorted({r["error"] for r in group if r.get("error")}),
                "ratio_to_h2o": paired[0] / paired[1] if paired and paired[1] else None,
                "wall_s": _mean([r["wall_s"] for r in done]),
                "peak_mib": max((r["peak_mib"] for r in done), default=None),
            }
        )
    order = list(DATASETS)
    rows.sort(
        key=lambda r: (
            order.index(r["dataset"]) if r["dataset"] in order else len(order),
            r["budget_s"],
            REPORT_BACKENDS.index(r["backend"]),
        )
    )
    return rows


def acceptance(records: Iterable[Record], budgets: Iterable[int]) -> list[Record]:
    """Per budget, how the local backend stands against H2O and FLAML on the seven
    binary datasets (ROC AUC, means over the seeds both sides finished)."""
    latest = latest_records(records)
    summary = []
    for budget in sorted(set(budgets)):
        level, networks_level, local_aucs, flaml_aucs = [], [], [], []
        missing: dict[str, list[str]] = {"h2o": [], "flaml": [], NETWORKS: []}
        for dataset in BINARY_DATASETS:
            versus_h2o = paired_means(
                latest, dataset, budget, ("local", "h2o"), "roc_auc"
            )
            if versus_h2o is None:
                missing["h2o"].append(dataset)
            elif versus_h2o[0] >= versus_h2o[1] - LOCAL_AUC_MARGIN:
                level.append(dataset)
            versus_flaml = paired_means(
                latest, dataset, budget, ("local", "flaml"), "roc_auc"
            )
            if versus_flaml is None:
                missing["flaml"].append(dataset)
            else:
                local_aucs.append(versus_flaml[0])
                flaml_aucs.append(versus_flaml[1])
            networks = paired_means(
                latest, dataset, budget, (NETWORKS, "h2o"), "roc_auc"
            )
            if networks is None:
                missing[NETWORKS].append(dataset)
            elif networks[0] >= networks[1] - NETWORKS_AUC_MARGIN:
                networks_level.append(dataset)
        summary.append(
            {
                "budget_s": budget,
                "local_level_with_h2o": level,
                "local_mean_auc": _mean(local_aucs),
                "flaml_mean_auc": _mean(flaml_aucs),
                "flaml_compared_datasets": len(local_aucs),
                "networks_level_with_h2o": networks_level,
                "missing": missing,
            }
        )
    return summary


def machine_description() -> Record:
    """Platform, cores, memory and CPU model of this machine."""
    memory_gib = None
    cpu_model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 2**20, 1)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "cpu": cpu_model,
    }


def package_versions(flaml_python: Path | None) -> dict[str, str | None]:
    """Versions of torch, h2o and scikit-learn here, and of FLAML in its interpreter."""
    import importlib.metadata

    versions: dict[str, str | None] = {}
    for name in ("torch", "h2o", "scikit-learn"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    versions["flaml"] = None
    if flaml_python is not None and flaml_python.exists():
        probe = "import importlib.metadata as m; print(m.version('flaml'))"
        found = subprocess.run(
            [str(flaml_python), "-c", probe], capture_output=True, text=True, timeout=60
        )
        versions["flaml"] = found.stdout.strip() or None
    return versions


def git_commit() -> str:
    """The checked-out commit, with ``-dirty`` when tracked files have changed.

    The results folder does not count: a resumed run rewrites its own files there.
    """
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            [
                "git",
                "-C",
                str(ROOT),
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":(exclude)benchmarks/results",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}-dirty" if changed else head


def write_report(
    out: Path,
    records: list[Record],
    *,
    expected_seeds: dict[str, list[int]],
    context: Record,
) -> None:
    """Rewrite quality.json, quality.md and quality.png from every record so far."""
    rows = aggregate(records, expected_seeds)
    budgets = sorted({r["budget_s"] for r in rows})
    payload = {
        **context,
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commits": sorted({r["commit"] for r in records}),
        "cells": len(latest_records(records)),
        "summary": acceptance(records, budgets),
        "rows": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(json.dumps(payload, indent=1, default=str))
    (out / "quality.md").write_text(render_markdown(payload))
    plot(rows, out / "quality.png")


def render_markdown(payload: Record) -> str:
    """The Markdown report: summary block, then one table per task."""
    machine = payload["machine"]
    versions = ", ".join(f"{k} {v or 'absent'}" for k, v in payload["versions"].items())
    lines = [
        "# Model quality: local backend against H2O AutoML and FLAML",
        "",
        f"Machine: {machine['platform']}, {machine['cores']} cores, "
        f"{machine['memory_gib']} GiB, {machine['cpu']}; Python {machine['python']}.",
        f"Versions: {versions}. Commit(s): {', '.join(payload['commits']) or '-'}.",
        "Runs of scripts/benchmark-quality.sh append their cells to quality.jsonl and "
        f"rewrite this report from all of them; the latest: `{payload['command']}`. "
        f"Generated {payload['generated_at']} from {payload['cells']} recorded cells.",
        "",
        "Each backend trains on the same 80% of rows and is scored by the broker's "
        "metrics on the same 20% (stratified split per seed). Values are means over "
        "seeds; 'vs H2O' divides by H2O's mean over the seeds both finished. "
        "`local-networks` is the best network of the local model alone (below 10,000 "
        "training rows the mean of its 5 fold networks). Peak MiB is "
        "the largest summed resident memory of the benchmark's process tree (the H2O "
        "JVM and the FLAML subprocess included).",
        "",
        "## Summary (binary datasets, ROC AUC)",
        "",
    ]
    for block in payload["summary"]:
        lines += _summary_lines(block)
    for task in ("binary", "multiclass", "regression"):
        rows = [r for r in payload["rows"] if r["task"] == task]
        if rows:
            lines += _table_lines(task, rows)
    lines += [
        "Plot: `quality.png` (ROC AUC per dataset and backend, one panel per budget).",
        "",
    ]
    return "\n".join(lines)


def _summary_lines(block: Record) -> list[str]:
    total = len(BINARY_DATASETS)
    missing = block["missing"]
    local_mean, flaml_mean = block["local_mean_auc"], block["flaml_mean_auc"]
    lines = [
        f"Budget {block['budget_s']} s:",
        "",
        f"- local within {LOCAL_AUC_MARGIN} AUC of H2O or ahead: "
        f"{len(block['local_level_with_h2o'])}/{total} "
        f"({', '.join(block['local_level_with_h2o']) or 'none'})"
        + _missing_note(missing["h2o"]),
        f"- mean AUC over {block['flaml_compared_datasets']}/{total} datasets: "
        f"local {_number(local_mean)}, FLAML {_number(flaml_mean)}"
        + _missing_note(missing["flaml"]),
        f"- local-networks within {NETWORKS_AUC_MARGIN} AUC of H2O: "
        f"{len(block['networks_level_with_h2o'])}/{total}"
        + _missing_note(missing[NETWORKS]),
        "",
    ]
    return lines


def _missing_note(datasets: list[str]) -> str:
    return f"; no comparison yet for {', '.join(datasets)}" if datasets else ""


def _table_lines(task: str, rows: list[Record]) -> list[str]:
    metrics = SHOWN_METRICS[task]
    headers = [f"{m} (lower is better)" if m in LOWER_IS_BETTER else m for m in metrics]
    lines = [
        f"## {task}",
        "",
        "| dataset | budget s | backend | seeds | "
        + " | ".join(headers)
        + f" | {PRIMARY_METRIC[task]} vs H2O | wall s | peak MiB | failed |",
        "|---|---|---|---|" + "---|" * len(metrics) + "---|---|---|---|",
    ]
    for row in rows:
        seeds = f"{row['seeds_done']}/{row['seeds_expected']}"
        if row["seeds_done"] < row["seeds_expected"]:
            seeds += " (incomplete)"
        values = " | ".join(_number(row["means"][m]) for m in metrics)
        failed = str(row["failed"])
        if row["errors"]:
            failed += f": {row['errors'][0][:80]}"
        lines.append(
            f"| {row['dataset']} | {row['budget_s']} | {row['backend']} | {seeds} | "
            f"{values} | {_number(row['ratio_to_h2o'], 3)} | "
            f"{_number(row['wall_s'], 0)} | {row['peak_mib'] or '-'} | {failed} |"
        )
    lines.append("")
    return lines


def plot(rows: list[Record], path: Path) -> None:
    """ROC AUC per dataset and backend as grouped bars, one panel per budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["means"].get("roc_auc") is not None]
    budgets = sorted({r["budget_s"] for r in rows}) or [0]
    figure, axes = plt.subplots(
        len(budgets), 1, figsize=(11, 3.8 * len(budgets)), squeeze=False
    )
    width = 0.8 / len(REPORT_BACKENDS)
    palette = plt.get_cmap("tab10").colors  # type: ignore[attr-defined]
    colours = dict(zip(REPORT_BACKENDS, palette, strict=False))
    for axis, budget in zip(axes[:, 0], budgets, strict=True):
        mine = [r for r in rows if r["budget_s"] == budget]
        datasets = [d for d in DATASETS if any(r["dataset"] == d for r in mine)]
        for offset, backend in enumerate(REPORT_BACKENDS):
            xs, ys = [], []
            for position, dataset in enumerate(datasets):
                for row in mine:
                    if (row["dataset"], row["backend"]) == (dataset, backend):
                        xs.append(position + (offset - 1.5) * width)
                        ys.append(row["means"]["roc_auc"])
            if xs:
                axis.bar(xs, ys, width=width, label=backend, color=colours[backend])
        values = [r["means"]["roc_auc"] for r in mine]
        if values:
            axis.set_ylim(max(0.0, min(values) - 0.05), min(1.0, max(values) + 0.02))
        axis.set_xticks(range(len(datasets)), datasets, fontsize=8)
        axis.set_xlim(-0.5, max(len(datasets), 2) - 0.5)
        axis.set_title(f"budget {budget} s")
        axis.set_ylabel("held-out ROC AUC (mean over seeds)")
        axis.legend(fontsize=7, ncol=len(REPORT_BACKENDS))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _number(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return str(value)
    return value


# --- command line ---------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS)
    )
    parser.add_argument(
        "--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS)
    )
    parser.add_argument(
        "--budgets",
        nargs="+",
        type=int,
        default=[60, 300],
        help="wall-clock budgets in seconds",
    )
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=None,
        help="run only these seeds (default: all planned)",
    )
    parser.add_argument(
        "--small-seeds",
        type=int,
        default=5,
        help="seeds 0..N-1 for datasets under 5,000 rows",
    )
    parser.add_argument(
        "--large-seeds", type=int, default=1, help="seeds 0..N-1 for larger datasets"
    )
    parser.add_argument(
        "--max-hours",
        type=float,
        default=None,
        help="start no new cell after this many hours",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="start over: move quality.jsonl aside, run every cell",
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="run again the cells whose record holds an error",
    )
    parser.add_argument(
        "--stale",
        action="store_true",
        help="run again the cells whose record was made on another commit (the local "
        "backend's cells after a change to it; use with --backends local)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--work", type=Path, default=DEFAULT_WORK, help="split files and run folders"
    )
    parser.add_argument("--datasets-dir", type=Path, default=DEFAULT_DATASETS_DIR)
    parser.add_argument("--flaml-python", type=Path, default=DEFAULT_FLAML_PYTHON)
    parser.add_argument(
        "--keep-runs", action="store_true", help="keep each cell's run folder and model"
    )
    parser.add_argument("--verbose", action="store_true", help="broker INFO logs")
    args = parser.parse_args(argv)
    if any(b < 1 for b in args.budgets):
        parser.error(f"--budgets must be whole seconds >= 1, got {args.budgets}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    if raw_argv[:1] == ["--flaml-worker"]:
        return flaml_worker(Path(raw_argv[1]))
    args = parse_args(raw_argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logger.setLevel(logging.INFO)
    sys.path.insert(0, str(ROOT))
    from broker.errors import StalePriceWarning

    # Prices play no part in a quality comparison; one warning per cell is noise.
    warnings.filterwarnings("ignore", category=StalePriceWarning)
    # A relative interpreter path must survive the subprocess's own working folder;
    # absolute() keeps the virtualenv's link, which resolve() would follow out of it.
    args.flaml_python = args.flaml_python.absolute()

    if not args.datasets_dir.is_dir():
        print(
            f"the shared datasets folder is absent: {args.datasets_dir}; pass "
            "--datasets-dir with the folder that holds adult.csv, kc1.csv and the rest",
            file=sys.stderr,
        )
        return 1
    if "flaml" in args.backends and not args.flaml_python.exists():
        print(
            f"no FLAML interpreter at {args.flaml_python}; run "
            "scripts/benchmark-quality.sh (it creates .venv-bench), pass "
            "--flaml-python, or leave flaml out of --backends",
            file=sys.stderr,
        )
        return 1

    frames = {
        name: read_dataset_text(args.datasets_dir / f"{name}.csv")
        for name in args.datasets
    }
    seeds = {
        name: seeds_for(
            len(frame),
            small_seeds=args.small_seeds,
            large_seeds=args.large_seeds,
            only=args.seeds,
        )
        for name, frame in frames.items()
    }
    expected = report_seeds(
        args.datasets_dir,
        small_seeds=args.small_seeds,
        large_seeds=args.large_seeds,
        loaded=frames,
    )
    results = args.out / "quality.jsonl"
    if args.fresh and results.exists():
        results.replace(results.with_suffix(".jsonl.bak"))
        print(f"moved the earlier results to {results.with_suffix('.jsonl.bak')}")
    records = read_records(results)
    plan = plan_cells(seeds, budgets=args.budgets, backends=args.backends)
    commit = git_commit()
    todo = pending_cells(
        plan,
        records,
        retry_failed=args.retry_failed,
        current_commit=commit if args.stale else None,
    )
    print(
        f"{len(plan)} cells planned, {len(plan) - len(todo)} already recorded, "
        f"{len(todo)} to run",
        flush=True,
    )

    context = {
        "machine": machine_description(),
        "versions": package_versions(args.flaml_python),
        "command": shlex.join(["benchmarks/quality.py", *raw_argv]),
    }
    started = time.monotonic()

    def execute(cell: Cell) -> list[Record]:
        folder = args.work / "splits" / f"{cell.dataset}-seed{cell.seed}"
        split = write_split(
            frames[cell.dataset], DATASETS[cell.dataset], cell.seed, folder
        )
        return run_cell(
            cell,
            split,
            work=args.work,
            flaml_python=args.flaml_python,
            commit=commit,
            keep_runs=args.keep_runs,
        )

    def on_record(record: Record) -> None:
        append_record(results, record)
        records.append(record)
        write_report(args.out, records, expected_seeds=expected, context=context)
        print(_progress_line(record, time.monotonic() - started), flush=True)

    if not todo:
        write_report(args.out, records, expected_seeds=expected, context=context)
    max_s = args.max_hours * 3600 if args.max_hours is not None else None
    run_plan(todo, execute=execute, on_record=on_record, max_s=max_s)
    print(f"wrote {args.out / 'quality.md'}")
    return 0


def _progress_line(record: Record, elapsed_s: float) -> str:
    head = (
        f"{record['dataset']:<18} seed {record['seed']} {record['budget_s']:>4} s "
        f"{record['backend']:<14}"
    )
    if record.get("error"):
        return f"{head} FAILED: {record['error'][:200]}"
    values = " ".join(
        f"{name} {_number(value)}"
        for name, value in record["metrics"].items()
        if name in SHOWN_METRICS[record["task"]]
    )
    return (
        f"{head} {values}  wall {record['wall_s']:.0f} s, peak {record['peak_mib']} "
        f"MiB ({elapsed_s / 60:.1f} min so far)"
    )


if __name__ == "__main__":
    sys.exit(main())
