"""H2O AutoML as a backend: a JVM of our own, or a running cluster.

Embedded mode (no ``url``) starts one private H2O node: a free loopback port (never the
shared 54321 default, so it never joins someone else's cluster), a flatfile that names
only itself (no multicast discovery), telemetry off, the heap sized from the job's
memory constraint, and every temporary file (ice root, logs, uploads) in one folder that
is removed when the node stops. :meth:`H2OProvider.close` stops the JVM, waits for it to
exit and reaps it, even after a failed run; a finalizer does the same at interpreter
exit if ``close`` was never called.

Connect mode (``url=``) uses a cluster someone else runs and leaves it running;
``close`` removes only the frames, models and AutoML runs this provider created.

The h2o client keeps one active connection per Python process, so the provider
re-activates its own connection before each call.

The best model is exported as a MOJO (``model.zip``) with the ``h2o-genmodel.jar`` that
reads it. :func:`load_model` scores a MOJO with ``java -cp h2o-genmodel.jar
hex.genmodel.tools.PredictCsv`` on a temporary CSV: no H2O node, no h2o Python package
needed. When the h2o client refuses MOJO export, the model is saved in H2O's binary format
instead (``h2o-binary``), which scores on a short-lived H2O node in a child process.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import importlib.util
import inspect
import io
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
import weakref
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from broker.clock import SYSTEM_CLOCK, Clock
from broker.credentials import H2O_URL_ENV
from broker.errors import (
    ConfigurationError,
    InvalidRequestError,
    NoModelTrainedError,
    PriceUnavailableError,
    ProviderError,
    ProviderJobFailedError,
    ProviderUnavailableError,
    TransientProviderError,
)
from broker.providers.base import (
    Availability,
    Provider,
    ProviderJob,
    ProviderJobRef,
    ProviderResult,
    ProviderStatus,
)
from broker.schema import ColumnKind, Schema
from broker.spec import LeaderboardEntry, Task
from broker.states import JobState, check_transition

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

logger = logging.getLogger(__name__)

PROVIDER_NAME = "h2o"
MODEL_FORMAT = "h2o-mojo"
BINARY_FORMAT = "h2o-binary"
MOJO_FILE = "model.zip"
GENMODEL_JAR = "h2o-genmodel.jar"
BINARY_FILE = "model.h2o"
PREDICT_CSV_CLASS = "hex.genmodel.tools.PredictCsv"
DEFAULT_SCORING_HEAP_MIB = 1024
DEFAULT_MAX_MEM_GIB = 2.0
DEFAULT_NFOLDS = 5
MIN_AUTOML_RUNTIME_S = 10
STARTUP_ESTIMATE_S = 10.0
JAVA_INSTALL_HINT = (
    "install a Java runtime (8 to 17) and try again: "
    "`apt-get install openjdk-17-jre-headless` (Debian/Ubuntu), "
    "`brew install openjdk@17` (macOS), or set JAVA_HOME to an installed JDK/JRE folder"
)
ALGORITHMS = ("DRF", "GLM", "XGBoost", "GBM", "DeepLearning", "StackedEnsemble")

# broker metric -> H2O sort_metric; H2O's stopping_metric takes the same spelling.
_SORT_METRICS = {
    "roc_auc": "AUC",
    "log_loss": "logloss",
    "pr_auc": "AUCPR",
    "average_precision": "AUCPR",
    "mean_per_class_error": "mean_per_class_error",
    "balanced_accuracy": "mean_per_class_error",
    "rmse": "RMSE",
    "mse": "MSE",
    "mae": "MAE",
    "rmsle": "RMSLE",
}
_CLASSIFICATION_ONLY = {"AUC", "logloss", "AUCPR", "mean_per_class_error"}

# H2O leaderboard column -> broker metric name
_LEADERBOARD_METRICS = {
    "auc": "roc_auc",
    "logloss": "log_loss",
    "aucpr": "pr_auc",
    "mean_per_class_error": "mean_per_class_error",
    "rmse": "rmse",
    "mse": "mse",
    "mae": "mae",
    "rmsle": "rmsle",
    "mean_residual_deviance": "mean_residual_deviance",
}

_OPTION_NAMES = (
    "max_models",
    "exclude_algos",
    "include_algos",
    "nfolds",
    "max_runtime_secs_per_model",
    "stopping_rounds",
)


# --- Java and ports -----------------------------------------------------------------


def find_java() -> str | None:
    """The Java executable for H2O: ``$JAVA_HOME/bin/java``, else ``java`` on PATH.

    Returns:
        The path, or None when neither exists.
    """
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("java")


def _java_missing_message() -> str:
    java_home = os.environ.get("JAVA_HOME")
    where = (
        f"JAVA_HOME={java_home!r} has no bin/java and no `java` is on PATH"
        if java_home
        else "no `java` is on PATH and JAVA_HOME is not set"
    )
    return f"H2O needs a Java runtime, but {where}; {JAVA_INSTALL_HINT}"


def _free_port_pair() -> int:
    """A loopback port P with P+1 also free (H2O listens on both), never 54321."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port in (54321, 54322) or port >= 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as second:
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise ProviderUnavailableError(
        "found no free pair of loopback ports for an H2O node after 50 tries; "
        "close some servers and try again",
        provider=PROVIDER_NAME,
    )


def _loopback_opener() -> urllib.request.OpenerDirector:
    # Our own node only: never route through a proxy from the environment.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _h2o_jar() -> Path:
    import h2o

    return Path(h2o.__file__).resolve().parent / "backend" / "bin" / "h2o.jar"


# --- the embedded node --------------------------------------------------------------


def _stop_process(
    process: subprocess.Popen[bytes], temp_dir: Path, url: str, wait_s: float = 15.0
) -> None:
    """Shut the node down, wait for the JVM to exit, reap it, remove its folder."""
    if process.poll() is None:
        with contextlib.suppress(OSError, urllib.error.URLError, TimeoutError):
            request = urllib.request.Request(
                f"{url}/3/Shutdown", method="POST", data=b""
            )
            _loopback_opener().open(request, timeout=5).close()
        try:
            process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            logger.warning(
                "H2O node pid %s ignored shutdown; terminating it", process.pid
            )
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait(timeout=10)
    else:
        process.wait()  # reap a JVM that already exited
    shutil.rmtree(temp_dir, ignore_errors=True)
    if temp_dir.exists():
        logger.warning("could not remove the H2O temporary folder %s", temp_dir)


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


