"""Knowledge transfer: earlier searches' best configurations start similar new ones."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _local_settings import SMALL

from broker.local.knowledge import DatasetMeta, KnowledgeBase, default_path
from broker.local.search import SearchOptions, run_search
from broker.local.space import Categorical, SearchSpace


def _frame(n: int, seed: int = 0, positive_share: float = 0.5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    threshold = np.quantile(a, 1 - positive_share)
    return pd.DataFrame(
        {
            "a": a,
            "b": rng.normal(size=n),
            "color": rng.choice(["red", "blue"], size=n),
            "label": np.where(a > threshold, "yes", "no"),
        }
    )


def _meta(frame: pd.DataFrame, task: str = "binary") -> DatasetMeta:
    return DatasetMeta.describe(
        frame, target="label", task=task, numeric=["a", "b"], categorical=["color"]
    )


def _space() -> SearchSpace:
    return SearchSpace(
        params={
            "width": Categorical([4, 8, 16]),
            "learning_rate": Categorical([1e-3, 1e-2, 3e-2]),
        },
        fixed=SMALL,
        default={"width": 4, "learning_rate": 1e-3},
    )


def _search(  # type: ignore[no-untyped-def]
    frame: pd.DataFrame, knowledge: KnowledgeBase, seed: int = 0
):
    return run_search(
        frame,
        target="label",
        task="binary",
        numeric=["a", "b"],
        categorical=["color"],
        metric="roc_auc",
        budget_s=60,
        classes=["no", "yes"],
        positive_class="yes",
        space=_space(),
        options=SearchOptions(max_trials=3, max_epochs=2, seed=seed),
        knowledge=knowledge,
    )


def test_meta_features_describe_rows_columns_kinds_and_balance() -> None:
    meta = _meta(_frame(100, positive_share=0.2))

    assert meta == DatasetMeta(
        task="binary",
        rows=100,
        columns=3,
        numeric_columns=2,
        categorical_columns=1,
        minority_share=0.2,
    )


def test_meta_distance_grows_with_size_and_balance_and_splits_tasks() -> None:
    base = _meta(_frame(1000))
    twice = _meta(_frame(2000))
    skewed = _meta(_frame(1000, positive_share=0.1))

    assert base.distance(base) == 0.0
    assert base.distance(twice) == pytest.approx(0.5 * np.log(2001 / 1001))
    assert base.distance(skewed) == pytest.approx(2.0 * 0.4)
    assert base.distance(_meta(_frame(1000), task="multiclass")) == float("inf")


def test_knowledge_suggests_the_nearest_similar_search_best_first(
    tmp_path: Path,
) -> None:
    knowledge = KnowledgeBase(tmp_path / "k.json")
    meta = _meta(_frame(500))
    knowledge.record(
        meta,
        space_kind="tabular",
        metric="roc_auc",
        best=[({"width": 16}, 0.93), ({"width": 8}, 0.91)],
        strategy="tpe",
    )
    knowledge.record(
        _meta(_frame(500, positive_share=0.45)),
        space_kind="tabular",
        metric="roc_auc",
        best=[({"width": 4}, 0.99)],
        strategy="random",
    )

    found = knowledge.suggest(meta, space_kind="tabular", metric="roc_auc")

    assert found is not None
    assert found.configs == [{"width": 16}, {"width": 8}]
    assert found.distance == 0.0
    assert "500 rows, 3 columns (2 numeric), binary" in found.note
    assert knowledge.suggest(meta, space_kind="image", metric="roc_auc") is None
    assert knowledge.suggest(meta, space_kind="tabular", metric="log_loss") is None
    far = _meta(_frame(50_000, positive_share=0.05))
    assert knowledge.suggest(far, space_kind="tabular", metric="roc_auc") is None


def test_knowledge_file_follows_automl_broker_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOML_BROKER_HOME", str(tmp_path / "home"))

    assert default_path() == tmp_path / "home" / "local-searches.json"


def test_search_starts_from_the_best_configuration_of_a_similar_search(
    tmp_path: Path,
) -> None:
    knowledge = KnowledgeBase(tmp_path / "local-searches.json")

    first = _search(_frame(120, seed=0), knowledge)
    earlier_best = first.best.config
    second = _search(_frame(130, seed=1), knowledge, seed=1)

    stored = json.loads((tmp_path / "local-searches.json").read_text())
    assert len(stored["searches"]) == 2
    assert stored["searches"][0]["best"][0]["config"] == earlier_best
    # the first search had nothing to reuse; the second tries the earlier best first
    assert first.warm_started == 0
    assert not any("earlier search" in n for n in first.notes)
    assert second.warm_started >= 1
    assert second.trials[0].config == earlier_best
    assert any(n.startswith("started from") and "120 rows" in n for n in second.notes)


def test_search_without_knowledge_writes_nothing(tmp_path: Path) -> None:
    options = SearchOptions(max_trials=1, max_epochs=1, warm_start=False)
    knowledge = KnowledgeBase(tmp_path / "k.json")

    run_search(
        _frame(60),
        target="label",
        task="binary",
        numeric=["a", "b"],
        categorical=["color"],
        metric="roc_auc",
        budget_s=60,
        space=_space(),
        options=options,
        knowledge=knowledge,
    )

    assert not (tmp_path / "k.json").exists()


def _record_many(path: str, worker: int, count: int) -> None:
    knowledge = KnowledgeBase(Path(path))
    meta = DatasetMeta("binary", 100 + worker, 3, 2, 1, 0.5)
    for index in range(count):
        knowledge.record(
            meta,
            space_kind="tabular",
            metric="roc_auc",
            best=[({"width": worker, "index": index}, 0.9)],
            strategy="random",
        )


def test_knowledge_searches_ending_together_in_processes_lose_no_record(
    tmp_path: Path,
) -> None:
    path = tmp_path / "k.json"
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_record_many, args=(str(path), worker, 10))
        for worker in range(4)
    ]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=60)

    assert [p.exitcode for p in workers] == [0, 0, 0, 0]
    kept = {
        (r["best"][0]["config"]["width"], r["best"][0]["config"]["index"])
        for r in KnowledgeBase(path).records()
    }
    assert kept == {(w, i) for w in range(4) for i in range(10)}


def test_knowledge_lock_held_too_long_names_the_lock_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import filelock

    from broker.errors import ConfigurationError
    from broker.local import knowledge as knowledge_module

    path = tmp_path / "k.json"
    monkeypatch.setattr(knowledge_module, "LOCK_TIMEOUT_S", 0.1)
    held = filelock.FileLock(str(path) + ".lock")

    with held, pytest.raises(ConfigurationError, match=r"k\.json\.lock"):
        _record_many(str(path), worker=0, count=1)

    assert KnowledgeBase(path).records() == []


@pytest.mark.parametrize(
    ("content", "found"),
    [
        ("null", "null"),
        ("[]", "list"),
        ('"searches"', "str"),
        ('{"version": 1}', "a mapping whose 'searches' is NoneType"),
        ('{"searches": {"a": 1}}', "a mapping whose 'searches' is dict"),
        ("{not json", "Expecting property name"),
    ],
)
def test_knowledge_wrongly_shaped_file_is_read_as_empty_and_rewritten(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str, found: str
) -> None:
    path = tmp_path / "local-searches.json"
    path.write_text(content)
    knowledge = KnowledgeBase(path)
    meta = _meta(_frame(200))

    with caplog.at_level("WARNING", logger="broker.local.knowledge"):
        suggested = knowledge.suggest(meta, space_kind="tabular", metric="roc_auc")
        knowledge.record(
            meta,
            space_kind="tabular",
            metric="roc_auc",
            best=[({"width": 8}, 0.8)],
            strategy="tpe",
        )

    assert suggested is None
    assert found in caplog.text and "starting afresh" in caplog.text
    # the search's result replaced the wrongly shaped content
    assert [r["best"] for r in json.loads(path.read_text())["searches"]] == [
        [{"config": {"width": 8}, "score": 0.8}]
    ]


def test_knowledge_malformed_records_are_skipped_one_by_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "local-searches.json"
    meta = _meta(_frame(200))
    good = {
        "meta": {**meta.__dict__},
        "space": "tabular",
        "metric": "roc_auc",
        "strategy": "tpe",
        "best": [{"config": {"width": 16}, "score": 0.9}],
        "at": "2024-07-01T00:00:00+00:00",
    }
    malformed = [
        None,
        7,
        {"space": "tabular", "metric": "roc_auc"},  # no meta, no best
        {**good, "meta": {"task": "binary"}},  # meta missing keys
        {**good, "best": [{"config": {"width": 4}}]},  # an entry without a score
        {**good, "best": [{"config": "width=4", "score": 0.99}]},
        {**good, "best": "many"},
    ]
    path.write_text(json.dumps({"version": 1, "searches": [*malformed, good]}))
    knowledge = KnowledgeBase(path)

    with caplog.at_level("WARNING", logger="broker.local.knowledge"):
        records = knowledge.records()
        found = knowledge.suggest(meta, space_kind="tabular", metric="roc_auc")

    assert records == [good]
    assert "skipped 7 malformed record(s) of 8" in caplog.text
    assert found is not None and found.configs == [{"width": 16}]
