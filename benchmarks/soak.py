"""Soak run: many fake cloud jobs, random faults, random SIGKILLs, then a full audit.

Jobs run through the durable fake (``broker.testing.durable``) under five provider
names (vertex, azure, sagemaker, h2o, local). Each job gets a seeded random fault
(quota, capacity, throttling, 5xx, refreshable or hard credential expiry, a lost create
reply, a job that runs past its budget, or none) and a fallback provider. Batches of
jobs run in worker subprocesses; a worker may be SIGKILLed at a random step (the
runner's ``AUTOML_BROKER_CRASH_AT`` hook) and is then restarted on the same batch, so
``Broker.run`` meets its own half-finished jobs again. A final ``Broker.resume()`` picks
up the jobs left detached. The audit then counts:

- lost jobs: a job missing from the store, not in a final state, or a service job
  that no attempt in the store knows of (it would bill unseen);
- duplicate submissions: an idempotency key that created more than one service job;
- budget overruns: a job whose recorded or billed cost passed its ``max_usd``;
- cost mismatches: a job whose recorded cost differs from what the service billed.

Run it from the repository root::

    .venv/bin/python benchmarks/soak.py            # 200 jobs, seed 0
    .venv/bin/python benchmarks/soak.py --jobs 40 --seed 3

It prints the counts and writes them to ``benchmarks/results/soak.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from broker.errors import MetricWarning  # noqa: E402
from broker.runner import CRASH_ENV  # noqa: E402
from broker.testing.durable import (  # noqa: E402
    FAKE_RATES_USD_PER_HOUR,
    DurableService,
    build_broker,
)

PROVIDERS = ["vertex", "azure", "sagemaker", "h2o", "local"]
LOCAL_RATE_USD_PER_HOUR = Decimal("7.20")  # what build_broker gives the local provider
STEPS = [
    "after_start_attempt",
    "after_submit",
    "after_set_ref",
    "after_running",
    "after_result",
    "after_set_result",
]
FAULTS = [
    "none",
    "quota",
    "capacity",
    "throttled",
    "5xx",
    "expired",
    "expired_hard",
    "lost_reply",
    "over_budget",
]
MAX_USD = "0.50"
# Vertex bills a one-hour minimum: jobs that may run there get room for it.
MAX_USD_WITH_VERTEX = "5.00"
MAX_RUNTIME_S = 240  # at the dearest rate ($7.20/h) 240 s costs $0.48 < $0.50
SHORT_SCRIPT = [["queued", 0], ["running", 20], ["succeeded", 160]]
LONG_SCRIPT = [["queued", 0], ["running", 20], ["succeeded", 5000]]


def main() -> int:
    args = _parse_args()
    warnings.simplefilter("ignore", MetricWarning)  # the fake predicts class shares
    started = time.monotonic()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="automl-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    config = _config(work, args)
    rng = random.Random(args.seed)
    jobs = [_job(i, work, rng) for i in range(args.jobs)]
    batches = [jobs[i : i + args.batch] for i in range(0, len(jobs), args.batch)]

    crashes = _run_batches(config, batches, work, rng, args)
    broker = build_broker(config)
    resumed = broker.resume()  # the jobs left detached, and anything else unfinished
    report = _audit(config, jobs, broker)
    report.update(
        {
            "jobs": len(jobs),
            "seed": args.seed,
            "crashes": crashes,
            "resumed_at_end": len(resumed),
            "faults": dict(Counter(j["fault"] for j in jobs)),
            "wall_s": round(time.monotonic() - started, 1),
            "workdir": str(work),
        }
    )

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", "utf-8")
    for key in (
        "lost_jobs",
        "duplicate_submissions",
        "budget_overruns",
        "cost_mismatches",
        "crashes",
        "final_states",
        "wall_s",
    ):
        print(f"{key}: {report[key]}")
    print(f"written: {out}")
    bad = report["lost_jobs"] + report["duplicate_submissions"]
    return 1 if bad + report["budget_overruns"] else 0


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=20, help="jobs per worker")
    parser.add_argument("--workers", type=int, default=2, help="workers at once")
    parser.add_argument(
        "--crash-rate", type=float, default=0.6, help="share of worker runs killed"
    )
    parser.add_argument("--time-scale", type=float, default=2000.0)
    parser.add_argument("--workdir", default=None)
    parser.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "results" / "soak.json")
    )
    return parser.parse_args()


# --- the jobs --------------------------------------------------------------------------


def _config(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(args.seed)
    x1, x2 = rng.normal(size=300), rng.normal(size=300)
    label = np.where(x1 - x2 + rng.normal(scale=0.5, size=300) > 0, "yes", "no")
    pd.DataFrame({"x1": x1, "x2": x2, "label": label}).to_csv(
        work / "table.csv", index=False
    )
    rates = {**FAKE_RATES_USD_PER_HOUR, "local": str(LOCAL_RATE_USD_PER_HOUR)}
    return {
        "store": str(work / "jobs.db"),
        "service": str(work / "service.db"),
        "time_scale": args.time_scale,
        "poll_interval_s": 10,
        "backoff_s": 2,
        "providers": {
            # bill at the catalog's rate, so the broker's estimate and the bill agree
            name: {"usd_per_s": str(Decimal(rates[name]) / 3600)}
            for name in PROVIDERS
        },
    }


def _job(number: int, work: Path, rng: random.Random) -> dict[str, Any]:
    primary = rng.choice(PROVIDERS)
    fallback = rng.choice([p for p in PROVIDERS if p != primary])
    fault = rng.choice(FAULTS)
    faults: dict[str, Any] = {}
    script = SHORT_SCRIPT
    if fault == "quota":
        faults["queued_error"] = "quota"
    elif fault in ("capacity", "throttled"):
        faults["submit"] = [fault]
    elif fault == "5xx":
        faults["poll"] = {"2": "5xx"}
    elif fault == "expired":
        faults["expire"] = [2]
    elif fault == "expired_hard":
        # every try of one poll fails, refresh or not: the broker detaches
        faults["expire_hard"] = [2, 3, 4, 5]
    elif fault == "lost_reply":
        faults["lose_reply"] = True
    elif fault == "over_budget":
        script = LONG_SCRIPT
    options = {"faults": faults, "script": script}
    return {
        "key": f"soak-{number:04d}",
        "fault": fault,
        "data": str(work / "table.csv"),
        "target": "label",
        "providers": [primary, fallback],
        # the primary carries the fault; the fallback runs clean
        "provider_options": {primary: options, fallback: {"script": SHORT_SCRIPT}},
        "budget": {
            "max_usd": MAX_USD_WITH_VERTEX
            if "vertex" in (primary, fallback)
            else MAX_USD,
            "max_runtime_s": MAX_RUNTIME_S,
        },
        "run_dir": str(work / "runs" / f"soak-{number:04d}"),
    }


# --- workers and crashes ---------------------------------------------------------------


def _run_batches(
    config: dict[str, Any],
    batches: list[list[dict[str, Any]]],
    work: Path,
    rng: random.Random,
    args: argparse.Namespace,
) -> int:
    """Run every batch in a worker until one run of it finishes; count the kills."""
    pending = list(enumerate(batches))
    running: list[tuple[int, list[dict[str, Any]], subprocess.Popen[bytes]]] = []
    tries: Counter[int] = Counter()
    crashes = 0
    while pending or running:
        while pending and len(running) < args.workers:
            index, batch = pending.pop(0)
            tries[index] += 1
            # kill at most twice per batch, so that every batch ends
            crash = rng.random() < args.crash_rate and tries[index] <= 2
            running.append(
                (index, batch, _start_worker(config, batch, work, crash, rng))
            )
        time.sleep(0.05)
        for item in list(running):
            index, batch, process = item
            if process.poll() is None:
                continue
            running.remove(item)
            if process.returncode != 0:
                crashes += 1
                pending.insert(0, (index, batch))
    return crashes


def _start_worker(
    config: dict[str, Any],
    batch: list[dict[str, Any]],
    work: Path,
    crash: bool,
    rng: random.Random,
) -> subprocess.Popen[bytes]:
    path = work / f"worker-{batch[0]['key']}.json"
    path.write_text(json.dumps({**config, "jobs": batch}), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    env["PYTHONPATH"] = str(ROOT)
    if crash:
        env[CRASH_ENV] = f"{rng.choice(STEPS)}:{rng.randint(1, len(batch))}"
    return subprocess.Popen(
        [sys.executable, "-W", "ignore", "-m", "broker.testing.durable", str(path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(work / f"{path.stem}.err").open("ab"),
    )


# --- the audit -------------------------------------------------------------------------


def _audit(
    config: dict[str, Any], jobs: list[dict[str, Any]], broker: Any
) -> dict[str, Any]:
    service = DurableService(config["service"])
    store = broker.store
    known_refs: set[str] = set()
    lost, overruns, mismatches = [], [], []
    states: Counter[str] = Counter()

    for job in jobs:
        record = store.find_by_idempotency_key(job["key"])
        if record is None or not record.terminal:
            lost.append(job["key"])
            states["missing" if record is None else record.state.value] += 1
            continue
        states[record.state.value] += 1
        attempts = store.attempts(record.job_id)
        known_refs.update(a.provider_job_id for a in attempts if a.provider_job_id)
        recorded = sum((e.usd for e in store.spend_entries(record.job_id)), Decimal(0))
        billed = Decimal(0)
        for attempt in attempts:
            provider = broker.provider(attempt.provider)
            for row in service.jobs(attempt.provider, attempt.idempotency_key):
                billed += provider._usd(row)
                if not provider.state_of(row["job_id"]).terminal:
                    lost.append(f"{job['key']}: service job {row['job_id']} still runs")
        if max(recorded, billed) > Decimal(job["budget"]["max_usd"]):
            overruns.append(f"{job['key']}: recorded {recorded}, billed {billed}")
        if recorded != billed:
            mismatches.append(f"{job['key']}: recorded {recorded}, billed {billed}")

    orphans = [
        row["job_id"] for row in service.jobs() if row["job_id"] not in known_refs
    ]
    duplicates = service.duplicate_keys()
    return {
        "lost_jobs": len(lost) + len(orphans),
        "duplicate_submissions": len(duplicates),
        "budget_overruns": len(overruns),
        "cost_mismatches": len(mismatches),
        "final_states": dict(states),
        "service_jobs_created": service.created_count(),
        "details": {
            "lost": lost,
            "orphans": orphans,
            "duplicates": duplicates,
            "overruns": overruns,
            "mismatches": mismatches,
        },
    }


if __name__ == "__main__":
    raise SystemExit(main())