class EmbeddedCluster:
    """One private H2O node in a JVM that this process started and will stop.

    Example:
        >>> node = EmbeddedCluster(java="java", max_mem_gib=1)  # doctest: +SKIP
        >>> node.start(); node.url; node.stop()  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        java: str,
        max_mem_gib: float,
        nthreads: int | None = None,
        startup_timeout_s: float = 90.0,
    ) -> None:
        self.java = java
        self.max_mem_gib = max_mem_gib
        self.nthreads = nthreads
        self.startup_timeout_s = startup_timeout_s
        self.name = f"automl-broker-{uuid.uuid4().hex[:12]}"
        self.port: int | None = None
        self.temp_dir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the H2O node is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def ice_root(self) -> Path | None:
        return None if self.temp_dir is None else self.temp_dir / "ice"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Launch the JVM and wait until the node answers as a healthy one-node cloud.

        Raises:
            ProviderUnavailableError: the JVM did not come up (the message has its log).
        """
        if self.process is not None:
            return
        self.temp_dir = Path(tempfile.mkdtemp(prefix="automl-broker-h2o-"))
        (self.temp_dir / "ice").mkdir()
        last_error = ""
        for _ in range(3):
            self.port = _free_port_pair()
            process = self._launch()
            self._finalizer = weakref.finalize(
                self, _stop_process, process, self.temp_dir, self.url
            )
            last_error = self._wait_ready(process)
            if not last_error:
                self.process = process
                logger.info(
                    "H2O node %s up at %s (pid %s, heap %s GiB)",
                    self.name,
                    self.url,
                    process.pid,
                    self.max_mem_gib,
                )
                return
            self._finalizer.detach()
            _stop_process(process, self.temp_dir / "unused", self.url, wait_s=5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        raise ProviderUnavailableError(
            f"the H2O node did not start: {last_error}", provider=PROVIDER_NAME
        )

    def stop(self) -> None:
        """Shut the node down, wait for the JVM to exit, reap it. Safe to call twice."""
        if self.process is None or self.temp_dir is None:
            return
        if self._finalizer is not None:
            self._finalizer.detach()
        pid = self.process.pid
        _stop_process(self.process, self.temp_dir, self.url)
        logger.info(
            "H2O node %s stopped (pid %s exited %s)",
            self.name,
            pid,
            self.process.returncode,
        )
        self.process = None

    def _launch(self) -> subprocess.Popen[bytes]:
        assert self.temp_dir is not None and self.port is not None, "start() sets them"
        flatfile = self.temp_dir / "flatfile.txt"
        flatfile.write_text(f"127.0.0.1:{self.port}\n", encoding="utf-8")
        heap_mib = max(256, int(self.max_mem_gib * 1024))
        command = [
            self.java,
            f"-Xmx{heap_mib}m",
            f"-Dai.h2o.flatfile={flatfile}",
            "-Dsys.ai.h2o.telemetry.disabled=true",
            f"-Djava.io.tmpdir={self.temp_dir}",
            "-jar",
            str(_h2o_jar()),
            "-name",
            self.name,
            "-ip",
            "127.0.0.1",
            "-web_ip",
            "127.0.0.1",
            "-port",
            str(self.port),
            "-ice_root",
            str(self.temp_dir / "ice"),
            "-log_dir",
            str(self.temp_dir / "logs"),
            "-log_level",
            "WARN",
            "-allow_unsupported_java",
        ]
        if self.nthreads:
            command += ["-nthreads", str(self.nthreads)]
        env = {**os.environ, "DO_NOT_TRACK": "1"}
        with (
            open(self.temp_dir / "stdout.log", "wb") as out,
            open(self.temp_dir / "stderr.log", "wb") as err,
        ):
            return subprocess.Popen(
                command,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=self.temp_dir,
                env=env,
                start_new_session=True,  # its own process group, for a clean kill
            )

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> str:
        """'' once healthy; else why not."""
        assert self.temp_dir is not None, "start() sets it"
        opener = _loopback_opener()
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = (self.temp_dir / "stdout.log").read_text(errors="replace")[-800:]
                tail += (self.temp_dir / "stderr.log").read_text(errors="replace")[
                    -800:
                ]
                return f"the JVM exited with code {process.returncode}: {tail.strip()}"
            try:
                with opener.open(f"{self.url}/3/Cloud", timeout=2) as reply:
                    cloud = json.load(reply)
            except (OSError, ValueError):
                time.sleep(0.25)
                continue
            if cloud.get("cloud_name") != self.name:
                return f"port {self.port} answers as another cluster"
            if cloud.get("cloud_healthy") and cloud.get("consensus"):
                return ""
            time.sleep(0.25)
        return f"no healthy answer within {self.startup_timeout_s:.0f} s"


# --- the h2o client's one global connection -----------------------------------------


def _connect(url: str) -> Any:
    """Open an h2o client connection to `url` quietly, with telemetry off."""
    import h2o

    h2o.no_progress()
    arguments: dict[str, Any] = {
        "url": url,
        "verbose": False,
        "strict_version_check": False,
    }
    if "telemetry" in inspect.signature(h2o.connect).parameters:
        arguments["telemetry"] = False  # clients from 3.46.0.7 on have the switch
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            connection = h2o.connect(**arguments)
    except Exception as exc:
        raise ProviderUnavailableError(
            f"cannot reach the H2O cluster at {_redact(url)}: {exc}; "
            "start it or fix `url`",
            provider=PROVIDER_NAME,
            original_type=type(exc).__name__,
        ) from None
    if printed.getvalue().strip():
        logger.debug("h2o client said: %s", printed.getvalue().strip())
    return connection


def _activate(connection: Any) -> None:
    # h2o.connection() reads this module global; switching it back lets two clusters
    # (a provider's and a test's or another provider's) be used from one process.
    sys.modules["h2o.h2o"].h2oconn = connection  # type: ignore[attr-defined]


def _is_loopback(url: str) -> bool:
    """Whether the URL's host is this machine (localhost or a loopback address)."""
    import ipaddress
    from urllib.parse import urlsplit

    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _redact(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", url)


# --- job mapping --------------------------------------------------------------------


@dataclass(frozen=True)
class AutoMLSettings:
    """What the broker asks of H2OAutoML for one job."""

    sort_metric: str
    stopping_metric: str
    nfolds: int
    seed: int
    max_models: int | None = None
    exclude_algos: tuple[str, ...] | None = None
    include_algos: tuple[str, ...] | None = None
    max_runtime_secs_per_model: float | None = None
    stopping_rounds: int | None = None
    notes: tuple[str, ...] = ()


def h2o_metrics_for(metric: str, task: Task) -> tuple[str, str, str | None]:
    """H2O's sort and stopping metric for a broker metric, and a note when they differ.

    Args:
        metric: The broker metric name (``roc_auc``, ``log_loss``, ``rmse`` ...).
        task: The job's task.

    Returns:
        ``(sort_metric, stopping_metric, note)``; the note is None when H2O ranks by the
        very metric asked for.

    Raises:
        ConfigurationError: a classification metric for a regression task.
    """
    classification = task in (Task.BINARY, Task.MULTICLASS)
    if metric == "accuracy" and classification:
        sort = "AUC" if task == Task.BINARY else "logloss"
        note = (
            f"H2O AutoML cannot rank by accuracy; it ranked by {sort} and stopped on "
            "misclassification, and the broker ranks by accuracy on the held-out split"
        )
        return sort, "misclassification", note
    if metric in _SORT_METRICS:
        h2o_metric = _SORT_METRICS[metric]
        if h2o_metric in _CLASSIFICATION_ONLY and not classification:
            raise ConfigurationError(
                f"metric {metric!r} needs a classification task, but the task is "
                f"{task.value!r}; choose rmse, mae, mse or rmsle"
            )
        return h2o_metric, h2o_metric, None
    note = (
        f"H2O AutoML has no ranking metric for {metric!r}; it used its default and the "
        "broker ranks by the held-out split"
    )
    return "AUTO", "AUTO", note


def automl_settings(job: ProviderJob) -> AutoMLSettings:
    """Validate the job's H2O options and map the spec onto H2OAutoML's arguments.

    Raises:
        ConfigurationError: an unknown option or a value out of range, naming it.
    """
    options = dict(job.spec.provider_options.get(PROVIDER_NAME, {}))
    options.update(job.options)
    unknown = sorted(set(options) - set(_OPTION_NAMES))
    if unknown:
        raise ConfigurationError(
            f"unknown H2O option(s) {unknown}; allowed: {list(_OPTION_NAMES)}"
        )

    metric = job.spec.metric_for(job.schema.task)
    sort_metric, stopping_metric, note = h2o_metrics_for(metric, job.schema.task)
    nfolds = _int_option(options, "nfolds", DEFAULT_NFOLDS, minimum=0)
    if nfolds == 1:
        raise ConfigurationError(
            "H2O option nfolds=1 is not allowed; "
            "use 0 (no cross-validation) or 2 or more"
        )
    max_models = options.get("max_models")
    stopping_rounds = options.get("stopping_rounds")
    per_model = options.get("max_runtime_secs_per_model")
    if per_model is not None and (
        not isinstance(per_model, int | float)
        or isinstance(per_model, bool)
        or per_model <= 0
    ):
        raise ConfigurationError(
            "H2O option max_runtime_secs_per_model must be a positive number of "
            f"seconds, "
            f"got {per_model!r}"
        )

    return AutoMLSettings(
        sort_metric=sort_metric,
        stopping_metric=stopping_metric,
        nfolds=nfolds,
        seed=job.spec.seed,
        max_models=None
        if max_models is None
        else _int_option(options, "max_models", 0, minimum=1),
        exclude_algos=_algos_option(options, "exclude_algos"),
        include_algos=_algos_option(options, "include_algos"),
        max_runtime_secs_per_model=per_model,
        stopping_rounds=None
        if stopping_rounds is None
        else _int_option(options, "stopping_rounds", 0, minimum=0),
        notes=() if note is None else (note,),
    )


def _int_option(
    options: dict[str, Any], name: str, default: int, *, minimum: int
) -> int:
    value = options.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigurationError(
            f"H2O option {name} must be a whole number >= {minimum}, got {value!r}"
        )
    return value


def _algos_option(options: dict[str, Any], name: str) -> tuple[str, ...] | None:
    value = options.get(name)
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ConfigurationError(
            f"H2O option {name} must be a list of algorithm names, got {value!r}"
        )
    by_lower = {a.lower(): a for a in ALGORITHMS}
    wrong = [v for v in value if str(v).lower() not in by_lower]
    if wrong:
        raise ConfigurationError(
            f"H2O option {name} has unknown algorithm(s) {wrong}; "
            f"choose from {list(ALGORITHMS)}"
        )
    return tuple(by_lower[str(v).lower()] for v in value)


def automl_runtime_s(limit_s: float, elapsed_s: float) -> int:
    """Seconds H2OAutoML may run: the budget less what start-up took and a reserve for
    the leaderboard, the export and the held-out predictions (10 s or a tenth).

    Raises:
        NoModelTrainedError: fewer than ``MIN_AUTOML_RUNTIME_S`` seconds would be left.
    """
    reserve_s = max(10.0, 0.1 * limit_s)
    available_s = int(limit_s - elapsed_s - reserve_s)
    if available_s < MIN_AUTOML_RUNTIME_S:
        # Start-up time varies from run to run: suggest a budget with room for half as
        # much again, its reserve included, rounded up to 5 s.
        startup_s = 1.5 * elapsed_s + MIN_AUTOML_RUNTIME_S
        needed_s = max(startup_s + 10.0, startup_s / 0.9)
        needed_s = 5.0 * math.ceil(needed_s / 5.0)
        raise NoModelTrainedError(
            f"a runtime budget of {limit_s:.0f} s leaves H2O {available_s} s to train "
            f"after {elapsed_s:.0f} s of start-up and a {reserve_s:.0f} s reserve for "
            f"export; raise budget.max_runtime_s to at least {needed_s:.0f}",
            reason="budget_too_small",
            budget_s=limit_s,
            elapsed_s=elapsed_s,
            suggested_min_budget_s=needed_s,
            provider=PROVIDER_NAME,
        )
    return available_s


# --- frames -------------------------------------------------------------------------


def _feature_kinds(schema: Schema) -> list[tuple[str, str]]:
    """(safe name, H2O column type) for each feature, in schema order."""
    kinds = {
        ColumnKind.NUMERIC: "numeric",
        ColumnKind.DATETIME: "numeric",  # sent as milliseconds since the epoch
        ColumnKind.CATEGORICAL: "enum",
        ColumnKind.TEXT: "string",  # TODO(h2o-text): AutoML skips string columns
    }
    return [(c.safe_name, kinds.get(c.kind, "enum")) for c in schema.features]


def class_label(value: Any) -> str:
    """How a class value is spelt in H2O (its factor level)."""
    if hasattr(value, "item"):
        value = value.item()
    return str(value)


def prepare_features(
    frame: pd.DataFrame, features: list[tuple[str, str]]
) -> pd.DataFrame:
    """The feature columns as H2O reads them: categoricals as text, datetimes as ms."""
    import pandas as pd

    missing = [name for name, _ in features if name not in frame.columns]
    if missing:
        raise InvalidRequestError(
            f"the frame lacks feature column(s) {missing}; pass the safe column names",
            provider=PROVIDER_NAME,
        )
    columns: dict[str, Any] = {}
    for name, h2o_type in features:
        column = frame[name]
        if h2o_type in ("enum", "string"):
            columns[name] = column.map(lambda v: None if pd.isna(v) else class_label(v))
        elif pd.api.types.is_datetime64_any_dtype(column):
            as_ms = column.astype("int64") // 1_000_000
            columns[name] = as_ms.where(column.notna())
        else:
            columns[name] = pd.to_numeric(column, errors="coerce")
    return pd.DataFrame(columns, index=frame.index)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    frame.to_csv(path, index=False, na_rep="")


def _read_csv_rows(text: str) -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(io.StringIO(text)))
    return rows[0], [r for r in rows[1:] if r]


def _to_float(text: str) -> float:
    if text in ("", "NA", "nan", "NaN"):
        return float("nan")
    if "0x" in text.lower():  # PredictCsv's exact hexadecimal doubles
        return float.fromhex(text)
    return float(text)


def probabilities(
    header: list[str],
    rows: list[list[str]],
    domain: list[str] | None,
    class_labels: list[str],
) -> np.ndarray:
    """An H2O prediction table as an array: (n, k) in `class_labels` order, or (n,)."""
    import numpy as np

    if not class_labels:
        return np.array([_to_float(r[0]) for r in rows], dtype=float)
    domain = domain or header[1:]
    position = {label: i for i, label in enumerate(class_labels)}
    out = np.zeros((len(rows), len(class_labels)), dtype=float)
    for j, label in enumerate(domain):
        if label not in position:
            raise ProviderJobFailedError(
                f"H2O predicted class {label!r}, which is not among the job's classes "
                f"{class_labels}",
                provider=PROVIDER_NAME,
                reason="ClassMismatch",
            )
        out[:, position[label]] = [_to_float(r[j + 1]) for r in rows]
    return out


def leaderboard_entries(
    header: list[str], rows: list[list[str]], *, notes: str | None = None
) -> list[LeaderboardEntry]:
    """H2O's leaderboard (with extra columns) as the broker's entries, in H2O's order.

    Cross-validation metrics land in ``validation_metrics`` under the broker's names;
    ``training_time_ms`` and ``predict_time_per_row_ms`` become seconds.
    """
    entries = []
    for row in rows:
        record = dict(zip(header, row, strict=False))
        metrics = {
            broker_name: _optional_float(record[h2o_name])
            for h2o_name, broker_name in _LEADERBOARD_METRICS.items()
            if h2o_name in record
        }
        training_ms = _optional_float(record.get("training_time_ms", ""))
        predict_ms = _optional_float(record.get("predict_time_per_row_ms", ""))
        entries.append(
            LeaderboardEntry(
                model_id=record["model_id"],
                provider=PROVIDER_NAME,
                algorithm=record.get("algo") or record["model_id"].split("_")[0],
                validation_metrics=metrics,
                training_time_s=None if training_ms is None else training_ms / 1000,
                predict_time_per_row_s=None
                if predict_ms is None
                else predict_ms / 1000,
                notes=notes,
            )
        )
    return entries


def _optional_float(text: str) -> float | None:
    value = _to_float(text) if text is not None else float("nan")
    return None if value != value else value


# --- the provider -------------------------------------------------------------------


@dataclass
class _Run:
    job: ProviderJob
    ref: ProviderJobRef
    key: str
    aml: Any
    started_mono: float
    started_at: Any
    settings: AutoMLSettings
    max_runtime_s: int
    frame_keys: list[str] = field(default_factory=list)
    state: JobState = JobState.QUEUED
    secondary: str | None = None
    error: ProviderError | None = None
    ended_mono: float | None = None
    ended_at: Any = None
    cancel_requested: bool = False
    cancel_sent: bool = False
    thread: threading.Thread | None = None
    model_ids: list[str] = field(default_factory=list)


class H2OProvider(Provider):
    """H2O AutoML on an embedded node (default) or on a running cluster (``url``).

    Example:
        >>> from decimal import Decimal
        >>> provider = H2OProvider(local_rate_usd_per_hour=Decimal("0.05"))
        >>> provider.kind
        'local'

    Args:
        url: A running H2O cluster to use; None reads AUTOML_BROKER_H2O_URL, and
            without it starts an embedded node.
        max_mem_gib: Heap of the embedded node; default the job's
            ``constraints.min_memory_gib``, else 2 GiB.
        nthreads: Worker threads of the embedded node; default all cores.
        clock: Time source for timestamps and runtime.
        poll_interval_s: How often a caller should poll (advice for the broker loop).
        vm_sku: The cloud VM the cluster runs on, when it runs on one (for cost).
        vm_usd_per_hour: That VM's price; required with ``vm_sku``.
        local_rate_usd_per_hour: What an hour of this machine costs the user (power,
            amortisation); used when no VM is declared.
        startup_timeout_s: How long to wait for an embedded node to come up.
    """

    name: ClassVar[str] = PROVIDER_NAME
    kind: ClassVar[Literal["cloud", "local"]] = "local"
    unsupported: ClassVar[dict[str, str]] = {
        "gpu": "this backend runs H2O AutoML on CPUs; GPU XGBoost needs a CUDA build "
        "of H2O that the broker does not manage",
    }
    # A cancelled AutoML job stopped within ~2 s on this machine's tests.
    cancel_latency_s: float = 10.0

    def __init__(
        self,
        *,
        url: str | None = None,
        max_mem_gib: float | None = None,
        nthreads: int | None = None,
        clock: Clock = SYSTEM_CLOCK,
        poll_interval_s: float = 2.0,
        vm_sku: str | None = None,
        vm_usd_per_hour: Decimal | None = None,
        local_rate_usd_per_hour: Decimal = Decimal("0"),
        startup_timeout_s: float = 90.0,
    ) -> None:
        self._env_url_problem: str | None = None
        if url is None:  # the environment may name the cluster instead of the config
            url = os.environ.get(H2O_URL_ENV) or None
            if url is not None and not re.match(r"^https?://", url):
                # not an error of this job's settings: H2O is unavailable, and says why
                self._env_url_problem = (
                    f"{H2O_URL_ENV}={_redact(url)!r} is not an H2O cluster URL; it must "
                    "start with http:// or https://, e.g. http://h2o.internal:54321"
                )
                url = None
        if url is not None and not re.match(r"^https?://", url):
            raise ConfigurationError(
                f"H2O url must start with http:// or https://, got {_redact(url)!r}"
            )
        if max_mem_gib is not None and max_mem_gib <= 0:
            raise ConfigurationError(f"max_mem_gib must be > 0, got {max_mem_gib!r}")
        if nthreads is not None and nthreads < 1:
            raise ConfigurationError(f"nthreads must be >= 1, got {nthreads!r}")
        if poll_interval_s <= 0:
            raise ConfigurationError(
                f"poll_interval_s must be > 0, got {poll_interval_s}"
            )
        self.local_rate_usd_per_hour = _money(
            "local_rate_usd_per_hour", local_rate_usd_per_hour
        )
        if vm_sku is not None and vm_usd_per_hour is None:
            raise PriceUnavailableError(
                f"no price for the VM {vm_sku!r} that runs the H2O cluster; pass "
                "vm_usd_per_hour=Decimal('...') with the price you pay",
                provider=PROVIDER_NAME,
                sku=vm_sku,
            )
        if vm_usd_per_hour is not None and vm_sku is None:
            raise ConfigurationError("vm_usd_per_hour needs vm_sku, the VM it prices")
        self.vm_sku = vm_sku
        self.vm_usd_per_hour = (
            None
            if vm_usd_per_hour is None
            else _money("vm_usd_per_hour", vm_usd_per_hour)
        )

        self.url = url
        self.max_mem_gib = max_mem_gib
        self.nthreads = nthreads
        self.clock = clock
        self.poll_interval_s = poll_interval_s
        self.startup_timeout_s = startup_timeout_s
        self.cluster: EmbeddedCluster | None = None
        self._connection: Any = None
        self._work_dir: Path | None = None
        self._runs: dict[str, _Run] = {}
        self._by_key: dict[str, str] = {}
        self._lock = threading.RLock()
        self._closed = False

    # -- availability -----------------------------------------------------------------

    def availability(self) -> Availability:
        """Whether H2O can run here: the h2o package, and Java or a cluster URL."""
        if importlib.util.find_spec("h2o") is None:
            return Availability(
                False,
                "the h2o package is not installed; pip install 'automl-broker[h2o]'",
            )
        if self._env_url_problem is not None:
            return Availability(False, self._env_url_problem)
        if self.url is not None:
            where = f"H2O cluster at {_redact(self.url)}"
            if _is_loopback(self.url):  # a cluster on this machine is priced as one
                return Availability(True, where, "h2o-cluster-on-this-machine")
            # the same source as a URL found in the environment: jobs go to that cluster
            return Availability(True, where, H2O_URL_ENV)
        java = find_java()
        if java is None:
            return Availability(False, _java_missing_message())
        return Availability(True, f"embedded H2O node run by {java}")

    def _require_available(self) -> None:
        availability = self.availability()
        if not availability.available:
            raise ProviderUnavailableError(availability.reason, provider=PROVIDER_NAME)

    # -- submit -----------------------------------------------------------------------

    def submit(self, job: ProviderJob) -> ProviderJobRef:
        """Start H2OAutoML on the job's training rows in a background thread.

        Raises:
            ConfigurationError: an H2O option is wrong (nothing was started).
            ProviderUnavailableError: no Java, or the node or cluster cannot be reached.
            NoModelTrainedError: the runtime budget leaves too little time to train.
            InvalidRequestError: H2O refused the training data.
        """
        with self._lock:
            if job.idempotency_key in self._by_key:
                return self._runs[self._by_key[job.idempotency_key]].ref
        if self._closed:
            raise ProviderUnavailableError(
                "this H2O provider is closed; create a new one", provider=PROVIDER_NAME
            )
        settings = automl_settings(job)
        self._require_available()
        startup_s = (
            STARTUP_ESTIMATE_S if self.url is None and self.cluster is None else 0
        )
        automl_runtime_s(job.runtime_limit_s, startup_s)  # refuse before starting a JVM

        started_mono = self.clock.monotonic()
        started_at = self.clock.now()
        self._ensure_cluster(job)
        key = _h2o_key(job.job_id)
        frame = self._upload_training(job, key)
        max_runtime_s = automl_runtime_s(
            job.runtime_limit_s, self.clock.monotonic() - started_mono
        )
        aml = self._make_automl(key, settings, max_runtime_s)

        ref = ProviderJobRef(
            provider=PROVIDER_NAME,
            job_id=key,
            idempotency_key=job.idempotency_key,
            extra={
                "mode": "embedded" if self.url is None else "cluster",
                "url": _redact(self._cluster_url()),
            },
        )
        run = _Run(
            job=job,
            ref=ref,
            key=key,
            aml=aml,
            started_mono=started_mono,
            started_at=started_at,
            settings=settings,
            max_runtime_s=max_runtime_s,
            frame_keys=[frame.frame_id],
        )
        with self._lock:
            self._runs[key] = run
            self._by_key[job.idempotency_key] = key
        run.thread = threading.Thread(
            target=self._train, args=(run, frame), name=f"h2o-automl-{key}", daemon=True
        )
        run.thread.start()
        logger.info(
            "H2O AutoML %s submitted: %d rows, sort %s, %d s, nfolds %d",
            key,
            len(job.train),
            settings.sort_metric,
            max_runtime_s,
            settings.nfolds,
        )
        return ref

    def _ensure_cluster(self, job: ProviderJob) -> None:
        with self._lock:
            if self._connection is not None and (
                self.cluster is None or self.cluster.running
            ):
                _activate(self._connection)
                return
            if self.url is not None:
                self._connection = _connect(self.url)
                return
            java = find_java()
            if java is None:
                raise ProviderUnavailableError(
                    _java_missing_message(), provider=PROVIDER_NAME
                )
            memory_gib = (
                self.max_mem_gib
                or job.spec.constraints.min_memory_gib
                or DEFAULT_MAX_MEM_GIB
            )
            self.cluster = EmbeddedCluster(
                java=java,
                max_mem_gib=memory_gib,
                nthreads=self.nthreads,
                startup_timeout_s=self.startup_timeout_s,
            )
            try:
                self.cluster.start()
                self._connection = _connect(self.cluster.url)
            except BaseException:
                self.cluster.stop()
                raise

    def _cluster_url(self) -> str:
        if self.url is not None:
            return self.url
        assert self.cluster is not None, "_ensure_cluster ran"
        return self.cluster.url

    def _scratch(self) -> Path:
        if self._work_dir is None:
            self._work_dir = Path(tempfile.mkdtemp(prefix="automl-broker-h2o-work-"))
            # removed by close(), or at interpreter exit when close() is never called
            weakref.finalize(self, shutil.rmtree, self._work_dir, ignore_errors=True)
        return self._work_dir

    def _upload(self, frame: pd.DataFrame, key: str, col_types: dict[str, str]) -> Any:
        import h2o

        path = self._scratch() / f"{key}.csv"
        _write_csv(frame, path)
        try:
            with self._lock:
                _activate(self._connection)
                return h2o.upload_file(
                    str(path),
                    destination_frame=key,
                    header=1,
                    sep=",",
                    col_types=col_types,
                )
        except Exception as exc:
            raise InvalidRequestError(
                f"H2O could not read the frame {key}: {exc}",
                provider=PROVIDER_NAME,
                original_type=type(exc).__name__,
            ) from None
        finally:
            path.unlink(missing_ok=True)

    def _upload_training(self, job: ProviderJob, key: str) -> Any:
        schema = job.schema
        features = _feature_kinds(schema)
        table = prepare_features(job.train, features)
        target = job.train[schema.target_safe_name]
        col_types = dict(features)
        if schema.task == Task.REGRESSION:
            col_types[schema.target_safe_name] = "numeric"
            table[schema.target_safe_name] = target.astype(float)
        else:
            col_types[schema.target_safe_name] = "enum"
            table[schema.target_safe_name] = target.map(class_label)
        return self._upload(table, f"{key}_train", col_types)

    @staticmethod
    def _make_automl(key: str, settings: AutoMLSettings, max_runtime_s: int) -> Any:
        from h2o.automl import H2OAutoML

        arguments: dict[str, Any] = {
            "project_name": key,
            "max_runtime_secs": max_runtime_s,
            "seed": settings.seed,
            "nfolds": settings.nfolds,
            "sort_metric": settings.sort_metric,
            "stopping_metric": settings.stopping_metric,
            "verbosity": None,
        }
        optional = {
            "max_models": settings.max_models,
            "exclude_algos": None
            if settings.exclude_algos is None
            else list(settings.exclude_algos),
            "include_algos": None
            if settings.include_algos is None
            else list(settings.include_algos),
            "max_runtime_secs_per_model": settings.max_runtime_secs_per_model,
            "stopping_rounds": settings.stopping_rounds,
        }
        arguments.update({k: v for k, v in optional.items() if v is not None})
        return H2OAutoML(**arguments)

    def _train(self, run: _Run, frame: Any) -> None:
        from h2o.exceptions import H2OJobCancelled

        state: JobState = JobState.SUCCEEDED
        error: ProviderError | None = None
        try:
            if run.cancel_requested:
                state = JobState.CANCELLED
            else:
                schema = run.job.schema
                run.aml.train(
                    x=schema.safe_feature_names,
                    y=schema.target_safe_name,
                    training_frame=frame,
                )
                if run.aml.leader is None:
                    state, error = (
                        JobState.FAILED,
                        ProviderJobFailedError(
                            f"H2O AutoML {run.key} finished without a model in "
                            f"{run.max_runtime_s} s; raise budget.max_runtime_s",
                            provider=PROVIDER_NAME,
                            provider_job_id=run.key,
                            reason="NoModel",
                        ),
                    )
        except H2OJobCancelled:
            if run.cancel_requested:
                state = JobState.CANCELLED
            else:
                state, error = (
                    JobState.FAILED,
                    ProviderJobFailedError(
                        f"H2O AutoML {run.key} was cancelled on the cluster, "
                        "not by the broker",
                        provider=PROVIDER_NAME,
                        provider_job_id=run.key,
                        original_type="H2OJobCancelled",
                        reason="CancelledOutside",
                    ),
                )
        except Exception as exc:
            if run.cancel_requested:
                state = JobState.CANCELLED
            else:
                state, error = JobState.FAILED, _translate(exc, run.key)
        self._finish(run, state, error)

    def _finish(self, run: _Run, state: JobState, error: ProviderError | None) -> None:
        with self._lock:
            run.ended_mono = self.clock.monotonic()
            run.ended_at = self.clock.now()
            run.error = error
            run.state = state
            with contextlib.suppress(Exception):
                run.model_ids = self._model_ids(run)
        if error is not None:
            logger.warning("H2O AutoML %s failed: %s", run.key, error)
        else:
            logger.info("H2O AutoML %s ended %s", run.key, state.value)
        if state != JobState.SUCCEEDED and self.cluster is not None:
            # Nothing more can be read from a failed or cancelled run: free the JVM now
            # unless another run still uses it.
            with self._lock:
                busy = any(not r.state.terminal for r in self._runs.values())
            if not busy:
                self._stop_cluster()

    def _model_ids(self, run: _Run) -> list[str]:
        _activate(self._connection)
        leaderboard = run.aml.leaderboard
        header, rows = _read_csv_rows(leaderboard.get_frame_data())
        return [row[header.index("model_id")] for row in rows]

    # -- poll and cancel --------------------------------------------------------------

    def poll(self, ref: ProviderJobRef) -> ProviderStatus:
        """The run's state: queued until H2O starts the AutoML job, running with its
        progress, then succeeded, failed or cancelled."""
        run = self._run(ref)
        with self._lock:
            if not run.state.terminal:
                if run.cancel_requested:
                    self._deliver_cancel(run)
                new_state, secondary, progress = self._live_state(run)
                check_transition(run.state, new_state)
                run.state, run.secondary = new_state, secondary
            else:
                progress = 1.0 if run.state == JobState.SUCCEEDED else None
            return ProviderStatus(
                state=run.state,
                secondary=run.secondary,
                message=None if run.error is None else str(run.error),
                progress=progress,
                started_at=run.started_at,
                ended_at=run.ended_at,
                error=run.error,
            )

    @staticmethod
    def _live_state(run: _Run) -> tuple[JobState, str | None, float | None]:
        h2o_job = run.aml._job  # set once H2O accepted the AutoML build
        if run.cancel_requested:
            return (
                JobState.CANCELLING,
                None if h2o_job is None else h2o_job.status,
                None,
            )
        if h2o_job is None or h2o_job.status == "CREATED":
            return JobState.QUEUED, None if h2o_job is None else "CREATED", 0.0
        return JobState.RUNNING, h2o_job.status, float(h2o_job.progress)

    def cancel(self, ref: ProviderJobRef) -> None:
        """Cancel the AutoML job on the cluster; a no-op when it is ending or ended."""
        run = self._run(ref)
        with self._lock:
            if run.state.terminal or run.cancel_requested:
                return
            run.cancel_requested = True
            logger.info("H2O AutoML %s: cancel requested", run.key)
            self._deliver_cancel(run)

    def _deliver_cancel(self, run: _Run) -> None:
        import h2o

        h2o_job = run.aml._job
        if run.cancel_sent or h2o_job is None:
            return  # the thread checks the flag before H2O has a job; poll retries
        try:
            _activate(self._connection)
            h2o.api(f"POST /3/Jobs/{h2o_job.job_key}/cancel")
            run.cancel_sent = True
        except Exception as exc:
            logger.warning(
                "H2O refused to cancel %s (%s); stopping the node", run.key, exc
            )
            if self.cluster is None:
                raise TransientProviderError(
                    f"H2O did not accept the cancel of {run.key}: {exc}",
                    provider=PROVIDER_NAME,
                    provider_job_id=run.key,
                    original_type=type(exc).__name__,
                ) from None
            self._stop_cluster()
            run.cancel_sent = True

    # -- result and predict -----------------------------------------------------------

    def result(self, ref: ProviderJobRef, job: ProviderJob) -> ProviderResult:
        """Leaderboard, best model saved in ``job.run_dir/"model"``, and the cost."""
        import h2o
        from h2o.automl import get_leaderboard

        run = self._run(ref)
        if run.state != JobState.SUCCEEDED:
            raise ProviderJobFailedError(
                f"H2O AutoML {run.key} has no result: it is {run.state.value}",
                provider=PROVIDER_NAME,
                provider_job_id=run.key,
                reason="NoResult",
            )
        with self._lock:
            _activate(self._connection)
            board = get_leaderboard(run.aml, extra_columns="ALL")
            header, rows = _read_csv_rows(board.get_frame_data())
            h2o.remove(board)
            leader = run.aml.leader
            model_dir = job.run_dir / "model"
            model_format, export_note = self._save_model(run, leader, model_dir)
        notes = [
            f"ranked by H2O {run.settings.sort_metric} over {run.settings.nfolds}-fold "
            "cross-validation of the training rows",
            *run.settings.notes,
        ]
        if export_note is not None:
            notes.append(export_note)
        entries = leaderboard_entries(
            header, rows, notes=f"{run.settings.nfolds}-fold cross-validation"
        )

        runtime_s = (run.ended_mono or self.clock.monotonic()) - run.started_mono
        cost_usd, units = self.cost_for(runtime_s)
        units.update({"max_runtime_secs": run.max_runtime_s, "models": len(entries)})
        return ProviderResult(
            leaderboard=entries,
            best_model_id=leader.model_id,
            model_path=model_dir,
            model_format=model_format,
            provider_units=units,
            actual_cost_usd=cost_usd,
            runtime_s=runtime_s,
            notes=notes,
        )

    def cost_for(self, runtime_s: float) -> tuple[Decimal, dict[str, Any]]:
        """Cost of `runtime_s` seconds on the machine that runs H2O, billed per second.

        Returns:
            The cost in USD (6 decimals) and the units it was computed from.
        """
        if self.vm_sku is not None and self.vm_usd_per_hour is not None:
            rate, machine, source = (
                self.vm_usd_per_hour,
                self.vm_sku,
                "declared VM price",
            )
        else:
            rate, machine, source = self.local_rate_usd_per_hour, "local", "local rate"
        seconds = Decimal(str(round(runtime_s, 3)))
        cost = (rate * seconds / Decimal(3600)).quantize(
            Decimal("0.000001"), rounding=ROUND_HALF_UP
        )
        units = {
            "runtime_s": float(seconds),
            "machine": machine,
            "usd_per_hour": str(rate),
            "billing_unit": "second",
            "price_source": source,
        }
        return cost, units

    def billed_usd(self, ref: ProviderJobRef) -> Decimal | None:
        """Cost of the run so far (or of its whole life once it ended)."""
        run = self._run(ref)
        end = run.ended_mono if run.ended_mono is not None else self.clock.monotonic()
        return self.cost_for(end - run.started_mono)[0]

    def _save_model(
        self, run: _Run, leader: Any, model_dir: Path
    ) -> tuple[str, str | None]:
        """Write the leader into `model_dir` as a MOJO, else in H2O's binary format.

        Returns:
            The format written and, when it is the binary fallback, a note saying why.
        """
        model_dir.mkdir(parents=True, exist_ok=True)
        for name in (MOJO_FILE, GENMODEL_JAR, BINARY_FILE, "model.json"):
            (model_dir / name).unlink(missing_ok=True)  # left by an earlier attempt

        note = None
        try:
            extra = _export_mojo(leader, model_dir)
            model_format = MODEL_FORMAT
        except Exception as exc:
            # A client that gates MOJO export behind a licence refuses here; the binary
            # model needs no licence but scores only with this h2o version and a JVM.
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            note = (
                f"H2O did not export a MOJO ({type(exc).__name__}: {reason}); the "
                f"model was saved in H2O's binary format, which scores only with h2o "
                f"{_h2o_version()} and a Java runtime; pip install 'h2o<=3.46.0.6' "
                "for MOJO export"
            )
            logger.warning("%s", note)
            for name in (MOJO_FILE, GENMODEL_JAR):
                (model_dir / name).unlink(missing_ok=True)
            extra = _export_binary(leader, model_dir)
            model_format = BINARY_FORMAT

        manifest = {
            "format": model_format,
            **extra,
            **_model_description(run.job.schema, leader),
        }
        if note is not None:
            manifest["note"] = note
        (model_dir / "model.json").write_text(
            json.dumps(manifest, indent=2), encoding="utf-8"
        )
        logger.info(
            "H2O model %s saved to %s as %s", leader.model_id, model_dir, model_format
        )
        return model_format, note

    def predict(
        self, ref: ProviderJobRef, job: ProviderJob, frame: pd.DataFrame
    ) -> np.ndarray:
        """The best model's predictions on `frame`, scored on the cluster while it runs,
        else from the saved model."""
        import h2o

        run = self._run(ref)
        if self._connection is None or run.aml.leader is None:
            return load_model(job.run_dir / "model").predict_proba(frame)
        features = _feature_kinds(job.schema)
        table = prepare_features(frame, features)
        scored = self._upload(
            table, f"{run.key}_score_{uuid.uuid4().hex[:8]}", dict(features)
        )
        with self._lock:
            _activate(self._connection)
            leader = run.aml.leader
            predictions = leader.predict(scored)
            header, rows = _read_csv_rows(predictions.get_frame_data())
            h2o.remove([predictions, scored])
        domain = leader._model_json["output"]["domains"][-1]
        labels = [class_label(c) for c in job.schema.classes]
        return probabilities(header, rows, domain if labels else None, labels)

    # -- lifecycle --------------------------------------------------------------------

    def _run(self, ref: ProviderJobRef) -> _Run:
        with self._lock:
            try:
                return self._runs[ref.job_id]
            except KeyError:
                raise ProviderJobFailedError(
                    f"no H2O run {ref.job_id!r} in this provider; "
                    "an embedded node's runs end with the process that started them",
                    provider=PROVIDER_NAME,
                    provider_job_id=ref.job_id,
                    reason="NotFound",
                ) from None

    def find_by_idempotency_key(self, key: str) -> ProviderJobRef | None:
        with self._lock:
            name = self._by_key.get(key)
            return None if name is None else self._runs[name].ref

    def _stop_cluster(self) -> None:
        with self._lock:
            if self._connection is not None:
                with contextlib.suppress(Exception):
                    self._connection.close()
                self._connection = None
            if self.cluster is not None:
                self.cluster.stop()

    def _remove_created(self) -> None:
        import h2o

        keys: list[Any] = []
        for run in self._runs.values():
            keys += run.frame_keys + run.model_ids
            keys.append(run.aml)
        _activate(self._connection)
        for key in keys:
            try:
                h2o.remove(key)
            except Exception as exc:  # already gone, or never created
                logger.debug("H2O could not remove %s: %s", key, exc)

    def close(self) -> None:
        """Stop what this provider started: cancel live runs, then stop the embedded
        node (or, on a cluster, remove our frames and models). Safe to call twice."""
        if self._closed:
            return
        for run in list(self._runs.values()):
            if not run.state.terminal:
                with contextlib.suppress(ProviderError):
                    self.cancel(run.ref)
            if run.thread is not None:
                run.thread.join(timeout=60)
        if self.url is not None and self._connection is not None:
            with contextlib.suppress(Exception):
                self._remove_created()
        self._stop_cluster()
        if self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)
        self._closed = True

    def __enter__(self) -> H2OProvider:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _translate(exc: Exception, key: str) -> ProviderError:
    from h2o.exceptions import H2OConnectionError, H2OServerError

    if isinstance(exc, H2OConnectionError | ConnectionError):
        return TransientProviderError(
            f"lost the H2O cluster while {key} ran: {exc}",
            provider=PROVIDER_NAME,
            provider_job_id=key,
            original_type=type(exc).__name__,
        )
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return ProviderJobFailedError(
        f"H2O AutoML {key} failed: {text}",
        provider=PROVIDER_NAME,
        provider_job_id=key,
        original_type=type(exc).__name__,
        code=getattr(exc, "http_status", None)
        if isinstance(exc, H2OServerError)
        else None,
    )


