"""What earlier local searches learned, kept to start new searches on similar data.

After a search, its best configurations are written with the meta-features of its data
(rows, columns, numeric and categorical column counts, task, class balance) to
``local-searches.json`` in the broker's home: ``$AUTOML_BROKER_HOME`` when set, else the
user's data folder. A new search of the same task, metric and kind of network looks up
the nearest earlier dataset; when it is close enough the new search tries that search's
best configurations first and says so in its notes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import filelock

from broker.errors import ConfigurationError

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

HOME_ENV = "AUTOML_BROKER_HOME"
FILE_NAME = "local-searches.json"
MAX_RECORDS = 200
# Largest distance (see DatasetMeta.distance) at which a dataset counts as similar.
SIMILAR_DISTANCE = 1.0
# Seconds a search waits for another process to finish writing the results file.
LOCK_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class DatasetMeta:
    """The meta-features that decide whether two datasets are alike."""

    task: str
    rows: int
    columns: int
    numeric_columns: int
    categorical_columns: int
    minority_share: float  # smallest class share; 1.0 for regression

    @classmethod
    def describe(
        cls,
        frame: pd.DataFrame,
        *,
        target: str,
        task: str,
        numeric: Sequence[str],
        categorical: Sequence[str],
    ) -> DatasetMeta:
        minority = 1.0
        if task != "regression":
            shares = frame[target].value_counts(normalize=True)
            minority = float(shares.min()) if len(shares) else 1.0
        return cls(
            task=task,
            rows=len(frame),
            columns=len(numeric) + len(categorical),
            numeric_columns=len(numeric),
            categorical_columns=len(categorical),
            minority_share=round(minority, 4),
        )

    def distance(self, other: DatasetMeta) -> float:
        """0 for alike datasets; infinite for different tasks.

        Rows and columns count on a log scale (twice the rows adds 0.35), the numeric
        share and the minority class share on their own scale.
        """
        if self.task != other.task:
            return math.inf
        return (
            0.5 * abs(math.log((self.rows + 1) / (other.rows + 1)))
            + 0.5 * abs(math.log((self.columns + 1) / (other.columns + 1)))
            + abs(self._numeric_share - other._numeric_share)
            + 2.0 * abs(self.minority_share - other.minority_share)
        )

    @property
    def _numeric_share(self) -> float:
        return self.numeric_columns / max(1, self.columns)

    def summary(self) -> str:
        return (
            f"{self.rows} rows, {self.columns} columns ({self.numeric_columns} "
            f"numeric), {self.task}"
        )


@dataclass(frozen=True)
class WarmStart:
    """Configurations to try first and the note that says where they come from."""

    configs: list[dict[str, Any]]
    note: str
    distance: float


class KnowledgeBase:
    """The file of earlier searches' results.

    Args:
        path: the JSON file; default ``$AUTOML_BROKER_HOME/local-searches.json`` or the
            user data folder's ``automl-broker/local-searches.json``.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()

    def records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        try:
            payload = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            logger.warning(
                "earlier local searches in %s are unreadable (%s); starting afresh",
                self.path,
                exc,
            )
            return []
        searches = payload.get("searches") if isinstance(payload, dict) else None
        if not isinstance(searches, list):
            logger.warning(
                "earlier local searches in %s are not a mapping with a 'searches' list "
                "(found %s); starting afresh",
                self.path,
                _shape(payload),
            )
            return []

        kept = [record for record in searches if _well_formed(record)]
        if len(kept) < len(searches):
            logger.warning(
                "skipped %d malformed record(s) of %d in %s",
                len(searches) - len(kept),
                len(searches),
                self.path,
            )
        return kept

    def suggest(
        self,
        meta: DatasetMeta,
        *,
        space_kind: str,
        metric: str,
        accept: Any = None,
        limit: int = 3,
    ) -> WarmStart | None:
        """The best configurations of the most similar earlier search, if any is close.

        Args:
            accept: a predicate on a configuration (the current space's `contains`);
                configurations it refuses are skipped.
        """
        best: tuple[float, dict[str, Any]] | None = None
        for record in self.records():
            if record.get("space") != space_kind or record.get("metric") != metric:
                continue
            try:
                distance = meta.distance(DatasetMeta(**record["meta"]))
            except (TypeError, KeyError):
                continue
            if distance <= SIMILAR_DISTANCE and (best is None or distance < best[0]):
                best = (distance, record)
        if best is None:
            return None

        distance, record = best
        configs = [
            dict(entry["config"])
            for entry in record.get("best", [])
            if accept is None or accept(entry["config"])
        ][:limit]
        if not configs:
            return None
        earlier = DatasetMeta(**record["meta"])
        scores = ", ".join(f"{e['score']:.4f}" for e in record["best"][: len(configs)])
        note = (
            f"started from {len(configs)} configuration(s) of an earlier search on a "
            f"similar dataset ({earlier.summary()}, distance {distance:.2f}, "
            f"{record['metric']} {scores} there, recorded {record.get('at', '?')})"
        )
        return WarmStart(configs=configs, note=note, distance=distance)

    def record(
        self,
        meta: DatasetMeta,
        *,
        space_kind: str,
        metric: str,
        best: Sequence[tuple[Mapping[str, Any], float]],
        strategy: str,
    ) -> None:
        """Add a search's best (configuration, score) pairs, best first."""
        entries = [
            {"config": _jsonable(config), "score": float(score)}
            for config, score in best
            if not math.isnan(score)
        ]
        if not entries:
            return
        record = {
            "meta": asdict(meta),
            "space": space_kind,
            "metric": metric,
            "strategy": strategy,
            "best": entries,
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

        # Searches in other processes may end at the same moment: the read, append and
        # replace happen under a lock file beside the results so no record is lost.
        lock = self._lock()
        try:
            with lock:
                records = self.records()
                records.append(record)
                self._write(records[-MAX_RECORDS:])
        except filelock.Timeout:
            raise ConfigurationError(
                f"another search held {str(lock.lock_file)!r} for "
                f"{LOCK_TIMEOUT_S:g} s; if no automl-broker search is running, delete "
                "that file, or turn warm_start off"
            ) from None

    def _lock(self) -> filelock.FileLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot write earlier search results to {str(self.path)!r}: {exc}; "
                f"set AUTOML_BROKER_HOME to a writable folder or turn warm_start off"
            ) from None
        return filelock.FileLock(
            self.path.with_name(self.path.name + ".lock"), timeout=LOCK_TIMEOUT_S
        )

    def _write(self, records: list[dict[str, Any]]) -> None:
        try:
            handle, temporary = tempfile.mkstemp(
                dir=self.path.parent, prefix=".local-searches", suffix=".json"
            )
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                json.dump({"version": 1, "searches": records}, file, indent=1)
            os.replace(temporary, self.path)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot write earlier search results to {str(self.path)!r}: {exc}; "
                f"set AUTOML_BROKER_HOME to a writable folder or turn warm_start off"
            ) from None


def default_path() -> Path:
    home = os.environ.get(HOME_ENV, "").strip()
    if home:
        return Path(home).expanduser() / FILE_NAME
    import platformdirs

    return (
        Path(platformdirs.user_data_dir("automl-broker", appauthor=False)) / FILE_NAME
    )


def _well_formed(record: Any) -> bool:
    """True for a record shaped as :meth:`KnowledgeBase.record` writes it."""
    if not isinstance(record, dict):
        return False
    if not all(isinstance(record.get(key), str) for key in ("space", "metric")):
        return False
    meta, best = record.get("meta"), record.get("best")
    if not isinstance(meta, dict) or not isinstance(best, list):
        return False
    try:
        DatasetMeta(**meta)
    except TypeError:
        return False
    return all(
        isinstance(entry, dict)
        and isinstance(entry.get("config"), dict)
        and isinstance(entry.get("score"), int | float)
        and not isinstance(entry.get("score"), bool)
        for entry in best
    )


def _shape(payload: Any) -> str:
    if isinstance(payload, dict):
        return f"a mapping whose 'searches' is {type(payload.get('searches')).__name__}"
    return "null" if payload is None else type(payload).__name__


def _jsonable(config: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        out[key] = value.item() if hasattr(value, "item") else value
    return out
