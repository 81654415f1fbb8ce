"""The H2O backend, against real H2O nodes on this machine (loopback only).

One module-scoped run trains on 800 rows of credit-g in an embedded node and records
everything the later tests check, so the JVM starts once for them. A second node, started
here, stands for a cluster someone else runs.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from broker.errors import (
    ConfigurationError,
    NoModelTrainedError,
    PriceUnavailableError,
    ProviderJobFailedError,
    ProviderUnavailableError,
)
from broker.models import load_saved_model
from broker.providers.base import Availability, ProviderJob
from broker.providers.h2o import (
    EmbeddedCluster,
    H2OBinaryModel,
    H2OMojoModel,
    H2OProvider,
    automl_runtime_s,
    automl_settings,
    find_java,
    h2o_metrics_for,
    leaderboard_entries,
    load_model,
    probabilities,
)
from broker.schema import Column, ColumnKind, Schema
from broker.spec import JobSpec, Task
from broker.states import JobState

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
H2O_READY = find_java() is not None

needs_h2o = pytest.mark.skipif(not H2O_READY, reason="no Java runtime for H2O")


# --- helpers -----------------------------------------------------------------------------


def make_schema(frame: pd.DataFrame, target: str) -> tuple[Schema, pd.DataFrame]:
    """A schema with safe names, and the frame renamed to them (what intake hands over)."""
    columns = []
    renamed = {}
    for position, name in enumerate(frame.columns):
        safe = re.sub(r"[^A-Za-z0-9_]", "_", name)
        safe = safe if safe[:1].isalpha() else f"c{position}_{safe}"
        renamed[name] = safe
        if name == target:
            kind = ColumnKind.TARGET
        elif pd.api.types.is_numeric_dtype(frame[name]):
            kind = ColumnKind.NUMERIC
        else:
            kind = ColumnKind.CATEGORICAL
        columns.append(Column(name=name, safe_name=safe, kind=kind))
    classes = tuple(sorted(frame[target].unique()))
    task = Task.BINARY if len(classes) == 2 else Task.MULTICLASS
    schema = Schema(
        columns=tuple(columns),
        target=target,
        target_safe_name=renamed[target],
        task=task,
        classes=classes,
        positive_class=classes[-1],
        n_rows=len(frame),
    )
    return schema, frame.rename(columns=renamed)


def stratified_split(
    labels: pd.Series, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    test: list[int] = []
    for value in sorted(labels.unique()):
        members = np.flatnonzero(labels.to_numpy() == value)
        rng.shuffle(members)
        test.extend(members[: round(len(members) * test_fraction)])
    test_index = np.sort(np.asarray(test))
    train_index = np.setdiff1d(np.arange(len(labels)), test_index)
    return train_index, test_index


def make_job(
    frame: pd.DataFrame,
    schema: Schema,
    run_dir: Path,
    *,
    runtime_s: float = 120,
    options: dict[str, Any] | None = None,
    job_id: str = "job-1",
    metric: str | None = None,
) -> ProviderJob:
    spec = JobSpec(data=frame, target=schema.target, seed=1)
    if metric is not None:
        spec = spec.model_copy(update={"metric": metric})
    return ProviderJob(
        job_id=job_id,
        idempotency_key=f"key-{job_id}",
        spec=spec,
        schema=schema,
        train=frame,
        machine=None,
        region=None,
        runtime_limit_s=runtime_s,
        run_dir=run_dir,
        options=options or {},
    )


def roc_auc(y_positive: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUC, ties counted half."""
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    sorted_scores = score[order]
    i = 0
    while i < len(score):
        j = i
        while j + 1 < len(score) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    n_pos = int(y_positive.sum())
    n_neg = len(y_positive) - n_pos
    return float((ranks[y_positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def our_java_processes(marker: str = "automl-broker-h2o") -> list[str]:
    """Command lines of live (not zombie) JVMs whose command line holds `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            status = (entry / "stat").read_text().split(") ")[1][:1]
        except OSError:
            continue
        if marker in command and "java" in command and status != "Z":
            found.append(f"{entry.name}: {command[:120]}")
    return found


def our_temp_folders() -> set[str]:
    import tempfile

    return {p.name for p in Path(tempfile.gettempdir()).glob("automl-broker-h2o-*")}


def wait_terminal(
    provider: H2OProvider, ref: Any, timeout_s: float = 120
) -> list[JobState]:
    """Poll until a terminal state; the distinct states seen, in order."""
    seen: list[JobState] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = provider.poll(ref).state
        if not seen or seen[-1] != state:
            seen.append(state)
        if state.terminal:
            return seen
        time.sleep(0.3)
    raise AssertionError(f"no terminal state in {timeout_s} s; saw {seen}")


def rest(url: str, path: str) -> Any:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{url}{path}", timeout=10) as reply:
        return json.load(reply)


def keys_on(url: str) -> tuple[set[str], set[str]]:
    frames = {f["frame_id"]["name"] for f in rest(url, "/3/Frames")["frames"]}
    models = {m["model_id"]["name"] for m in rest(url, "/3/Models")["models"]}
    return frames, models


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("H2O_URL", "H2O_JAVA_HOME", "http_proxy", "https_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DO_NOT_TRACK", "1")


@pytest.fixture(scope="module")
def credit() -> tuple[Schema, pd.DataFrame]:
    path = DATASETS / "credit-g.csv"
    if not path.exists():
        pytest.skip(f"shared datasets folder absent: {path}")
    return make_schema(pd.read_csv(path), "class")


# --- no JVM ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metric", "task", "expected"),
    [
        ("roc_auc", Task.BINARY, ("AUC", "AUC", None)),
        ("log_loss", Task.MULTICLASS, ("logloss", "logloss", None)),
        ("rmse", Task.REGRESSION, ("RMSE", "RMSE", None)),
        ("mae", Task.REGRESSION, ("MAE", "MAE", None)),
    ],
)
def test_h2o_metrics_for_maps_direct_metrics(
    metric: str, task: Task, expected: tuple[str, str, None]
) -> None:
    assert h2o_metrics_for(metric, task) == expected


def test_h2o_metrics_for_accuracy_ranks_by_auc_and_says_so() -> None:
    sort, stop, note = h2o_metrics_for("accuracy", Task.BINARY)
    # binary accuracy: AUC to rank, misclassification to stop, and a note saying so
    assert (sort, stop) == ("AUC", "misclassification")
    assert note is not None and "cannot rank by accuracy" in note
    assert h2o_metrics_for("accuracy", Task.MULTICLASS)[0] == "logloss"


def test_h2o_metrics_for_classification_metric_on_regression_raises() -> None:
    with pytest.raises(
        ConfigurationError, match="'roc_auc' needs a classification task"
    ):
        h2o_metrics_for("roc_auc", Task.REGRESSION)


def test_automl_settings_maps_options(
    credit: tuple[Schema, pd.DataFrame], tmp_path: Path
) -> None:
    schema, frame = credit
    job = make_job(
        frame,
        schema,
        tmp_path,
        options={
            "max_models": 4,
            "exclude_algos": ["deeplearning", "DRF"],
            "nfolds": 3,
        },
    )

    settings = automl_settings(job)

    assert settings.sort_metric == "AUC"
    assert settings.max_models == 4
    assert settings.exclude_algos == ("DeepLearning", "DRF")
    assert (settings.nfolds, settings.seed) == (3, 1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_model": 3}, r"unknown H2O option\(s\) \['max_model'\]"),
        ({"nfolds": 1}, "nfolds=1 is not allowed"),
        ({"max_models": 0}, "max_models must be a whole number >= 1, got 0"),
        ({"exclude_algos": ["SVM"]}, r"unknown algorithm\(s\) \['SVM'\]"),
    ],
)
def test_automl_settings_bad_option_raises(
    credit: tuple[Schema, pd.DataFrame],
    tmp_path: Path,
    options: dict[str, Any],
    message: str,
) -> None:
    schema, frame = credit
    with pytest.raises(ConfigurationError, match=message):
        automl_settings(make_job(frame, schema, tmp_path, options=options))


def test_automl_runtime_s_leaves_room_for_startup_and_export() -> None:
    # 120 s budget, 8 s start-up, reserve max(10, 12) = 12 s -> 100 s of AutoML
    assert automl_runtime_s(120, 8) == 100
    # 30 s budget, 5 s start-up, reserve 10 s -> 15 s
    assert automl_runtime_s(30, 5) == 15


def test_automl_runtime_s_too_small_raises_with_suggestion() -> None:
    # 1.5 x 10 s of start-up + 10 s of AutoML + a 10 s reserve = 35 s
    with pytest.raises(NoModelTrainedError, match="at least 35") as caught:
        automl_runtime_s(20, 10)
    assert caught.value.suggested_min_budget_s == 35


def test_automl_runtime_s_suggestion_is_enough_for_a_slower_start() -> None:
    # 30 s with 11 s of start-up leaves 9 s; the suggestion rounds 36.5 s up to 40 s
    with pytest.raises(NoModelTrainedError, match="at least 40") as caught:
        automl_runtime_s(30, 11)
    suggested = caught.value.suggested_min_budget_s

    assert suggested == 40
    assert automl_runtime_s(suggested, 11 * 1.4) >= 10


def test_automl_runtime_s_suggestion_counts_the_reserve_of_a_large_budget() -> None:
    # 1.5 x 100 s + 10 s = 160 s is 90% of the budget: 177.8 s, rounded up to 180 s
    with pytest.raises(NoModelTrainedError, match="at least 180"):
        automl_runtime_s(110, 100)

    assert automl_runtime_s(180, 100) >= 10


def test_leaderboard_entries_converts_metrics_and_times() -> None:
    header = [
        "model_id", "auc", "logloss", "aucpr", "mean_per_class_error", "rmse", "mse",
        "training_time_ms", "predict_time_per_row_ms", "algo",
    ]  # fmt: skip
    rows = [
        ["GBM_1_AutoML_1", "0.91", "0.31", "0.88", "0.17", "0.3", "0.09", "1250", "0.02",
         "GBM"],
        ["GLM_1_AutoML_1", "0.85", "0.42", "", "0.2", "0.35", "0.1225", "300", "0.004",
         "GLM"],
    ]  # fmt: skip

    entries = leaderboard_entries(header, rows)

    assert [e.model_id for e in entries] == ["GBM_1_AutoML_1", "GLM_1_AutoML_1"]
    assert entries[0].algorithm == "GBM"
    assert entries[0].validation_metrics["roc_auc"] == 0.91
    assert entries[0].validation_metrics["log_loss"] == 0.31
    assert entries[0].training_time_s == 1.25
    assert entries[0].predict_time_per_row_s == pytest.approx(0.00002)
    # an empty cell is a missing metric, not zero
    assert entries[1].validation_metrics["pr_auc"] is None


def test_probabilities_orders_columns_by_job_classes() -> None:
    header = ["predict", "good", "bad"]
    rows = [["good", "0.75", "0.25"], ["bad", "0.1", "0.9"]]

    # H2O's domain order is good, bad; the job's classes are bad, good
    array = probabilities(header, rows, ["good", "bad"], ["bad", "good"])

    np.testing.assert_array_equal(array, [[0.25, 0.75], [0.9, 0.1]])


def test_cost_for_bills_local_rate_per_second() -> None:
    provider = H2OProvider(local_rate_usd_per_hour=Decimal("0.36"))

    cost, units = provider.cost_for(100.0)

    # 0.36 $/h * 100 s / 3600 = $0.01
    assert cost == Decimal("0.010000")
    assert units["machine"] == "local" and units["price_source"] == "local rate"


def test_cost_for_uses_declared_vm_price() -> None:
    provider = H2OProvider(vm_sku="n2-standard-4", vm_usd_per_hour=Decimal("0.194236"))

    cost, units = provider.cost_for(1800.0)

    assert cost == Decimal("0.097118")
    assert units["machine"] == "n2-standard-4"


def test_vm_sku_without_price_raises_price_unavailable() -> None:
    with pytest.raises(PriceUnavailableError, match="no price for the VM 'm5.xlarge'"):
        H2OProvider(vm_sku="m5.xlarge")


def test_float_rate_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"exact amount such as Decimal"):
        H2OProvider(local_rate_usd_per_hour=0.1)  # type: ignore[arg-type]


def test_probabilities_reads_predict_csv_hexadecimal_doubles() -> None:
    # PredictCsv writes exact doubles in Java's hexadecimal notation
    header = ["predict", "bad", "good"]
    rows = [["good", "0x1.0p-2", "0x1.8p-1"], ["bad", "0x1.ccccccccccccdp-1", ""]]

    array = probabilities(header, rows, ["bad", "good"], ["bad", "good"])

    assert array[0].tolist() == [0.25, 0.75]
    assert array[1, 0] == 0.9 and np.isnan(array[1, 1])


def test_load_model_refuses_another_format(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text(json.dumps({"format": "torch-state-dict"}))
    with pytest.raises(
        ConfigurationError,
        match="'torch-state-dict' model, not 'h2o-mojo' or 'h2o-binary'",
    ):
        load_model(tmp_path)


def write_mojo_folder(folder: Path, jar_bytes: bytes, recorded_sha256: str) -> None:
    (folder / "model.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    (folder / "h2o-genmodel.jar").write_bytes(jar_bytes)
    manifest = {
        "format": "h2o-mojo",
        "mojo_file": "model.zip",
        "genmodel_jar": "h2o-genmodel.jar",
        "genmodel_sha256": recorded_sha256,
        "task": "binary",
        "classes": ["bad", "good"],
        "class_labels": ["bad", "good"],
        "domain": ["bad", "good"],
        "features": [{"safe_name": "age", "name": "age", "h2o_type": "numeric"}],
    }
    (folder / "model.json").write_text(json.dumps(manifest))


def test_load_model_refuses_a_swapped_genmodel_jar(tmp_path: Path) -> None:
    write_mojo_folder(tmp_path, b"another jar", hashlib.sha256(b"the jar").hexdigest())

    with pytest.raises(ConfigurationError, match="sha256 mismatch"):
        load_model(tmp_path)


def test_load_model_refuses_a_mojo_folder_without_the_mojo(tmp_path: Path) -> None:
    write_mojo_folder(tmp_path, b"the jar", hashlib.sha256(b"the jar").hexdigest())
    (tmp_path / "model.zip").unlink()

    with pytest.raises(ConfigurationError, match=r"lacks its model file 'model.zip'"):
        load_model(tmp_path)


def test_load_model_refuses_a_mojo_file_outside_the_folder(tmp_path: Path) -> None:
    write_mojo_folder(tmp_path, b"the jar", hashlib.sha256(b"the jar").hexdigest())
    manifest = json.loads((tmp_path / "model.json").read_text())
    manifest["genmodel_jar"] = "../elsewhere.jar"
    (tmp_path / "model.json").write_text(json.dumps(manifest))

    with pytest.raises(ConfigurationError, match=r"'\.\./elsewhere\.jar'"):
        load_model(tmp_path)


def test_cluster_url_from_the_environment_is_where_jobs_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # nothing is contacted: availability reads the settings only
    monkeypatch.setenv("AUTOML_BROKER_H2O_URL", "http://analyst:pw@h2o.internal:54321")

    provider = H2OProvider()
    configured = H2OProvider(url="http://127.0.0.1:54399")

    assert provider.url == "http://analyst:pw@h2o.internal:54321"
    # the planner prices a job for a cluster by this source, not as this machine
    assert provider.availability() == Availability(
        True,
        "H2O cluster at http://***@h2o.internal:54321",
        "AUTOML_BROKER_H2O_URL",
    )
    # the config's URL comes first; a cluster on this machine is priced as this machine
    assert configured.url == "http://127.0.0.1:54399"
    assert configured.availability() == Availability(
        True, "H2O cluster at http://127.0.0.1:54399", "h2o-cluster-on-this-machine"
    )


def test_malformed_cluster_url_in_the_environment_makes_h2o_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AUTOML_BROKER_H2O_URL", "localhost:54321")

    provider = H2OProvider()  # no error: other providers can still be planned

    assert provider.url is None
    assert provider.availability() == Availability(
        False,
        "AUTOML_BROKER_H2O_URL='localhost:54321' is not an H2O cluster URL; it must "
        "start with http:// or https://, e.g. http://h2o.internal:54321",
    )


def test_java_missing_makes_provider_unavailable(
    credit: tuple[Schema, pd.DataFrame],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-jdk-here"))
    schema, frame = credit
    provider = H2OProvider()
    before = our_java_processes()

    availability = provider.availability()
    with pytest.raises(
        ProviderUnavailableError, match="apt-get install openjdk-17-jre"
    ):
        provider.submit(make_job(frame, schema, tmp_path, runtime_s=60))

    assert availability.available is False
    assert "no-jdk-here" in availability.reason and "brew install openjdk@17" in (
        availability.reason
    )
    assert our_java_processes() == before  # nothing was launched


# --- one embedded run, end to end ----------------------------------------------------------


@dataclass
class EmbeddedRecord:
    states: list[JobState]
    result: Any
    holdout: pd.DataFrame
    holdout_y: np.ndarray
    cluster_proba: np.ndarray
    saved_proba: np.ndarray
    saved_labels: np.ndarray
    pid: int
    temp_dir: Path
    ice_root: Path
    jvm_running_before_close: bool
    java_after: list[str]
    temp_before: set[str]
    temp_after: set[str]
    run_dir: Path
    classes: tuple[Any, ...]
    wall_s: float
    saved_type: type
    registry_proba: np.ndarray
    node_stopped_before_load: bool
    scoring_commands: list[list[str]]
    java_when_scoring: list[list[str]]


@pytest.fixture(scope="module")
def embedded(
    credit: tuple[Schema, pd.DataFrame], tmp_path_factory: pytest.TempPathFactory
) -> EmbeddedRecord:
    if not H2O_READY:
        pytest.skip("no Java runtime for H2O")
    schema, frame = credit
    train_index, test_index = stratified_split(frame[schema.target_safe_name], 0.2, 0)
    train = frame.iloc[train_index].reset_index(drop=True)
    holdout = frame.iloc[test_index].reset_index(drop=True)
    run_dir = tmp_path_factory.mktemp("h2o-run")
    job = make_job(
        train, schema, run_dir, runtime_s=90, options={"max_models": 2, "nfolds": 3}
    )
    temp_before = our_temp_folders()
    provider = H2OProvider(
        max_mem_gib=1, nthreads=2, local_rate_usd_per_hour=Decimal("0.36")
    )
    features = holdout[schema.safe_feature_names]

    started = time.monotonic()
    try:
        ref = provider.submit(job)
        assert provider.cluster is not None
        cluster = provider.cluster
        pid, temp_dir = cluster.process.pid, cluster.temp_dir  # type: ignore[union-attr]
        ice_root = provider.cluster.ice_root
        states = wait_terminal(provider, ref)
        result = provider.result(ref, job)
        cluster_proba = provider.predict(ref, job, features)
        running = provider.cluster.running
    finally:
        provider.close()
    node_stopped = not provider.cluster.running

    commands: list[list[str]] = []
    java_when_scoring: list[list[str]] = []
    real_run = subprocess.run

    def watched_run(command: list[str], *args: Any, **kwargs: Any) -> Any:
        commands.append(list(command))
        java_when_scoring.append(our_java_processes())  # just before the child starts
        return real_run(command, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "h2o", None)  # `import h2o` fails: no client used
        patch.setattr(subprocess, "run", watched_run)
        saved = load_model(run_dir / "model")
        saved_proba = saved.predict_proba(features)
        saved_labels = saved.predict(features)
        registry_proba = load_saved_model(run_dir / "model").predict_proba(features)
    wall_s = time.monotonic() - started

    assert temp_dir is not None and ice_root is not None
    return EmbeddedRecord(
        states=states,
        result=result,
        holdout=holdout,
        holdout_y=holdout[schema.target_safe_name].to_numpy(),
        cluster_proba=cluster_proba,
        saved_proba=saved_proba,
        saved_labels=saved_labels,
        pid=pid,
        temp_dir=temp_dir,
        ice_root=ice_root,
        jvm_running_before_close=running,
        java_after=our_java_processes(),
        temp_before=temp_before,
        temp_after=our_temp_folders(),
        run_dir=run_dir,
        classes=schema.classes,
        wall_s=wall_s,
        saved_type=type(saved),
        registry_proba=registry_proba,
        node_stopped_before_load=node_stopped,
        scoring_commands=commands,
        java_when_scoring=java_when_scoring,
    )


@pytest.mark.slow
@pytest.mark.h2o
def test_embedded_run_goes_queued_running_succeeded(embedded: EmbeddedRecord) -> None:
    # QUEUED may pass between two polls; RUNNING and SUCCEEDED must be seen, in order
    assert embedded.states[-2:] == [JobState.RUNNING, JobState.SUCCEEDED]
    assert embedded.states[0] in (JobState.QUEUED, JobState.RUNNING)


@pytest.mark.slow
@pytest.mark.h2o
def test_embedded_leaderboard_has_metrics_and_times(embedded: EmbeddedRecord) -> None:
    board = embedded.result.leaderboard
    algorithms = {entry.algorithm for entry in board}

    # max_models=2 trains two base models; H2O adds its stacked ensembles
    assert len([e for e in board if e.algorithm != "StackedEnsemble"]) == 2
    assert "StackedEnsemble" in algorithms
    for entry in board:
        assert 0.5 < entry.validation_metrics["roc_auc"] <= 1  # type: ignore[operator]
        assert entry.training_time_s is not None and entry.training_time_s > 0
        assert entry.predict_time_per_row_s is not None
        assert 0 < entry.predict_time_per_row_s < 1
    # H2O sorts by AUC, best first
    aucs = [e.validation_metrics["roc_auc"] for e in board]
    assert aucs == sorted(aucs, reverse=True)  # type: ignore[type-var]
    assert embedded.result.best_model_id == board[0].model_id


@pytest.mark.slow
@pytest.mark.h2o
def test_embedded_model_folder_is_written(embedded: EmbeddedRecord) -> None:
    import h2o

    folder = embedded.run_dir / "model"
    manifest = json.loads((folder / "model.json").read_text())

    assert embedded.result.model_format == manifest["format"] == "h2o-mojo"
    assert sorted(p.name for p in folder.iterdir()) == [
        "h2o-genmodel.jar",
        "model.json",
        "model.zip",
    ]
    assert manifest["classes"] == ["bad", "good"]
    assert manifest["domain"] == ["bad", "good"]  # H2O's order of the levels
    assert manifest["task"] == "binary"
    assert manifest["h2o_version"] == h2o.__version__
    assert manifest["model_id"] == embedded.result.best_model_id
    assert [f["safe_name"] for f in manifest["features"]][:3] == [
        "checking_status",
        "duration",
        "credit_history",
    ]
    jar = (folder / "h2o-genmodel.jar").read_bytes()
    assert manifest["genmodel_sha256"] == hashlib.sha256(jar).hexdigest()
    assert (folder / "model.zip").read_bytes()[:2] == b"PK"  # a zip archive


@pytest.mark.slow
@pytest.mark.h2o
def test_embedded_saved_model_predicts_like_the_cluster(
    embedded: EmbeddedRecord,
) -> None:
    assert embedded.saved_type is H2OMojoModel
    assert embedded.cluster_proba.shape == (200, 2)
    np.testing.assert_allclose(embedded.saved_proba, embedded.cluster_proba, atol=1e-6)
    # broker.models finds the same loader from the format in model.json
    np.testing.assert_array_equal(embedded.registry_proba, embedded.saved_proba)
    np.testing.assert_allclose(embedded.cluster_proba.sum(axis=1), 1.0, atol=1e-9)
    expected_labels = np.where(embedded.saved_proba[:, 1] > embedded.saved_proba[:, 0],
                               "good", "bad")  # fmt: skip
    assert list(embedded.saved_labels) == list(expected_labels)


@pytest.mark.slow
@pytest.mark.h2o
def test_embedded_mojo_scores_without_an_h2o_node(embedded: EmbeddedRecord) -> None:
    jar = str(embedded.run_dir / "model" / "h2o-genmodel.jar")

    assert embedded.node_stopped_before_load
    # one PredictCsv child per call (predict_proba, predict, the registry's load)
    assert len(embedded.scoring_commands) == 3
    for command in embedded.scoring_commands:
        assert command[command.index("-cp") + 1] == jar
        assert "hex.genmodel.tools.PredictCsv" in command
        assert not any("h2o.jar" in part for part in command)
    # when each child started, no H2O node of ours was alive
    assert embedded.java_when_scoring == [[], [], []]


@pytest.mark.slow
@pytest.mark.h2o
def test_embedded_holdout_auc_is_meaningful(embedded: EmbeddedRecord) -> None:
    auc = roc_auc(embedded.holdout_y == "good", embedded.cluster_proba[:, 1])
    # 200 held-out rows: a score with no skill sits at 0.5 +- 0.04; this run measured 0.713
    assert auc > 0.68, auc


@pytest.mark.slow
@pytest.mark.h2o
def test_embedded_cost_is_local_rate_times_runtime(embedded: EmbeddedRecord) -> None:
    result = embedded.result
    # money rounds half up to a millionth of a dollar
    expected = (
        Decimal("0.36") * Decimal(str(round(result.runtime_s, 3))) / Decimal(3600)
    ).quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)

    assert result.actual_cost_usd == expected
    assert 5 < result.runtime_s < 90
    assert result.provider_units["machine"] == "local"


@pytest.mark.slow
@pytest.mark.h2o
def test_embedded_close_leaves_no_jvm_and_no_temp_folder(
    embedded: EmbeddedRecord,
) -> None:
    assert embedded.jvm_running_before_close
    # the JVM exited and was reaped: the pid is gone, not a zombie
    assert not Path(f"/proc/{embedded.pid}").exists()
    assert embedded.java_after == []
    assert not embedded.ice_root.exists() and not embedded.temp_dir.exists()
    assert embedded.temp_after <= embedded.temp_before


# --- a cluster someone else runs ------------------------------------------------------------


@pytest.fixture(scope="module")
def outside_cluster() -> Any:
    if not H2O_READY:
        pytest.skip("no Java runtime for H2O")
    node = EmbeddedCluster(java=find_java() or "java", max_mem_gib=1, nthreads=2)
    node.start()
    yield node
    node.stop()


@pytest.mark.slow
@pytest.mark.h2o
def test_connect_mode_trains_and_leaves_cluster_running(
    outside_cluster: EmbeddedCluster,
    credit: tuple[Schema, pd.DataFrame],
    tmp_path: Path,
) -> None:
    schema, frame = credit
    job = make_job(
        frame.iloc[:400],
        schema,
        tmp_path,
        runtime_s=60,
        options={"include_algos": ["GLM"], "max_models": 1, "nfolds": 0},
        job_id="connect-1",
    )
    frames_before, models_before = keys_on(outside_cluster.url)
    provider = H2OProvider(url=outside_cluster.url)

    try:
        ref = provider.submit(job)
        states = wait_terminal(provider, ref)
        result = provider.result(ref, job)
        frames_during, models_during = keys_on(outside_cluster.url)
    finally:
        provider.close()
    frames_after, models_after = keys_on(outside_cluster.url)

    assert states[-1] == JobState.SUCCEEDED
    assert provider.cluster is None  # nothing was started
    assert result.leaderboard[0].algorithm == "GLM"
    assert result.best_model_id in models_during
    assert "broker_connect_1_train" in frames_during
    # the cluster still runs, and only what the provider created is gone
    assert outside_cluster.running
    assert rest(outside_cluster.url, "/3/Cloud")["cloud_healthy"] is True
    assert (frames_after, models_after) == (frames_before, models_before)


@pytest.mark.slow
@pytest.mark.h2o
def test_connect_mode_cancel_is_idempotent(
    outside_cluster: EmbeddedCluster,
    credit: tuple[Schema, pd.DataFrame],
    tmp_path: Path,
) -> None:
    schema, frame = credit
    job = make_job(
        frame,
        schema,
        tmp_path,
        runtime_s=120,
        options={"include_algos": ["GBM"], "max_models": 30, "nfolds": 3},
        job_id="cancel-1",
    )
    provider = H2OProvider(url=outside_cluster.url)

    try:
        ref = provider.submit(job)
        while provider.poll(ref).state != JobState.RUNNING:
            time.sleep(0.2)
        provider.cancel(ref)
        after_cancel = provider.poll(ref).state
        provider.cancel(ref)  # a second cancel is a no-op
        states = wait_terminal(provider, ref, timeout_s=60)
    finally:
        provider.close()

    assert after_cancel in (JobState.CANCELLING, JobState.CANCELLED)
    assert states[-1] == JobState.CANCELLED
    assert outside_cluster.running


@pytest.mark.slow
@pytest.mark.h2o
def test_connect_mode_job_killed_on_cluster_fails(
    outside_cluster: EmbeddedCluster,
    credit: tuple[Schema, pd.DataFrame],
    tmp_path: Path,
) -> None:
    schema, frame = credit
    job = make_job(
        frame,
        schema,
        tmp_path,
        runtime_s=120,
        options={"include_algos": ["GBM"], "max_models": 30, "nfolds": 3},
        job_id="killed-1",
    )
    provider = H2OProvider(url=outside_cluster.url)

    try:
        ref = provider.submit(job)
        while provider.poll(ref).state != JobState.RUNNING:
            time.sleep(0.2)
        jobs = rest(outside_cluster.url, "/3/Jobs")["jobs"]
        automl_job = next(
            j
            for j in jobs
            if j["dest"]["name"].startswith("broker_killed_1")
            and j["status"] == "RUNNING"
            and j["description"] == "AutoML build"
        )  # someone else cancels it on the cluster
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        opener.open(
            urllib.request.Request(
                f"{outside_cluster.url}/3/Jobs/{automl_job['key']['name']}/cancel",
                method="POST",
                data=b"",
            ),
            timeout=10,
        ).close()
        states = wait_terminal(provider, ref, timeout_s=60)
        status = provider.poll(ref)
    finally:
        provider.close()

    assert states[-1] == JobState.FAILED
    assert isinstance(status.error, ProviderJobFailedError)
    assert status.error.reason == "CancelledOutside"
    assert "cancelled on the cluster, not by the broker" in str(status.error)


@pytest.mark.slow
@pytest.mark.h2o
def test_refused_mojo_export_saves_a_binary_model_that_scores_alike(
    outside_cluster: EmbeddedCluster,
    credit: tuple[Schema, pd.DataFrame],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from h2o.exceptions import H2OValueError
    from h2o.model.model_base import ModelBase

    def refused(self: Any, *args: Any, **kwargs: Any) -> str:
        raise H2OValueError("MOJO export needs an H2O-3 Secure licence")

    monkeypatch.setattr(ModelBase, "download_mojo", refused)  # as a gated client does
    schema, frame = credit
    job = make_job(
        frame.iloc[:400],
        schema,
        tmp_path,
        runtime_s=60,
        options={"include_algos": ["GLM"], "max_models": 1, "nfolds": 0},
        job_id="binary-1",
    )
    features = frame.iloc[900:][schema.safe_feature_names]
    provider = H2OProvider(url=outside_cluster.url)

    try:
        ref = provider.submit(job)
        wait_terminal(provider, ref)
        result = provider.result(ref, job)
        cluster_proba = provider.predict(ref, job, features)
    finally:
        provider.close()
    java_before = our_java_processes()
    saved = load_model(tmp_path / "model")
    saved_proba = saved.predict_proba(features)

    folder = tmp_path / "model"
    manifest = json.loads((folder / "model.json").read_text())
    assert result.model_format == manifest["format"] == "h2o-binary"
    assert sorted(p.name for p in folder.iterdir()) == ["model.h2o", "model.json"]
    note = "H2O did not export a MOJO (H2OValueError: MOJO export needs an H2O-3"
    assert any(n.startswith(note) for n in result.notes), result.notes
    assert manifest["note"].startswith(note)
    assert isinstance(saved, H2OBinaryModel)
    np.testing.assert_allclose(saved_proba, cluster_proba, atol=1e-6)
    assert our_java_processes() == java_before  # the scoring node stopped


# --- a failure mid-run ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.h2o
@needs_h2o
def test_embedded_failure_mid_run_stops_the_jvm(
    credit: tuple[Schema, pd.DataFrame],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from h2o.automl import H2OAutoML

    def broken_fetch(self: Any) -> None:
        raise RuntimeError("leaderboard fetch broke")

    monkeypatch.setattr(H2OAutoML, "_fetch", broken_fetch)
    schema, frame = credit
    job = make_job(
        frame.iloc[:300],
        schema,
        tmp_path,
        runtime_s=60,
        options={"include_algos": ["GLM"], "max_models": 1, "nfolds": 0},
        job_id="broken-1",
    )
    provider = H2OProvider(max_mem_gib=1, nthreads=2)

    try:
        ref = provider.submit(job)
        node = provider.cluster
        assert node is not None and node.process is not None
        pid, temp_dir = node.process.pid, node.temp_dir
        states = wait_terminal(provider, ref, timeout_s=60)
        status = provider.poll(ref)
        # the failed run stops the JVM by itself, before close() is called; give the
        # process the few seconds a JVM takes to exit on a busy machine
        deadline = time.monotonic() + 20
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        stopped_before_close = not Path(f"/proc/{pid}").exists()
    finally:
        provider.close()

    assert states[-1] == JobState.FAILED
    assert isinstance(status.error, ProviderJobFailedError)
    assert "leaderboard fetch broke" in str(status.error)
    assert status.error.original_type == "RuntimeError"
    assert stopped_before_close
    assert temp_dir is not None and not temp_dir.exists()
    assert our_java_processes(str(temp_dir)) == []
    with pytest.raises(ProviderJobFailedError, match="has no result: it is failed"):
        provider.result(ref, job)
