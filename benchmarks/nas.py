"""The local network search: every strategy, with and without pruning, against compute.

For each dataset the rows are split 80/20 (stratified, seed 0); the search sees the 80%
(and carves its own validation split from it), the best model is scored on the 20%. Each
run records, trial by trial, the best validation score so far against the epochs and
seconds spent. The reference of a dataset is the best validation score of the unpruned
random search; for every run the table gives the epochs it needed to reach that score
(or "-" if it never did), its total epochs, and the best validation score it had reached
within one third of the unpruned random search's epochs. Pruned runs may start three
times as many trials (`--pruned-trials-factor`): what pruning saves buys more trials.

The default run (about 10 minutes on two cores):
- credit-g, blood-transfusion and australian: strategies random, grid, tpe, rl and
  evolution, each without pruning (20 trials of at most 40 epochs) and with ASHA
  (up to 60 trials);
- adult: random search without pruning (8 trials of at most 40 epochs) and with ASHA
  and the median rule (up to 24 trials), on all 39,073 training rows;
- digits (8x8 images from scikit-learn): random search over the image space, 3 trials.

A longer run, e.g. every pruner, three seeds and more trials::

    .venv/bin/python benchmarks/nas.py --pruners none median asha hyperband \\
        --seeds 0 1 2 --max-trials 30 --max-epochs 60 \\
        --adult-strategies random tpe rl evolution --adult-max-trials 20

Writes benchmarks/results/nas.json, nas.md and nas.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
DATASETS = ROOT.parent / "shared" / "datasets"
TARGETS = {
    "adult": "class",
    "credit-g": "class",
    "blood-transfusion": "whether he/she donated blood in March 2007",
    "australian": "A15",
    "phoneme": "Class",
    "kc1": "defects",
    "bank-marketing": "y",
}
STRATEGIES = ["random", "grid", "tpe", "rl", "evolution"]


def load(name: str) -> tuple[Any, Any, str, list[str], list[str], list[Any]]:
    """Train and held-out frames with safe column names, and the feature kinds."""
    import pandas as pd
    from sklearn.model_selection import train_test_split

    frame = pd.read_csv(
        DATASETS / f"{name}.csv", na_values=["?"], skipinitialspace=True
    )
    frame.columns = [_safe(c) for c in frame.columns]
    target = _safe(TARGETS[name])
    frame[target] = frame[target].astype(str)
    train, test = train_test_split(
        frame, test_size=0.2, stratify=frame[target], random_state=0
    )
    features = [c for c in frame.columns if c != target]
    numeric = [c for c in features if frame[c].dtype.kind in "if"]
    categorical = [c for c in features if c not in numeric]
    classes = sorted(frame[target].unique().tolist())
    return train.reset_index(drop=True), test, target, numeric, categorical, classes


def run_one(
    data: tuple[Any, ...],
    *,
    strategy: str,
    pruner: str,
    seed: int,
    max_trials: int,
    max_epochs: int,
    patience: int,
    budget_s: float,
) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    from broker.local.search import SearchOptions, run_search

    train, test, target, numeric, categorical, classes = data
    started = time.monotonic()
    result = run_search(
        train,
        target=target,
        task="binary",
        numeric=numeric,
        categorical=categorical,
        metric="roc_auc",
        budget_s=budget_s,
        classes=classes,
        options=SearchOptions(
            strategy=strategy,
            pruner=pruner,
            seed=seed,
            max_trials=max_trials,
            max_epochs=max_epochs,
            patience=patience,
            workers=1,
        ),
    )
    seconds = time.monotonic() - started
    proba = result.best_model().predict_proba(test.drop(columns=target))
    holdout = roc_auc_score(test[target] == classes[1], proba[:, 1])

    curve, epochs, train_s, best = [], 0, 0.0, float("-inf")
    for trial in result.trials:
        epochs += trial.epochs_run
        train_s += trial.training_time_s
        best = max(best, trial.score)
        curve.append({"epochs": epochs, "seconds": round(train_s, 2), "best": best})
    return {
        "strategy": strategy,
        "pruner": pruner,
        "seed": seed,
        "trials": len(result.trials),
        "pruned_trials": sum(t.stop_reason == "pruned" for t in result.trials),
        "epochs": result.epochs_total,
        "seconds": round(seconds, 1),
        "best_validation": result.best.score if result.best else None,
        "holdout_auc": float(holdout),
        "stop_reason": result.stop_reason,
        "curve": curve,
    }


def run_digits(max_trials: int, budget_s: float) -> dict[str, Any]:
    import pandas as pd
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from broker.local.search import SearchOptions, run_search

    digits = load_digits()
    pixels = [f"pixel_{i}" for i in range(64)]
    frame = pd.DataFrame(digits.data, columns=pixels)
    frame["digit"] = digits.target.astype(str)
    train, test = train_test_split(
        frame, test_size=0.2, stratify=frame["digit"], random_state=0
    )
    started = time.monotonic()
    result = run_search(
        train.reset_index(drop=True),
        target="digit",
        task="multiclass",
        numeric=pixels,
        categorical=[],
        metric="log_loss",
        budget_s=budget_s,
        options=SearchOptions(seed=0, max_trials=max_trials, workers=1),
    )
    seconds = time.monotonic() - started
    predicted = result.best_model().predict(test.drop(columns="digit"))
    return {
        "space": result.space_kind,
        "trials": len(result.trials),
        "epochs": result.epochs_total,
        "seconds": round(seconds, 1),
        "holdout_accuracy": float((predicted == test["digit"].to_numpy()).mean()),
        "best_config": result.best.config if result.best else None,
    }


def summarise(runs: list[dict[str, Any]]) -> None:
    """Add each run's epochs and seconds to reach its reference score.

    The reference is the best validation score of unpruned random search with the
    same seed (the seed also draws the validation rows, so scores of other seeds are
    not comparable); a run whose seed has no unpruned random run is held to the
    lowest of the dataset's references.
    """
    for dataset in {r["dataset"] for r in runs}:
        mine = [r for r in runs if r["dataset"] == dataset]
        plain = {
            r["seed"]: r
            for r in mine
            if r["strategy"] == "random" and r["pruner"] == "none"
        }
        fallback = min((r["best_validation"] for r in plain.values()), default=None)
        for run in mine:
            base = plain.get(run["seed"])
            reference = base["best_validation"] if base else fallback
            third = base["epochs"] / 3 if base else 0
            early = [p["best"] for p in run["curve"] if p["epochs"] <= third]
            run["best_within_third"] = max(early) if early else None
            run["reference"] = reference
            reached = [
                point
                for point in run["curve"]
                if reference is not None and point["best"] >= reference
            ]
            run["epochs_to_reference"] = reached[0]["epochs"] if reached else None
            run["seconds_to_reference"] = reached[0]["seconds"] if reached else None
            run["share_to_reference"] = (
                round(reached[0]["epochs"] / base["epochs"], 3)
                if reached and base
                else None
            )


def pruning_summary(payload: dict[str, Any], dataset: str) -> list[str]:
    """Per seed and pruner: the share of unpruned random search's epochs a pruned
    random search spent to reach unpruned random search's best validation score."""
    runs = [
        r
        for r in payload["runs"]
        if r["dataset"] == dataset and r["strategy"] == "random"
    ]
    plain = {r["seed"]: r for r in runs if r["pruner"] == "none"}
    pruned = [r for r in runs if r["pruner"] != "none" and r["seed"] in plain]
    if not pruned:
        return []
    lines = [
        f"### Pruning on {dataset}: epochs to reach unpruned random search's best",
        "",
        "| pruner | seed | reference (unpruned best) | unpruned epochs | "
        "pruned: epochs to reference | share | within 1/3 |",
        "|---|---|---|---|---|---|---|",
    ]
    passed: dict[str, list[bool]] = {}
    shares: dict[str, list[float]] = {}
    for r in sorted(pruned, key=lambda r: (r["pruner"], r["seed"])):
        base = plain[r["seed"]]
        share = r.get("share_to_reference")
        ok = share is not None and share <= 1 / 3
        passed.setdefault(r["pruner"], []).append(ok)
        shares.setdefault(r["pruner"], []).append(
            float("inf") if share is None else share
        )
        lines.append(
            f"| {r['pruner']} | {r['seed']} | {base['best_validation']:.4f} | "
            f"{base['epochs']} | {_dash(r.get('epochs_to_reference'))} | "
            f"{'-' if share is None else f'{share:.2f}'} | {'yes' if ok else 'no'} |"
        )
    lines.append("")
    for pruner, oks in sorted(passed.items()):
        lines.append(
            f"- {pruner}: reached the reference within one third of the epochs on "
            f"{sum(oks)} of {len(oks)} seeds{_share_summary(shares[pruner])}."
        )
    lines.append("")
    return lines


