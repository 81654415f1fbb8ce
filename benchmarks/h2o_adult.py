"""H2O on the Adult census data through the broker, with a 120-second budget.

Runs ``Broker.run`` with only the H2O provider on ``data/adult.csv.gz`` (target
``class``, the broker's stratified 80/20 split with seed 0), then reports the held-out
ROC AUC, the leaderboard, the saved MOJO, the same AUC scored again from the MOJO with
no H2O node, and whether any JVM or temporary folder was left behind.

Usage:
    .venv/bin/python benchmarks/h2o_adult.py [--data PATH] [--budget 120] [--out DIR]

Exits 1 when the held-out ROC AUC is under the target (0.925) or something was left
running or on disk.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_AUC = 0.925
TEMP_PREFIX = "automl-broker-h2o"


def our_jvms() -> list[str]:
    """Live (not zombie) Java processes started for an H2O node or a MOJO scorer."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().split(") ")[1][:1]
        except (OSError, IndexError):
            continue
        if TEMP_PREFIX in command and "java" in command and state != "Z":
            found.append(f"{entry.name}: {command[:100]}")
    return found


def our_temp_folders() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}-*")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "adult.csv.gz")
    parser.add_argument("--budget", type=int, default=120, help="max_runtime_s")
    parser.add_argument("--out", type=Path, default=None, help="run folder")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )

    from broker.intake import to_safe_frame
    from broker.metrics import compute_metrics
    from broker.models import load_saved_model
    from broker.runner import Broker
    from broker.spec import JobSpec
    from broker.store import JobStore

    work = Path(tempfile.mkdtemp(prefix="h2o-adult-bench-"))
    run_dir = args.out or work / "run"
    temp_before, jvms_before = our_temp_folders(), our_jvms()
    spec = JobSpec.model_validate(
        {
            "data": args.data,
            "target": "class",
            "constraints": {"providers": ["h2o"]},
            "budget": {"max_runtime_s": args.budget},
        }
    )
    broker = Broker(store=JobStore(path=work / "jobs.db"))

    started = time.monotonic()
    prepared = broker.prepare(spec)
    try:
        result = broker.run(spec, run_dir=run_dir, prepared=prepared)
    finally:
        broker.provider("h2o").close()
    wall_s = time.monotonic() - started

    # 1. what the broker measured on its held-out rows
    schema = prepared.dataset.schema
    print(f"\nwall {wall_s:.1f} s (budget {args.budget} s), run folder {run_dir}")
    print(f"held-out rows: {result.holdout_n}, metric {result.metric}")
    for name, value in sorted(result.holdout_metrics.items()):
        print(f"  held-out {name}: {value:.5f}" if value is not None else name)
    cost = result.cost
    print(
        f"broker runtime {result.runtime_s} s; cost {cost.actual_usd} {cost.currency}"
    )
    print(f"  billing: {cost.billing_unit}")

    # 2. the leaderboard, best first
    print(f"\nleaderboard ({len(result.leaderboard)} models; validation = H2O CV):")
    for entry in result.leaderboard:
        validation = entry.validation_metrics
        print(
            f"  {entry.model_id:<50} {entry.algorithm:<16} "
            f"cv_auc={validation.get('roc_auc')!s:<20.18} "
            f"train_s={entry.training_time_s} "
            f"holdout_auc={entry.metrics.get('roc_auc') if entry.metrics else None}"
        )

    # 3. the MOJO, scored with no H2O node
    model_dir = run_dir / "model"
    files = {p.name: p.stat().st_size for p in sorted(model_dir.iterdir())}
    print(f"\nmodel folder: {files}")
    holdout = prepared.dataset.frame.loc[prepared.split.test_index]
    features = to_safe_frame(holdout, schema, include_target=False)
    scoring_started = time.monotonic()
    model = load_saved_model(model_dir)
    mojo_report = compute_metrics(
        schema, holdout[schema.target].to_numpy(), model.predict_proba(features)
    )
    print(
        f"MOJO ({type(model).__name__}) held-out roc_auc "
        f"{mojo_report.values['roc_auc']:.5f} in "
        f"{time.monotonic() - scoring_started:.1f} s"
    )

    # 4. nothing left behind
    jvms_left = [j for j in our_jvms() if j not in jvms_before]
    temp_left = sorted(our_temp_folders() - temp_before)
    print(
        f"\nJVMs left: {jvms_left or 'none'}; temporary folders left: {temp_left or 'none'}"
    )

    auc = result.holdout_metrics["roc_auc"]
    passed = (
        auc is not None
        and auc >= TARGET_AUC
        and (model_dir / "model.zip").is_file()
        and not jvms_left
        and not temp_left
    )
    print(
        f"{'PASS' if passed else 'FAIL'}: held-out roc_auc {auc} (target {TARGET_AUC})"
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
