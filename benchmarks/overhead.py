"""The broker's own overhead: start-up, planning and status polling.

Measures, on this machine:
- ``automl-broker --help`` wall time (a fresh process each time);
- planning time over the shipped catalogs, and over a synthetic catalog of 10,000
  machine-region rows;
- the broker's time per status poll against a scripted fake provider, beside the fake's
  own time per poll;
- the time to read and type adult.csv (48,842 rows) from ../shared/datasets, where that
  folder is present.

Run: ``.venv/bin/python benchmarks/overhead.py`` (writes benchmarks/results/overhead.json
and overhead.md).
"""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
import time
import warnings
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ADULT = ROOT.parent / "shared" / "datasets" / "adult.csv"


def help_times(repeats: int = 7) -> list[float]:
    exe = Path(sys.executable).with_name("automl-broker")
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([str(exe), "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return times


def intake_times(repeats: int = 5) -> list[float]:
    """Seconds to read, check and type adult.csv, as a job's intake does."""
    from broker.intake import load_dataset
    from broker.spec import JobSpec

    spec = JobSpec(data=ADULT, target="class")
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        load_dataset(spec)
        times.append(time.perf_counter() - started)
    return times


def _schema(n_rows: int = 48_842, n_features: int = 14):  # type: ignore[no-untyped-def]
    from broker.schema import Column, ColumnKind, Schema
    from broker.spec import Task

    columns = tuple(
        Column(f"f{i}", f"f{i}", ColumnKind.NUMERIC) for i in range(n_features)
    )
    return Schema(
        columns=columns,
        target="y",
        target_safe_name="y",
        task=Task.BINARY,
        n_rows=n_rows,
    )


def plan_times(catalog, repeats: int = 7) -> list[float]:  # type: ignore[no-untyped-def]
    from broker.planner import make_plan
    from broker.providers.base import Availability
    from broker.spec import JobSpec

    spec = JobSpec(data="x.csv", target="y", deployment={"hours_per_month": 730})
    up = Availability(True, "benchmark", "benchmark")
    availability = {n: up for n in ("vertex", "azure", "sagemaker", "h2o", "local")}
    schema = _schema()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            make_plan(
                spec, schema, catalog=catalog, availability=availability, unsupported={}
            )
        times.append(time.perf_counter() - started)
    return times


def synthetic_catalog(n: int = 10_000):  # type: ignore[no-untyped-def]
    from cost_models.catalog import Catalog, PriceRow

    providers = ("vertex", "azure", "sagemaker")
    rows = []
    for i in range(n - 60):
        rows.append(
            PriceRow(
                providers[i % 3],
                f"machine-{i}",
                f"region-{i % 20}",
                price=Decimal(f"0.{100 + i % 900}"),
                memory_gib=64,
            )
        )
    for i in range(60):
        rows.append(
            PriceRow(
                providers[i % 3],
                "endpoint",
                f"region-{i % 20}",
                price=Decimal("0.05"),
                memory_gib=16,
                component="endpoint",
            )
        )
    return Catalog.from_rows(rows)


def poll_times(polls: int = 2000) -> tuple[float, float]:
    """Seconds per poll: the broker's loop around the fake, and the fake alone."""
    import tempfile
    from types import SimpleNamespace

    from broker.clock import FakeClock
    from broker.runner import Broker, _Attempt
    from broker.store import JobStore
    from broker.testing import ScriptedProvider, synthetic_job

    script = [("running", 0), ("succeeded", 10.0 * polls)]
    with tempfile.TemporaryDirectory() as folder:
        clock = FakeClock()
        job = synthetic_job(Path(folder)).job
        alone = ScriptedProvider(clock=clock, script=script)
        ref = alone.submit(job)
        started = time.perf_counter()
        for _ in range(polls):
            alone.poll(ref)
        fake_s = (time.perf_counter() - started) / polls

        clock = FakeClock()
        store = JobStore(Path(folder) / "jobs.db", clock=clock)
        broker = Broker(store=store, clock=clock, poll_interval_s=10.0)
        store.create_job(
            spec={}, idempotency_key="bench", run_dir=folder, job_id=job.job_id
        )
        record = store.start_attempt(
            job.job_id,
            provider="scripted",
            machine=None,
            region=None,
            quote={},
            idempotency_key="bench-1",
        )
        provider = ScriptedProvider(clock=clock, script=script)
        attempt = _Attempt(
            candidate=SimpleNamespace(  # type: ignore[arg-type]
                provider="scripted", machine=None, region=None, quote=None
            ),
            provider=provider,
            job=job,
            attempt_id=record.attempt_id,
            ref=provider.submit(job),
        )
        started = time.perf_counter()
        broker.follow(attempt)
        broker_s = (time.perf_counter() - started) / max(provider.poll_count, 1)
    return broker_s, fake_s


def main() -> None:
    from cost_models.catalog import load_catalog

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shipped = load_catalog()
    results = {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
        },
        "help_s": help_times(),
        "plan_shipped_s": plan_times(shipped),
        "plan_shipped_rows": len(shipped.rows),
        "plan_10000_rows_s": plan_times(synthetic_catalog()),
    }
    broker_poll_s, fake_poll_s = poll_times()
    results["poll_broker_s"] = broker_poll_s
    results["poll_fake_s"] = fake_poll_s
    if ADULT.is_file():
        results["intake_adult_s"] = intake_times()

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "overhead.json").write_text(json.dumps(results, indent=2) + "\n")
    med = statistics.median
    lines = [
        "# Broker overhead",
        "",
        f"Machine: {results['machine']['platform']}, Python "
        f"{results['machine']['python']}",
        "",
        "| measure | median | max |",
        "|---|---|---|",
        f"| `automl-broker --help` | {med(results['help_s']) * 1000:.0f} ms | "
        f"{max(results['help_s']) * 1000:.0f} ms |",
        f"| plan, shipped catalogs ({results['plan_shipped_rows']} rows) | "
        f"{med(results['plan_shipped_s']) * 1000:.1f} ms | "
        f"{max(results['plan_shipped_s']) * 1000:.1f} ms |",
        f"| plan, 10,000 synthetic rows | {med(results['plan_10000_rows_s']) * 1000:.1f} ms"
        f" | {max(results['plan_10000_rows_s']) * 1000:.1f} ms |",
        f"| one status poll, broker loop (store write included) | "
        f"{broker_poll_s * 1000:.2f} ms | |",
        f"| one status poll, the fake alone | {fake_poll_s * 1000:.3f} ms | |",
    ]
    if "intake_adult_s" in results:
        lines.append(
            f"| read and type adult.csv (48,842 rows) | "
            f"{med(results['intake_adult_s']) * 1000:.0f} ms | "
            f"{max(results['intake_adult_s']) * 1000:.0f} ms |"
        )
    lines.append("")
    (RESULTS / "overhead.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