def _share_summary(shares: list[float]) -> str:
    """'; share of the epochs: median 0.24, mean 0.27' over the seeds (a seed that
    never reached its reference counts as infinite: no mean then)."""
    if len(shares) < 2:
        return ""
    ordered = sorted(shares)
    middle = len(ordered) // 2
    median = (
        ordered[middle]
        if len(ordered) % 2
        else (ordered[middle - 1] + ordered[middle]) / 2
    )
    text = "; share of the epochs over the seeds: median " + (
        "never" if median == float("inf") else f"{median:.2f}"
    )
    if all(share != float("inf") for share in shares):
        text += f", mean {sum(shares) / len(shares):.2f}"
    return text


def write_markdown(payload: dict[str, Any], path: Path) -> None:
    lines = [
        "# Local network search: strategies and pruning against compute",
        "",
        f"Machine: {payload['machine']}. Command: `{payload['command']}`.",
        "",
        *([payload["note"], ""] if payload.get("note") else []),
        "Validation = best validation ROC AUC of the search (its own split of the 80% "
        "training rows); held-out = ROC AUC of the best model on the 20% held out. "
        "Reference = best validation AUC of unpruned random search with the same "
        "seed (the seed also draws the validation rows); "
        "'to ref' = epochs (and training seconds) the run spent until its best "
        "validation AUC reached the reference ('-': never); 'within 1/3' = the best "
        "validation AUC the run had reached within one third of the epochs of unpruned "
        "random search (same seed).",
        "",
    ]
    for dataset in payload["datasets"]:
        runs = [r for r in payload["runs"] if r["dataset"] == dataset]
        plain = {
            (r["seed"]): r["epochs"]
            for r in runs
            if r["strategy"] == "random" and r["pruner"] == "none"
        }
        lines += [
            f"## {dataset}",
            "",
            "| strategy | pruner | seed | trials (pruned) | validation | held-out | "
            "epochs | epochs vs unpruned random | to ref: epochs | to ref: s | "
            "within 1/3 | wall s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in runs:
            share = r["epochs"] / plain[r["seed"]] if plain.get(r["seed"]) else None
            lines.append(
                f"| {r['strategy']} | {r['pruner']} | {r['seed']} | "
                f"{r['trials']} ({r['pruned_trials']}) | {r['best_validation']:.4f} | "
                f"{r['holdout_auc']:.4f} | {r['epochs']} | "
                f"{'-' if share is None else f'{share:.2f}'} | "
                f"{_dash(r['epochs_to_reference'])} | "
                f"{_dash(r['seconds_to_reference'])} | "
                f"{_score(r['best_within_third'])} | {r['seconds']} |"
            )
        lines.append("")
        lines += pruning_summary(payload, dataset)
    digits = payload.get("digits")
    if digits:
        lines += [
            "## digits (8x8 images, image space)",
            "",
            f"Held-out accuracy {digits['holdout_accuracy']:.4f} after "
            f"{digits['trials']} trials, {digits['epochs']} epochs, "
            f"{digits['seconds']} s.",
            "",
        ]
    lines += [
        "Plot: `nas.png` (one panel per dataset and seed: best validation AUC against "
        "epochs spent; the grey line is the seed's reference, the dotted line one "
        "third of unpruned random search's epochs).",
        "",
    ]
    path.write_text("\n".join(lines))


def plot(payload: dict[str, Any], path: Path) -> None:
    """One panel per dataset and seed: best validation AUC against epochs, with the
    seed's reference (grey) and one third of unpruned random search's epochs
    (dotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (dataset, seed)
        for dataset in payload["datasets"]
        for seed in payload["seeds"]
        if any(
            r["dataset"] == dataset and str(r["seed"]) == str(seed)
            for r in payload["runs"]
        )
    ]
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(5.2 * columns, 4.0 * rows), squeeze=False
    )
    palette = plt.get_cmap("tab10").colors  # type: ignore[attr-defined]
    styles = {"none": "-", "asha": "--", "median": ":", "hyperband": "-."}
    for axis, (dataset, seed) in zip(axes.flat, panels, strict=False):
        runs = [
            r
            for r in payload["runs"]
            if r["dataset"] == dataset and str(r["seed"]) == str(seed)
        ]
        # one strategy: colour by pruner, else by strategy
        by_pruner = len({r["strategy"] for r in runs}) == 1
        keys = sorted({r["pruner"] if by_pruner else r["strategy"] for r in runs})
        colours = dict(zip(keys, palette, strict=False))
        for run in runs:
            axis.step(
                [p["epochs"] for p in run["curve"]],
                [p["best"] for p in run["curve"]],
                where="post",
                color=colours[run["pruner"] if by_pruner else run["strategy"]],
                linestyle=styles.get(run["pruner"], "-"),
                label=f"{run['strategy']} / {run['pruner']}",
            )
        plain = next(
            (r for r in runs if r["strategy"] == "random" and r["pruner"] == "none"),
            None,
        )
        if plain is not None:
            axis.axhline(plain["best_validation"], color="grey", linewidth=0.8)
            axis.axvline(
                plain["epochs"] / 3, color="grey", linestyle=":", linewidth=0.8
            )
        axis.set_title(f"{dataset}, seed {seed}")
        axis.set_xlabel("training epochs spent")
        axis.set_ylabel("best validation ROC AUC")
        axis.legend(fontsize=6)
    for axis in list(axes.flat)[len(panels) :]:
        axis.set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets", nargs="*", default=["credit-g", "blood-transfusion", "australian"]
    )
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES)
    parser.add_argument("--pruners", nargs="+", default=["none", "asha"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--max-trials", type=int, default=20)
    parser.add_argument("--max-epochs", type=int, default=40)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=600.0)
    parser.add_argument("--adult-strategies", nargs="*", default=["random"])
    parser.add_argument(
        "--adult-pruners", nargs="+", default=["none", "asha", "median"]
    )
    parser.add_argument("--adult-max-trials", type=int, default=8)
    parser.add_argument("--pruned-trials-factor", type=int, default=3)
    parser.add_argument("--digits-trials", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--note", default="", help="a line on the run's conditions for the report"
    )
    parser.add_argument(
        "--replot",
        action="store_true",
        help="only redraw nas.md and nas.png from an existing nas.json",
    )
    args = parser.parse_args(argv)
    if args.replot:
        payload = json.loads((args.out / "nas.json").read_text())
        summarise(payload["runs"])
        if args.note:
            payload["note"] = args.note
            (args.out / "nas.json").write_text(json.dumps(payload, indent=1))
        write_markdown(payload, args.out / "nas.md")
        plot(payload, args.out / "nas.png")
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    def trial_limit(base: int, pruner: str) -> int:
        return base if pruner == "none" else base * args.pruned_trials_factor

    plan: list[tuple[str, str, str, int, int]] = [
        (d, s, p, seed, trial_limit(args.max_trials, p))
        for d in args.datasets
        for s in args.strategies
        for p in args.pruners
        for seed in args.seeds
    ]
    plan += [
        ("adult", s, p, seed, trial_limit(args.adult_max_trials, p))
        for s in args.adult_strategies
        for p in args.adult_pruners
        for seed in args.seeds
    ]
    if not DATASETS.is_dir():
        print(f"shared datasets folder absent: {DATASETS}", file=sys.stderr)
        return 1

    runs, loaded = [], {}
    started = time.monotonic()
    for dataset, strategy, pruner, seed, trials in plan:
        if dataset not in loaded:
            loaded[dataset] = load(dataset)
        run = run_one(
            loaded[dataset],
            strategy=strategy,
            pruner=pruner,
            seed=seed,
            max_trials=trials,
            max_epochs=args.max_epochs,
            patience=args.patience,
            budget_s=args.budget_s,
        )
        run["dataset"] = dataset
        runs.append(run)
        print(
            f"{dataset:18} {strategy:9} {pruner:9} seed {seed}: validation "
            f"{run['best_validation']:.4f} held-out {run['holdout_auc']:.4f} "
            f"{run['epochs']:4d} epochs {run['seconds']:6.1f} s "
            f"({time.monotonic() - started:.0f} s so far)",
            flush=True,
        )
    summarise(runs)
    digits = run_digits(args.digits_trials, 300.0) if args.digits_trials else None
    if digits:
        print(f"digits: held-out accuracy {digits['holdout_accuracy']:.4f}", flush=True)

    payload = {
        "machine": f"{platform.platform()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        "command": "python benchmarks/nas.py " + " ".join(argv or sys.argv[1:]),
        "datasets": list(dict.fromkeys(r["dataset"] for r in runs)),
        "seeds": args.seeds,
        "settings": {
            "max_trials": args.max_trials,
            "adult_max_trials": args.adult_max_trials,
            "max_epochs": args.max_epochs,
            "patience": args.patience,
        },
        "runs": runs,
        "digits": digits,
        "total_s": round(time.monotonic() - started, 1),
        "note": args.note,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "nas.json").write_text(json.dumps(payload, indent=1))
    write_markdown(payload, args.out / "nas.md")
    plot(payload, args.out / "nas.png")
    print(f"wrote {args.out / 'nas.md'} in {payload['total_s']} s")
    return 0


def _safe(name: str) -> str:
    safe = re.sub(r"[^0-9A-Za-z]+", "_", str(name)).strip("_")
    return safe if safe and safe[0].isalpha() else f"c_{safe}"


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)


if __name__ == "__main__":
    raise SystemExit(main())