def _h2o_key(job_id: str) -> str:
    return "broker_" + re.sub(r"[^A-Za-z0-9_]", "_", job_id)[:60]


def _money(name: str, value: Any) -> Decimal:
    if isinstance(value, float) or not isinstance(value, Decimal | int | str):
        raise ConfigurationError(
            f"{name} must be an exact amount such as Decimal('0.05'), got {value!r}"
        )
    amount = Decimal(value)
    if not amount.is_finite() or amount < 0:
        raise ConfigurationError(f"{name} must be a finite amount >= 0, got {value!r}")
    return amount


def _jsonable(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


# --- export -------------------------------------------------------------------------


def _h2o_version() -> str:
    import h2o

    return str(h2o.__version__)


def _export_mojo(leader: Any, model_dir: Path) -> dict[str, Any]:
    """Download the leader's MOJO as ``model.zip`` with the genmodel jar beside it."""
    written = Path(leader.download_mojo(str(model_dir), get_genmodel_jar=True))
    if written != model_dir / MOJO_FILE:
        os.replace(written, model_dir / MOJO_FILE)
    jar = model_dir / GENMODEL_JAR
    if not jar.is_file() or not (model_dir / MOJO_FILE).is_file():
        raise ProviderJobFailedError(
            f"H2O wrote no {MOJO_FILE} and {GENMODEL_JAR} into {model_dir}",
            provider=PROVIDER_NAME,
            reason="ExportFailed",
        )
    return {
        "mojo_file": MOJO_FILE,
        "genmodel_jar": GENMODEL_JAR,
        "genmodel_sha256": _sha256(jar),
    }


def _export_binary(leader: Any, model_dir: Path) -> dict[str, Any]:
    import h2o

    h2o.download_model(leader, path=str(model_dir), filename=BINARY_FILE)
    return {"model_file": BINARY_FILE}


def _model_description(schema: Schema, leader: Any) -> dict[str, Any]:
    """What a loader needs besides the model file: task, classes, features, versions.

    ``classes`` follow the schema (the job's order); ``domain`` is H2O's own order of
    the same classes, in which its prediction columns come.
    """
    domains = leader._model_json["output"]["domains"]
    return {
        "h2o_version": _h2o_version(),
        "model_id": leader.model_id,
        "algorithm": leader.algo,
        "task": schema.task.value,
        "target": schema.target_safe_name,
        "classes": [_jsonable(c) for c in schema.classes],
        "class_labels": [class_label(c) for c in schema.classes],
        "domain": domains[-1] if schema.task != Task.REGRESSION else None,
        "features": [
            {"safe_name": c.safe_name, "name": c.name, "h2o_type": h2o_type}
            for c, (_, h2o_type) in zip(
                schema.features, _feature_kinds(schema), strict=True
            )
        ],
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- the saved model ----------------------------------------------------------------


class _H2OSavedModel:
    """What both saved formats share: the manifest's task, classes and features."""

    def __init__(self, path: Path, manifest: dict[str, Any], java: str) -> None:
        self.path = path
        self.manifest = manifest
        self.java = java
        self.task = Task(manifest["task"])
        self.classes: list[Any] | None = manifest["classes"] or None
        self.class_labels: list[str] = manifest["class_labels"]
        self.features: list[tuple[str, str]] = [
            (f["safe_name"], f["h2o_type"]) for f in manifest["features"]
        ]

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """(n, k) probabilities in ``classes`` order; (n,) values for regression."""
        table = prepare_features(frame, self.features)
        with tempfile.TemporaryDirectory(prefix="automl-broker-h2o-score-") as scratch:
            source, target = Path(scratch) / "input.csv", Path(scratch) / "output.csv"
            _write_csv(table, source)
            self._score_csv(source, target, Path(scratch))
            header, rows = _read_csv_rows(target.read_text(encoding="utf-8"))
        if len(rows) != len(table):
            raise ProviderJobFailedError(
                f"scoring {len(table)} rows with the H2O model in {self.path} returned "
                f"{len(rows)} predictions",
                provider=PROVIDER_NAME,
                reason="PredictFailed",
            )
        return probabilities(
            header, rows, self.manifest.get("domain"), self.class_labels
        )

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Class labels (classification) or values (regression)."""
        import numpy as np

        scores = self.predict_proba(frame)
        if self.classes is None:
            return scores
        return np.asarray(self.classes, dtype=object)[scores.argmax(axis=1)]

    def _score_csv(self, source: Path, target: Path, scratch: Path) -> None:
        raise NotImplementedError

    def _run_scorer(self, command: list[str], env: dict[str, str] | None) -> None:
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                env=env,
                stdin=subprocess.DEVNULL,
                timeout=600,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ProviderJobFailedError(
                f"scoring with the H2O model in {self.path} took over 600 s",
                provider=PROVIDER_NAME,
                reason="PredictFailed",
            ) from None
        if done.returncode != 0:
            said = (done.stderr.strip() or done.stdout.strip())[-600:]
            raise ProviderJobFailedError(
                f"scoring with the H2O model in {self.path} failed "
                f"(exit {done.returncode}): {said}",
                provider=PROVIDER_NAME,
                reason="PredictFailed",
            )


class H2OMojoModel(_H2OSavedModel):
    """A MOJO saved by :class:`H2OProvider`, scored by H2O's own PredictCsv tool.

    Each call runs ``java -cp h2o-genmodel.jar hex.genmodel.tools.PredictCsv`` on a
    temporary CSV and reads its output: no H2O node starts, and the h2o Python package
    is not needed.

    Example:
        >>> model = load_model("runs/job-1/model")  # doctest: +SKIP
        >>> model.predict_proba(frame)  # doctest: +SKIP
    """

    def __init__(
        self, path: Path, manifest: dict[str, Any], java: str, heap_mib: int
    ) -> None:
        super().__init__(path, manifest, java)
        self.heap_mib = heap_mib
        self.mojo = path / manifest["mojo_file"]
        self.genmodel_jar = path / manifest["genmodel_jar"]

    def _score_csv(self, source: Path, target: Path, scratch: Path) -> None:
        # TODO(h2o-mojo-csv): PredictCsv reads "NA", "N/A" and "-" as missing and a
        # backslash as an escape, where the cluster's parser may read a category; such
        # values can score differently from the cluster until the input is escaped.
        command = [
            self.java,
            f"-Xmx{self.heap_mib}m",
            "-XX:-UsePerfData",  # no hsperfdata folder left in /tmp
            f"-Djava.io.tmpdir={scratch}",
            "-cp",
            str(self.genmodel_jar),
            PREDICT_CSV_CLASS,
            "--mojo",
            str(self.mojo),
            "--input",
            str(source),
            "--output",
            str(target),
        ]  # without --decimal PredictCsv writes exact hexadecimal doubles
        self._run_scorer(command, env=None)
        if not target.is_file():
            raise ProviderJobFailedError(
                f"H2O's PredictCsv wrote no predictions for the model in {self.path}",
                provider=PROVIDER_NAME,
                reason="PredictFailed",
            )


class H2OBinaryModel(_H2OSavedModel):
    """A model saved in H2O's binary format, scored by a private node in a child.

    Each call starts an H2O node, loads the model, predicts and stops the node, so
    nothing stays running and the h2o client of the calling process is not touched.
    """

    def _score_csv(self, source: Path, target: Path, scratch: Path) -> None:
        command = [
            sys.executable,
            "-m",
            "broker.providers.h2o",
            "score",
            str(self.path),
            str(source),
            str(target),
            "--java",
            self.java,
        ]
        package_root = str(Path(__file__).resolve().parents[2])
        env = {
            **os.environ,
            "DO_NOT_TRACK": "1",
            "PYTHONPATH": os.pathsep.join(
                p for p in (package_root, os.environ.get("PYTHONPATH")) if p
            ),
        }
        self._run_scorer(command, env=env)


def load_model(
    path: str | Path, *, heap_mib: int = DEFAULT_SCORING_HEAP_MIB
) -> H2OMojoModel | H2OBinaryModel:
    """Load a model that :class:`H2OProvider` saved into a run folder.

    Args:
        path: The ``model`` folder (with ``model.json``).
        heap_mib: Java heap for scoring a MOJO.

    Raises:
        ConfigurationError: not an H2O model folder, a file is missing or altered, or
            a binary model needs another h2o version.
        ProviderUnavailableError: no Java runtime to score with.
    """
    folder = Path(path)
    try:
        manifest = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            f"{folder} holds no readable model.json: {exc}"
        ) from None
    model_format = manifest.get("format")
    if model_format not in (MODEL_FORMAT, BINARY_FORMAT):
        raise ConfigurationError(
            f"{folder} holds a {model_format!r} model, not {MODEL_FORMAT!r} or "
            f"{BINARY_FORMAT!r}; load it with its own provider's load_model"
        )

    if model_format == MODEL_FORMAT:
        _check_mojo_folder(folder, manifest)
    else:
        _check_binary_folder(folder, manifest)
    java = find_java()
    if java is None:
        raise ProviderUnavailableError(_java_missing_message(), provider=PROVIDER_NAME)

    if model_format == MODEL_FORMAT:
        return H2OMojoModel(folder, manifest, java, heap_mib)
    return H2OBinaryModel(folder, manifest, java)


def _model_file(folder: Path, manifest: dict[str, Any], key: str) -> Path:
    name = str(manifest.get(key, ""))
    if not name or Path(name).name != name or not (folder / name).is_file():
        raise ConfigurationError(f"{folder} lacks its model file {name!r} ({key})")
    return folder / name


def _check_mojo_folder(folder: Path, manifest: dict[str, Any]) -> None:
    _model_file(folder, manifest, "mojo_file")
    jar = _model_file(folder, manifest, "genmodel_jar")
    # The jar is Java code that scoring runs: refuse one that differs from the jar
    # written at export (a damaged copy, or a swapped file).
    expected = manifest.get("genmodel_sha256")
    if expected is not None and _sha256(jar) != expected:
        raise ConfigurationError(
            f"{jar} differs from the {GENMODEL_JAR} saved with the model (sha256 "
            "mismatch); copy the model folder again from its run"
        )


def _check_binary_folder(folder: Path, manifest: dict[str, Any]) -> None:
    _model_file(folder, manifest, "model_file")
    try:
        installed = _h2o_version()
    except ImportError:
        raise ConfigurationError(
            f"the model in {folder} is in H2O's binary format, which needs the h2o "
            f"package; pip install h2o=={manifest.get('h2o_version')}"
        ) from None
    saved_version = manifest.get("h2o_version")
    if saved_version != installed:
        raise ConfigurationError(
            f"the model in {folder} was saved by h2o {saved_version} but h2o "
            f"{installed} is installed; pip install h2o=={saved_version}"
        )


def _score_main(argv: list[str]) -> int:
    """Child-process entry: score a CSV with a saved model on a short-lived node."""
    import h2o

    parser = argparse.ArgumentParser(prog="python -m broker.providers.h2o")
    parser.add_argument("command", choices=["score"])
    parser.add_argument("model_dir")
    parser.add_argument("input_csv")
    parser.add_argument("output_csv")
    parser.add_argument("--java", default="java")
    parser.add_argument("--max-mem-gib", type=float, default=1.0)
    args = parser.parse_args(argv)

    folder = Path(args.model_dir)
    manifest = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    node = EmbeddedCluster(java=args.java, max_mem_gib=args.max_mem_gib)
    node.start()
    connection = None
    try:
        connection = _connect(node.url)
        model = h2o.upload_model(str(folder / manifest["model_file"]))
        col_types = {f["safe_name"]: f["h2o_type"] for f in manifest["features"]}
        frame = h2o.upload_file(args.input_csv, header=1, sep=",", col_types=col_types)
        predictions = model.predict(frame)
        header, rows = _read_csv_rows(predictions.get_frame_data())
        with open(args.output_csv, "w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(header)
            writer.writerows(rows)
    finally:
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()
        node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(_score_main(sys.argv[1:]))
