"""The pure parts of benchmarks/quality.py: planning, resuming, splits and the report."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pytest

QUALITY_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "quality.py"


def _load_quality() -> ModuleType:
    spec = importlib.util.spec_from_file_location("benchmark_quality", QUALITY_PATH)
    assert spec is not None and spec.loader is not None, QUALITY_PATH
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


quality = _load_quality()


def _record(
    dataset: str,
    backend: str,
    value: float | None,
    *,
    seed: int = 0,
    budget_s: int = 60,
    task: str = "binary",
    error: str | None = None,
) -> dict[str, Any]:
    metric = quality.PRIMARY_METRIC[task]
    return {
        "dataset": dataset,
        "task": task,
        "seed": seed,
        "budget_s": budget_s,
        "backend": backend,
        "metrics": {} if value is None else {metric: value},
        "wall_s": 61.0,
        "peak_mib": 900,
        "commit": "abc1234",
        "error": error,
    }


# --- planning and resuming ---------------------------------------------------------


def test_seeds_for_small_and_large_datasets() -> None:
    # Under 5,000 rows: five seeds; 5,000 rows and more: one.
    assert quality.seeds_for(4999, small_seeds=5, large_seeds=1) == [0, 1, 2, 3, 4]
    assert quality.seeds_for(5000, small_seeds=5, large_seeds=1) == [0]
    # A --seeds filter keeps only the seeds it names.
    assert quality.seeds_for(748, small_seeds=5, large_seeds=1, only=[1, 7]) == [1]


def test_report_seeds_count_every_dataset_against_its_full_plan(tmp_path: Path) -> None:
    # kc1 on disk with 30 rows, adult already read with 5,000: the report expects five
    # seeds of kc1 and one of adult, whatever a run's own filters; absent files are left out.
    (tmp_path / "kc1.csv").write_text("a,defects\n" + "1,true\n" * 30)
    adult = pd.DataFrame({"class": ["<=50K"] * 5000})

    expected = quality.report_seeds(
        tmp_path, small_seeds=5, large_seeds=1, loaded={"adult": adult}
    )

    assert expected == {"adult": [0], "kc1": [0, 1, 2, 3, 4]}


def test_plan_cells_orders_first_seed_of_every_budget_before_extra_seeds() -> None:
    plan = quality.plan_cells(
        {"credit-g": [0, 1], "adult": [0]},
        budgets=[60, 300],
        backends=["local", "h2o"],
    )

    order = [(c.seed, c.budget_s, c.dataset, c.backend) for c in plan]
    assert order == [
        (0, 60, "credit-g", "local"),
        (0, 60, "credit-g", "h2o"),
        (0, 60, "adult", "local"),
        (0, 60, "adult", "h2o"),
        (0, 300, "credit-g", "local"),
        (0, 300, "credit-g", "h2o"),
        (0, 300, "adult", "local"),
        (0, 300, "adult", "h2o"),
        (1, 60, "credit-g", "local"),
        (1, 60, "credit-g", "h2o"),
        (1, 300, "credit-g", "local"),
        (1, 300, "credit-g", "h2o"),
    ]
    assert plan[0].task == "binary"


def test_pending_cells_with_a_commit_runs_again_the_cells_made_on_another() -> None:
    plan = quality.plan_cells({"kc1": [0, 1]}, budgets=[60], backends=["local"])
    old = {**_record("kc1", "local", 0.80, seed=0), "commit": "fa15350"}
    new = {**_record("kc1", "local", 0.82, seed=1), "commit": "7ad8770"}

    stale = quality.pending_cells(plan, [old, new], current_commit="7ad8770")
    kept = quality.pending_cells(plan, [old, new])

    assert [c.key for c in stale] == [("kc1", "binary", 0, 60, "local")]
    assert kept == []


def test_pending_cells_skips_recorded_cells_and_retries_failed_on_request() -> None:
    plan = quality.plan_cells({"kc1": [0, 1]}, budgets=[60], backends=["local", "h2o"])
    records = [
        _record("kc1", "local", 0.80, seed=0),
        _record("kc1", "h2o", None, seed=0, error="RuntimeError: no JVM"),
        _record("kc1", "local", 0.81, seed=0, budget_s=300),  # another budget
    ]

    pending = quality.pending_cells(plan, records)
    retried = quality.pending_cells(plan, records, retry_failed=True)

    # A failed cell is recorded and so skipped, unless failures are retried.
    assert [c.key for c in pending] == [
        ("kc1", "binary", 1, 60, "local"),
        ("kc1", "binary", 1, 60, "h2o"),
    ]
    assert [c.key for c in retried] == [
        ("kc1", "binary", 0, 60, "h2o"),
        ("kc1", "binary", 1, 60, "local"),
        ("kc1", "binary", 1, 60, "h2o"),
    ]


def test_run_plan_starts_no_cell_after_the_time_limit() -> None:
    plan = quality.plan_cells({"kc1": [0, 1, 2]}, budgets=[60], backends=["local"])
    now = [0.0]
    seen: list[dict[str, Any]] = []

    def execute(cell: Any) -> list[dict[str, Any]]:
        now[0] += 100.0  # each cell takes 100 s
        return [_record(cell.dataset, cell.backend, 0.8, seed=cell.seed)]

    ran = quality.run_plan(
        plan, execute=execute, on_record=seen.append, max_s=150.0, clock=lambda: now[0]
    )

    # Cell 1 starts at 0 s, cell 2 at 100 s (under 150), cell 3 would start at 200 s.
    assert ran == 2
    assert [r["seed"] for r in seen] == [0, 1]


def test_read_records_skips_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "quality.jsonl"
    quality.append_record(path, _record("kc1", "local", 0.8))
    with path.open("a") as handle:
        handle.write('{"dataset": "kc1", "ta')  # a run killed mid-write

    records = quality.read_records(path)

    assert [(r["dataset"], r["metrics"]) for r in records] == [
        ("kc1", {"roc_auc": 0.8})
    ]


# --- splits ------------------------------------------------------------------------


def test_split_indices_is_stratified_disjoint_and_seeded() -> None:
    labels = pd.Series(["yes"] * 20 + ["no"] * 80)

    train, test = quality.split_indices(labels, "binary", 0)
    again_train, again_test = quality.split_indices(labels, "binary", 0)
    _, other_test = quality.split_indices(labels, "binary", 1)

    assert (len(train), len(test)) == (80, 20)
    assert set(train).isdisjoint(test)
    # Stratified: the test fifth holds exactly a fifth of each class.
    assert (labels.iloc[test] == "yes").sum() == 4
    assert np.array_equal(test, again_test) and np.array_equal(train, again_train)
    assert not np.array_equal(test, other_test)


def test_split_indices_stratifies_regression_on_quantile_bins() -> None:
    labels = pd.Series([str(v) for v in range(100)])

    _, test = quality.split_indices(labels, "regression", 0)

    # Ten bins of ten values each: two test rows fall in every bin.
    bins = np.asarray(test) // 10
    assert np.bincount(bins, minlength=10).tolist() == [2] * 10


def test_write_split_repeats_source_text_verbatim(tmp_path: Path) -> None:
    source = tmp_path / "tiny.csv"
    rows = [f"{i},{'' if i % 3 else 'NA'},{'a' if i < 5 else 'b'}" for i in range(10)]
    source.write_text("x,note,class\n" + "\n".join(rows) + "\n")
    frame = quality.read_dataset_text(source)
    info = quality.DatasetInfo("tiny", "class", "binary")

    files = quality.write_split(frame, info, 0, tmp_path / "split")

    written = (files.train.read_text() + files.test.read_text()).splitlines()
    # Empty fields stay empty and the text "NA" stays "NA"; every row lands once.
    assert sorted(line for line in written if line != "x,note,class") == sorted(rows)
    assert (files.n_train, files.n_test) == (8, 2)


# --- predictions and memory --------------------------------------------------------


def test_align_probabilities_maps_text_labels_to_schema_classes() -> None:
    proba = np.array([[0.9, 0.1], [0.3, 0.7]])

    aligned = quality.align_probabilities(proba, ["true", "false"], [False, True])

    # FLAML reads kc1's labels as text; the broker's schema holds booleans.
    assert aligned.tolist() == [[0.1, 0.9], [0.7, 0.3]]


def test_align_probabilities_names_a_missing_class() -> None:
    with pytest.raises(ValueError, match=r"no probability for class\(es\) \[9\]"):
        quality.align_probabilities(np.ones((1, 2)), ["3", "4"], [3, 4, 9])


def test_tree_rss_bytes_sums_descendants_only() -> None:
    table = {
        10: (1, 100),
        11: (10, 20),  # child
        12: (11, 3),  # grandchild
        13: (1, 5000),  # another tree
    }

    assert quality.tree_rss_bytes(table, 10) == 123
    assert quality.tree_rss_bytes(table, 99) == 0


# --- the report ----------------------------------------------------------------------


def test_aggregate_means_seeds_and_divides_by_h2o_on_shared_seeds() -> None:
    records = [
        _record("credit-g", "local", 0.70, seed=0),
        _record("credit-g", "local", 0.80, seed=1),
        _record("credit-g", "h2o", 0.75, seed=0),
        _record("credit-g", "h2o", None, seed=1, error="ProviderError: JVM died"),
    ]

    rows = quality.aggregate(records, {"credit-g": [0, 1, 2]})
    local = next(r for r in rows if r["backend"] == "local")
    h2o = next(r for r in rows if r["backend"] == "h2o")

    assert local["means"]["roc_auc"] == pytest.approx(0.75)
    assert (local["seeds_done"], local["seeds_expected"]) == (2, 3)
    # Only seed 0 is shared: 0.70 / 0.75.
    assert local["ratio_to_h2o"] == pytest.approx(0.70 / 0.75)
    assert (h2o["seeds_done"], h2o["failed"]) == (1, 1)
    assert h2o["errors"] == ["ProviderError: JVM died"]


def test_aggregate_marks_lower_is_better_for_regression() -> None:
    records = [
        _record("abalone", "local", 2.2, task="regression"),
        _record("abalone", "h2o", 2.0, task="regression"),
    ]

    rows = quality.aggregate(records, {})
    local = next(r for r in rows if r["backend"] == "local")

    assert (local["metric"], local["lower_is_better"]) == ("rmse", True)
    assert local["ratio_to_h2o"] == pytest.approx(1.1)


def test_acceptance_counts_datasets_within_the_margins() -> None:
    records = [
        # kc1: local 0.004 behind H2O (level); networks 0.02 behind (not level).
        _record("kc1", "local", 0.796),
        _record("kc1", "h2o", 0.800),
        _record("kc1", quality.NETWORKS, 0.780),
        _record("kc1", "flaml", 0.790),
        # credit-g: local 0.006 behind (not level); networks 0.009 behind (level).
        _record("credit-g", "local", 0.774),
        _record("credit-g", "h2o", 0.780),
        _record("credit-g", quality.NETWORKS, 0.771),
        _record("credit-g", "flaml", 0.770),
    ]

    (block,) = quality.acceptance(records, [60])

    assert block["local_level_with_h2o"] == ["kc1"]
    assert block["networks_level_with_h2o"] == ["credit-g"]
    assert block["local_mean_auc"] == pytest.approx((0.774 + 0.796) / 2)
    assert block["flaml_mean_auc"] == pytest.approx((0.770 + 0.790) / 2)
    assert block["flaml_compared_datasets"] == 2
    assert "adult" in block["missing"]["h2o"] and "kc1" not in block["missing"]["h2o"]


def test_render_markdown_shows_summary_and_incomplete_seeds() -> None:
    records = [
        _record("kc1", "local", 0.796),
        _record("kc1", "h2o", 0.800),
    ]
    payload = {
        "machine": {
            "platform": "Linux",
            "python": "3.11",
            "cores": 2,
            "memory_gib": 23.0,
            "cpu": "Test CPU",
        },
        "versions": {"torch": "2.13.0", "flaml": None},
        "command": "benchmarks/quality.py --datasets kc1",
        "generated_at": "2026-01-01T00:00:00+00:00",
        "commits": ["abc1234"],
        "cells": 2,
        "summary": quality.acceptance(records, [60]),
        "rows": quality.aggregate(records, {"kc1": [0, 1, 2, 3, 4]}),
    }

    text = quality.render_markdown(payload)

    assert "- local within 0.005 AUC of H2O or ahead: 1/7 (kc1)" in text
    assert "| kc1 | 60 | local | 1/5 (incomplete) | 0.7960 | 0.995 |" in text
    assert "flaml absent" in text


def test_main_exits_1_when_the_datasets_folder_is_absent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = quality.main(
        ["--datasets-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path)]
    )

    assert code == 1
    assert "shared datasets folder is absent" in capsys.readouterr().err
    assert not (tmp_path / "quality.jsonl").exists()
