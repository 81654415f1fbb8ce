"""Reading and typing the user's table, before any money is spent.

Intake turns a CSV file or a DataFrame into a :class:`Dataset`: the table with the
user's column names (whitespace around them stripped, rows without a label removed) and
a :class:`~broker.schema.Schema` that says what each column is, which columns were
dropped and why, what the task is and which classes exist. Every problem found here
raises an :class:`~broker.errors.InputError` subclass that names the problem, the value
and the fix, at zero cost, before a backend is chosen.

Example:
    >>> import pandas as pd
    >>> frame = pd.DataFrame({"size": [1, 5, 2, 7], "colour": list("rbrg"),
    ...                       "label": ["yes", "no", "yes", "no"]})
    >>> from broker.spec import JobSpec
    >>> dataset = load_dataset(JobSpec(data=frame, target="label"))
    >>> dataset.schema.task.value, dataset.schema.classes, dataset.schema.positive_class
    ('binary', ('no', 'yes'), 'yes')
"""

from __future__ import annotations

import codecs
import csv
import difflib
import gzip
import io
import itertools
import logging
import math
import os
import re
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from broker.errors import (
    ColumnNotFoundError,
    ConfigurationError,
    DataReadError,
    DataWarning,
    DuplicateColumnError,
    EncodingError,
    InputError,
    NoUsableFeaturesError,
    TargetError,
    TargetMissingError,
    TargetSingleClassError,
)
from broker.schema import Column, ColumnKind, NumberFormat, Schema
from broker.spec import Task
from broker.text_numbers import (
    DECIMAL_COMMA,
    EUROPEAN_NUMBER,
    GROUPED_NUMBER,
    PLAIN_NUMBER,
    european,
    is_percentage,
    percent_example,
    percent_format,
    percent_number,
    percent_value,
    percentages,
    ungrouped,
)

if TYPE_CHECKING:
    from broker.spec import JobSpec

logger = logging.getLogger(__name__)

DELIMITERS = (",", ";", "\t", "|")
# Integer targets with at most this many distinct values are read as classes.
MAX_INTEGER_CLASSES = 10
# Safe names longer than this are cut; some backends refuse long column names.
MAX_SAFE_NAME_LENGTH = 64

_SNIFF_CHARS = 65536
_SNIFF_ROWS = 50
_TYPE_SAMPLE = 200
_SAFE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9]+")
_ID_NAME = re.compile(r"(?:^|[_\W])(?:id|uuid|guid|key)$|^(?:index|rowid)$")
_CAMEL_ID = re.compile(r"[a-z](?:Id|ID)$")
_ISO_DATE = re.compile(
    r"^\d{4}[-/]\d{1,2}[-/]\d{1,2}"
    r"(?:[ T]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?$"
)
# the field separator read_table found; a semicolon marks a decimal-comma table
DELIMITER_ATTR = "broker_delimiter"
_TRANSLITERATE = str.maketrans(
    {"ß": "ss", "æ": "ae", "Æ": "AE", "ø": "o", "Ø": "O", "œ": "oe", "Œ": "OE",
     "ł": "l", "Ł": "L", "đ": "d", "Đ": "D", "þ": "th", "Þ": "Th"}
)  # fmt: skip
# Lower-cased label pairs whose positive member is obvious: (negative, positive).
_NATURAL_PAIRS = {
    frozenset(pair): pair[1]
    for pair in (
        ("no", "yes"),
        ("n", "y"),
        ("false", "true"),
        ("f", "t"),
        ("negative", "positive"),
        ("neg", "pos"),
        ("0", "1"),
        ("-1", "1"),
    )
}


@dataclass(frozen=True)
class Dataset:
    """A table after intake.

    Attributes:
        frame: The rows with the user's column names (stripped of surrounding
            whitespace), rows without a label removed, index reset to 0..n-1, and the
            target's labels normalised to the values in ``schema.classes``.
        schema: What each column is, the task, the classes and what was dropped.
        source: Where the table came from (a path, or a DataFrame's shape).
    """

    frame: pd.DataFrame
    schema: Schema
    source: str

    @property
    def n_rows(self) -> int:
        return len(self.frame)

    @property
    def y(self) -> pd.Series:
        return self.frame[self.schema.target]


@dataclass(frozen=True)
class HoldoutSplit:
    """Row positions into ``Dataset.frame``: training rows and scoring rows."""

    train_index: np.ndarray[Any, Any]
    test_index: np.ndarray[Any, Any]
    fraction: float = 0.0
    seed: int = 0
    stratified: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "train_index": self.train_index.tolist(),
            "test_index": self.test_index.tolist(),
            "fraction": self.fraction,
            "seed": self.seed,
            "stratified": self.stratified,
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> HoldoutSplit:
        return cls(
            train_index=np.asarray(payload["train_index"], dtype=np.int64),
            test_index=np.asarray(payload["test_index"], dtype=np.int64),
            fraction=float(payload.get("fraction", 0.0)),
            seed=int(payload.get("seed", 0)),
            stratified=bool(payload.get("stratified", False)),
        )


# --- reading --------------------------------------------------------------------------


def read_table(
    source: str | Path | pd.DataFrame, *, delimiter: str | None = None
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Read a CSV file (plain or ``.gz``) or take a DataFrame, with clean column names.

    Whitespace around column names is stripped (inner spaces are kept); a
    :class:`~broker.errors.DataWarning` lists each renamed column.

    Args:
        source: A path to a CSV file or a pandas DataFrame.
        delimiter: The field separator; sniffed from comma, semicolon, tab and pipe
            when None.

    Returns:
        The table and a mapping from each renamed raw name to its stripped name.

    Raises:
        DataReadError: The file is missing, empty, not a CSV, or has ragged rows.
        EncodingError: The bytes are not UTF-8 (or UTF-16/32 with a byte-order mark).
        DuplicateColumnError: Two columns share a name after stripping.
    """
    if isinstance(source, pd.DataFrame):
        if isinstance(source.columns, pd.MultiIndex):
            raise DataReadError(
                "the DataFrame has multi-level column names; flatten them to one level "
                "of text names first"
            )
        names, renamed = _clean_names([str(c) for c in source.columns])
        frame = source
        if names != list(source.columns):
            frame = source.set_axis(names, axis="columns")
        return frame.reset_index(drop=True), renamed

    path = Path(source)
    text = _decode(_read_bytes(path), path)
    if delimiter is not None and len(delimiter) != 1:
        raise ConfigurationError(
            f"delimiter must be a single character, got {delimiter!r}; "
            f"use one of {', '.join(repr(d) for d in DELIMITERS)}"
        )
    sep = delimiter or _sniff_delimiter(text)
    raw_names = next(csv.reader(io.StringIO(text), delimiter=sep), None)
    if not raw_names:
        raise DataReadError(
            f"{str(path)!r} is empty; it needs a header row and data rows"
        )
    names, renamed = _clean_names(raw_names)
    _check_field_counts(text, sep, len(names), path)

    try:
        frame = pd.read_csv(
            io.StringIO(text), sep=sep, header=0, names=names, index_col=False
        )
    except (pd.errors.ParserError, ValueError) as exc:
        raise DataReadError(
            f"{str(path)!r} cannot be read as a {_delimiter_word(sep)}-separated "
            f"table: {exc}. Check that every row has {len(names)} fields and that "
            f"values holding the separator are quoted"
        ) from None
    if frame.empty:
        raise DataReadError(f"{str(path)!r} has a header but no data rows")
    frame.attrs[DELIMITER_ATTR] = sep
    logger.debug(
        "read %s: %d rows, %d columns, separator %r",
        path,
        len(frame),
        len(names),
        sep,
    )
    return frame, renamed


def _check_field_counts(text: str, sep: str, expected: int, path: Path) -> None:
    """Refuse rows with fewer or more fields than the header: pandas would fill short
    rows with blanks without a word, shifting what the row means."""
    reader = csv.reader(io.StringIO(text), delimiter=sep)
    next(reader, None)
    for row in reader:
        if row and len(row) != expected:
            raise DataReadError(
                f"{str(path)!r} line {reader.line_num} has {len(row)} field(s) where the "
                f"header has {expected}; fix that row (quote values that hold the "
                f"separator {sep!r}) and try again"
            )


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        if path.is_absolute():
            raise DataReadError(
                f"data file {str(path)!r} does not exist; check the path (in a spec "
                "file, a relative data path is read from the spec file's folder)"
            )
        raise DataReadError(
            f"data file {str(path)!r} does not exist (looked for "
            f"{str(path.resolve())!r}); check the path, which is relative to the "
            f"current folder {os.getcwd()!r}"
        )
    if path.is_dir():
        raise DataReadError(f"{str(path)!r} is a folder; pass the path of one CSV file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataReadError(f"cannot read {str(path)!r}: {exc.strerror}") from None

    if path.suffix.lower() == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataReadError(
                f"{str(path)!r} ends in .gz but is not a readable gzip file ({exc})"
            ) from None
    if raw.startswith(b"PK\x03\x04"):
        raise DataReadError(
            f"{str(path)!r} is a zip archive (an Excel workbook?); export it as CSV"
        )
    if raw.startswith(b"PAR1"):
        raise DataReadError(f"{str(path)!r} is a Parquet file; export it as CSV")
    return raw


def _decode(raw: bytes, path: Path) -> str:
    boms = (
        (codecs.BOM_UTF32_LE, "utf-32"),
        (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    )
    encoding = next((enc for bom, enc in boms if raw.startswith(bom)), "utf-8")
    if encoding == "utf-8" and b"\x00" in raw[:4096]:
        raise EncodingError(
            f"{str(path)!r} holds NUL bytes, as UTF-16 text without a byte-order mark "
            f"does; save it as UTF-8",
            encoding="utf-16 (no byte-order mark)",
        )

    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        bad = raw[exc.start : exc.start + 4].hex(" ")
        raise EncodingError(
            f"{str(path)!r} is not valid {encoding}: byte(s) {bad} at offset "
            f"{exc.start} cannot be decoded. Save the file as UTF-8 (for example "
            f"'CSV UTF-8' in a spreadsheet program) and try again",
            encoding=encoding,
        ) from None
    if encoding != "utf-8":
        logger.debug("decoded %s as %s", path, encoding)
    return text.lstrip("\ufeff")


def _sniff_delimiter(text: str) -> str:
    sample = text[:_SNIFF_CHARS]
    if len(text) > _SNIFF_CHARS and "\n" in sample:
        sample = sample.rsplit("\n", 1)[0]  # drop a line cut in the middle

    best, best_score = ",", (0.0, 1)
    for candidate in DELIMITERS:
        reader = csv.reader(io.StringIO(sample), delimiter=candidate)
        rows = [r for r in itertools.islice(reader, _SNIFF_ROWS) if r]
        if not rows or len(rows[0]) < 2:
            continue
        width = len(rows[0])
        score = (sum(len(r) == width for r in rows) / len(rows), width)
        if score > best_score:
            best, best_score = candidate, score
    return best


def _delimiter_word(sep: str) -> str:
    return {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}.get(
        sep, repr(sep)
    )


def _clean_names(raw_names: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    names: list[str] = []
    renamed: list[tuple[str, str]] = []
    for position, raw in enumerate(raw_names, start=1):
        name = raw.strip()
        if not name:
            name = f"column_{position}"
        if name != raw:
            renamed.append((raw, name))
        names.append(name)

    positions: dict[str, list[int]] = {}
    for position, name in enumerate(names, start=1):
        positions.setdefault(name, []).append(position)
    duplicates = {name: where for name, where in positions.items() if len(where) > 1}
    if duplicates:
        described = "; ".join(
            f"{name!r} at positions {_and_join(where)} (raw: "
            f"{', '.join(repr(raw_names[p - 1]) for p in where)})"
            for name, where in duplicates.items()
        )
        raise DuplicateColumnError(
            f"duplicate column names: {described} (positions are 1-based). Give each "
            f"column a distinct name in the header",
            duplicates=duplicates,
        )

    if renamed:
        warnings.warn(
            f"stripped whitespace around {len(renamed)} column name(s): "
            + ", ".join(f"{raw!r} -> {name!r}" for raw, name in renamed),
            DataWarning,
            stacklevel=3,
        )
    return names, dict(renamed)


def _and_join(items: Sequence[Any]) -> str:
    text = [str(i) for i in items]
    return text[0] if len(text) == 1 else ", ".join(text[:-1]) + " and " + text[-1]


# --- the dataset ----------------------------------------------------------------------


def load_dataset(spec: JobSpec) -> Dataset:
    """Read, type and check the spec's data.

    Args:
        spec: The job spec; reads ``data``, ``target``, ``task``, ``ignore``,
            ``delimiter`` and ``metric``.

    Returns:
        The :class:`Dataset`.

    Raises:
        InputError: Any problem with the file, the columns or the target (see
            :func:`read_table` and :func:`build_schema`), or a metric that does not fit
            the task.
    """
    frame, renamed = read_table(spec.data, delimiter=spec.delimiter)
    sep = frame.attrs.get(DELIMITER_ATTR)
    columns = [str(c) for c in frame.columns]
    parsed = frame[spec.target.strip()] if spec.target.strip() in columns else None
    try:
        frame, schema = build_schema(
            frame,
            target=spec.target,
            task=spec.task,
            ignore=spec.ignore,
            renamed=renamed,
        )
    except (TargetSingleClassError, TargetMissingError) as exc:
        hint = _missing_spelling_hint(spec, sep, columns, parsed)
        if not hint:
            raise
        if isinstance(exc, TargetSingleClassError):
            raise TargetSingleClassError(
                f"{exc}; {hint}", column=exc.column, value=exc.value
            ) from None
        raise TargetMissingError(f"{exc}; {hint}") from None
    if schema.dropped_target_rows:
        hint = _missing_spelling_hint(spec, sep, columns, parsed)
        if hint:
            warnings.warn(hint, DataWarning, stacklevel=2)
    if spec.metric is not None:
        _check_metric_fits(spec.metric, schema.task)

    logger.info(
        "loaded %s: %d rows, %d features, task %s",
        spec.data_label,
        schema.n_rows,
        len(schema.features),
        schema.task.value,
    )
    return Dataset(frame=frame, schema=schema, source=spec.data_label)


def _missing_spelling_hint(
    spec: JobSpec, sep: str | None, columns: list[str], parsed: pd.Series | None
) -> str:
    """Which words in the file's target column were read as missing values (pandas
    reads NA, N/A, null, None, NaN and others so), for a label such as "NA" (North
    America) that was meant; "" when none, or when the data is not a file.

    `parsed`: the target column as read; the file's text for it is read again, as
    written, only here (when rows of the target were missing).
    """
    if not isinstance(spec.data, Path) or sep is None or parsed is None:
        return ""
    target = str(parsed.name)
    try:
        text = _decode(_read_bytes(spec.data), spec.data)
        written = pd.read_csv(
            io.StringIO(text),
            sep=sep,
            header=0,
            names=columns,
            usecols=[target],
            dtype=str,
            keep_default_na=False,
            index_col=False,
        )[target]
    except Exception:  # the hint is a courtesy: never fail the read for it
        return ""
    if len(written) != len(parsed):
        return ""
    words = sorted(
        {
            raw.strip()
            for raw, value in zip(written, parsed, strict=True)
            if isinstance(raw, str) and raw.strip() and pd.isna(value)
        }
    )
    if not words:
        return ""
    shown = ", ".join(repr(w) for w in words[:5])
    return (
        f"the target {target!r} was read as missing where it is written {shown}, "
        f"spellings of a missing value; if one is a label, write it another way (such "
        f"as 'N.A.') or pass the table as a DataFrame"
    )


def build_schema(
    frame: pd.DataFrame,
    *,
    target: str,
    task: Task = Task.AUTO,
    ignore: Iterable[str] = (),
    renamed: dict[str, str] | None = None,
) -> tuple[pd.DataFrame, Schema]:
    """Type every column, check the target and settle the task.

    Args:
        frame: A table with clean, unique column names (as :func:`read_table` returns).
        target: The column to predict.
        task: The task asked for; ``Task.AUTO`` infers it from the labels.
        ignore: Columns to leave out of the features.
        renamed: Raw to stripped names, recorded in the schema.

    Returns:
        The frame without rows of missing target (index reset, labels normalised) and
        its :class:`Schema`.

    Raises:
        ColumnNotFoundError: The target or an ignored column is not in the table.
        ConfigurationError: The target is ignored, or the task does not fit the labels.
        TargetMissingError: Every label is missing.
        TargetSingleClassError: The labels hold one class.
        NoUsableFeaturesError: Every feature column was dropped.

    Warns:
        DataWarning: Rows were dropped for a missing or infinite label; infinite
            feature values were set to missing; text columns of numbers with thousands
            separators ("1,234,567") or of percentages ("12.5%") were read as numbers;
            a column of numbers with decimal commas, or of percentages beside a few
            other values, stays text.
    """
    columns = [str(c) for c in frame.columns]
    target = target.strip()
    _require_columns([target], columns, role="target")
    ignored = [name.strip() for name in ignore]
    _require_columns(ignored, columns, role="ignore")
    if target in ignored:
        raise ConfigurationError(
            f"the target {target!r} is also in the ignore list; remove it from ignore"
        )

    decimal_comma = frame.attrs.get(DELIMITER_ATTR) == ";"
    frame, dropped_rows = _drop_missing_target(frame, target)
    read = _target_as_numbers(frame[target], task, decimal_comma)
    target_format = None
    if read is None:
        labels, resolved, classes = _resolve_task(frame[target], target, task)
    else:
        numbers, how, number_format = read
        # the task follows the numbers as written: "10%", "20%", "30%" are 3 classes
        labels, resolved, classes = _resolve_task(numbers, target, task)
        if resolved == Task.REGRESSION:
            if number_format is not None and number_format.is_percent:
                labels = percentages(frame[target], number_format, decimal_comma)
            target_format = number_format
            warnings.warn(
                f"read the target {target!r} {how}", DataWarning, stacklevel=3
            )
        else:  # a few whole numbers are classes: keep the labels as written
            labels, classes = _spelled_as_written(labels, classes, frame[target])
    if resolved == Task.REGRESSION and decimal_comma and target_format is None:
        target_format = NumberFormat.DECIMAL_POINT  # numbers pandas read
    frame[target] = labels
    features = [name for name in columns if name != target and name not in ignored]
    formats = _read_text_numbers(frame, features, decimal_comma)
    _infinite_as_missing(frame, features)

    safe = dict(zip(columns, make_safe_names(columns), strict=True))
    typed: list[Column] = []
    for name in columns:
        if name == target:
            column = _target_column(name, safe[name], labels, len(dropped_rows))
            typed.append(replace(column, number_format=target_format))
        elif name in ignored:
            typed.append(_ignored_column(name, safe[name], frame[name]))
        else:
            column = _typed_column(name, safe[name], frame[name])
            if column.kind == ColumnKind.NUMERIC:
                # a semicolon table's other numbers are as pandas read them
                default = NumberFormat.DECIMAL_POINT if decimal_comma else None
                column = replace(column, number_format=formats.get(name, default))
            typed.append(column)
    _require_features(typed, target)
    positive = _positive_class(labels, classes) if resolved == Task.BINARY else None

    schema = Schema(
        columns=tuple(typed),
        target=target,
        target_safe_name=safe[target],
        task=resolved,
        classes=tuple(classes),
        positive_class=positive,
        n_rows=len(frame),
        n_rows_dropped_missing_target=len(dropped_rows),
        dropped_target_rows=tuple(dropped_rows),
        class_counts=_class_counts(labels, classes),
        renamed_columns=dict(renamed or {}),
        decimal_comma=decimal_comma,
    )
    for column in typed:
        if column.dropped_reason:
            logger.debug("column %r dropped: %s", column.name, column.dropped_reason)
    return frame, schema


def _read_text_numbers(
    frame: pd.DataFrame, names: Sequence[str], decimal_comma: bool = False
) -> dict[str, NumberFormat]:
    """Turn text columns of numbers written with separators or as percentages into
    numbers, in place, with a DataWarning naming them; returns the number formats of
    the columns read as percentages, by name.

    In a semicolon-separated table (`decimal_comma`) the comma is the decimal mark and
    the dot groups thousands ("7.876,63"), as where such files are usual; elsewhere
    the comma groups thousands ("1,234,567", "1,234.5"), and a column whose commas
    only a decimal mark explains ("0,5") stays text, with a DataWarning saying so.
    A column whose every value is a percentage written one way ("12.5%"; "12,5%" in a
    semicolon table) becomes their fractions (0.125); one mixing decimal marks, or
    with a few values that are no percentages, stays text with a DataWarning."""
    # TODO(decimal-locale): a semicolon table's column of dot-grouped numbers with no
    # comma at all ("1.500") is read by pandas as 1.5 before this sees it; a spec option
    # naming the decimal mark would settle it, as no value can.
    with_decimal_comma: list[str] = []
    with_separators: list[str] = []
    formats: dict[str, NumberFormat] = {}
    decimal_commas: list[str] = []
    problems: list[str] = []  # why columns of percentages stay text
    for name in names:
        values = frame[name]
        if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            continue
        present = values.dropna()
        if len(present) == 0:
            continue
        sample = present.iloc[:_TYPE_SAMPLE]
        if not all(isinstance(v, str) for v in sample):
            continue
        if decimal_comma and _all_european_numbers(present):
            frame[name] = _to_numbers(values, european)
            with_decimal_comma.append(name)
            formats[name] = NumberFormat.DECIMAL_COMMA
            continue
        if any(percent_number(v) is not None for v in sample):
            numbers = present.map(percent_number)
            if not decimal_comma and _all_decimal_commas(numbers):
                decimal_commas.append(name)
                continue
            number_format, problem = _percent_reading(name, present, decimal_comma)
            if number_format is not None:
                frame[name] = percentages(values, number_format, decimal_comma)
                formats[name] = number_format
            elif problem is not None:
                problems.append(problem)
            continue
        if _all_decimal_commas(present):
            decimal_commas.append(name)
            continue
        if not _all_grouped_numbers(sample) or not _all_grouped_numbers(present):
            continue
        if not any("," in v for v in present):
            continue  # plain numbers as text: typing reads those already
        frame[name] = _to_numbers(values, ungrouped)
        with_separators.append(name)

    def listed(names: list[str]) -> str:
        return ", ".join(repr(n) for n in names)

    notes = []
    if with_decimal_comma:
        notes.append(
            f"read column(s) {listed(with_decimal_comma)} as numbers written with a "
            f"decimal comma (such as '7.876,63' for 7876.63), as is usual in "
            f"semicolon-separated files"
        )
    if with_separators:
        notes.append(
            f"read column(s) {listed(with_separators)} as numbers written with "
            f"thousands separators (such as '1,234,567'); the commas were removed"
        )
    for number_format in (NumberFormat.PERCENT, NumberFormat.PERCENT_DECIMAL_COMMA):
        read = [name for name, f in formats.items() if f == number_format]
        if read:
            notes.append(
                f"read column(s) {listed(read)} as percentages (such as "
                f"{percent_example(number_format)} for 0.125)"
            )
    if decimal_commas:
        notes.append(
            f"column(s) {listed(decimal_commas)} hold numbers that may be written "
            f"with a decimal comma (such as '0,5'); they are read as text, not "
            f"numbers. Write numbers with '.' as the decimal mark to have them read "
            f"as numbers"
        )
    for note in notes + problems:
        warnings.warn(note, DataWarning, stacklevel=4)
    return formats


def _percent_reading(
    name: str, present: pd.Series, decimal_comma: bool
) -> tuple[NumberFormat | None, str | None]:
    """How to read a text column some of whose values are percentages: its number
    format, or None and why it stays text (None when it is text that merely holds a
    '%', as bins such as "0-10%" do)."""
    number_format = percent_format(present, decimal_comma)
    if number_format is not None:
        return number_format, None

    others = [v for v in present if not is_percentage(v, decimal_comma)]
    if not others:  # a semicolon table's percentages, some with a comma, some not
        comma = NumberFormat.PERCENT_DECIMAL_COMMA
        with_comma = next(
            v for v in present if "," in v and percent_value(v, comma, True)
        )
        unlike = next(v for v in present if percent_value(v, comma, True) is None)
        return None, (
            f"column {name!r} holds percentages with a decimal comma, such as "
            f"{with_comma!r}, and others written differently, such as {unlike!r}; it is "
            f"read as text, not numbers. Write them all with a decimal comma (such as "
            f"'12,5%') to have it read as percentages"
        )
    if len(others) * 4 <= len(present):
        example = next(v for v in present if is_percentage(v, decimal_comma))
        return None, (
            f"column {name!r} holds percentages, such as {example!r}, but also "
            f"{len(others)} other value(s), such as {others[0]!r}; it is read as text, "
            f"not numbers. Write every value as a percentage like the others, and leave "
            f"unknown values empty, to have it read as percentages"
        )
    return None, None


def _target_as_numbers(
    labels: pd.Series, task: Task, decimal_comma: bool
) -> tuple[pd.Series, str, NumberFormat | None] | None:
    """A regression target (or one whose task is to be inferred) written as text
    numbers with separators or as percentages: the numbers as written (12.5 for
    "12.5%"), how they were written, and the percentages' number format (None for
    other numbers); else None."""
    if task not in (Task.REGRESSION, Task.AUTO):
        return None
    if pd.api.types.is_numeric_dtype(labels) or pd.api.types.is_bool_dtype(labels):
        return None
    if not all(isinstance(v, str) for v in labels):
        return None
    number_format = percent_format(labels, decimal_comma)
    if number_format is None:
        _refuse_stray_labels(labels, task, decimal_comma)
    else:
        numbers = percentages(labels, number_format, decimal_comma, shift=0)
        finite = np.isfinite(numbers.to_numpy())
        if not finite.all():
            raise InputError(
                f"the target {labels.name!r} holds a percentage beyond the range of "
                f"numbers, {labels[~finite].iloc[0]!r}; correct or remove that row"
            )
        example = percent_example(number_format)
        return numbers, f"as percentages (such as {example} for 0.125)", number_format
    if not any("," in v for v in labels):
        return None
    if decimal_comma and _all_european_numbers(labels):
        how = "as numbers written with a decimal comma (such as '7,5')"
        return _to_numbers(labels, european), how, NumberFormat.DECIMAL_COMMA
    if _all_numbers_as_text(labels):
        how = (
            "as numbers written with thousands separators (such as '1,234,567'); "
            "the commas were removed"
        )
        return _to_numbers(labels, ungrouped), how, None
    return None


def _refuse_stray_labels(labels: pd.Series, task: Task, decimal_comma: bool) -> None:
    """Raise an InputError naming the few labels that keep a target of percentages
    from being read as numbers ("?", "n/a"), where it would be (a regression task, or
    an inferred one with too many distinct values to be classes)."""
    others = [v for v in labels if not is_percentage(v, decimal_comma)]
    if not others or len(others) * 4 > len(labels):
        return
    if task == Task.AUTO and labels.nunique() <= MAX_INTEGER_CLASSES:
        return
    raise InputError(
        f"the target {labels.name!r} holds percentages but also {len(others)} other "
        f"value(s), such as {others[0]!r}; correct those rows, or leave their labels "
        f"empty to have the rows dropped"
    )


def _all_european_numbers(values: pd.Series) -> bool:
    """Every value is a number written with a decimal comma (dots grouping thousands),
    and some value has that comma."""
    texts = [v.strip() for v in values if isinstance(v, str)]
    return (
        len(texts) == len(values)
        and any("," in t for t in texts)
        and all(EUROPEAN_NUMBER.match(t) is not None for t in texts)
    )


def _to_numbers(values: pd.Series, read: Callable[[Any], Any]) -> pd.Series:
    """`values` as float64, each text first rewritten by `read` (`ungrouped` or
    `european`)."""
    return pd.to_numeric(values.map(read)).astype(np.float64)


def _spelled_as_written(
    labels: pd.Series, classes: list[Any], written: pd.Series
) -> tuple[pd.Series, list[Any]]:
    """Class labels read as numbers, given back in the table's own spelling."""
    spelling: dict[Any, str] = {}
    for number, text in zip(labels.tolist(), written.tolist(), strict=True):
        spelling.setdefault(number, str(text).strip())
    spelled = pd.Series(
        [spelling[n] for n in labels.tolist()], index=labels.index, dtype=object
    )
    return spelled, [spelling[c] for c in classes]


def _all_numbers_as_text(values: pd.Series) -> bool:
    """Every value is text holding a number, plain ("1500") or grouped ("1,500")."""
    return all(
        isinstance(v, str)
        and (
            GROUPED_NUMBER.match(v.strip()) is not None
            or PLAIN_NUMBER.match(v.strip()) is not None
        )
        for v in values
    )


def _as_number(value: Any, decimal_comma: bool = False) -> float | None:
    """A label as a number (plain, with thousands separators, or with a decimal comma
    in a `decimal_comma` table), or None."""
    if isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, int | float | np.number):
        return float(value)
    text = (european if decimal_comma else ungrouped)(str(value))
    return float(text) if PLAIN_NUMBER.match(text) else None


def _all_decimal_commas(values: pd.Series) -> bool:
    """Every value is a number, with at most one comma, and some comma only a decimal
    mark explains ("0,5", "2,32"; "2,388" could be either)."""
    texts = [v.strip() for v in values if isinstance(v, str)]
    if len(texts) != len(values):
        return False
    if not all(DECIMAL_COMMA.match(t) or PLAIN_NUMBER.match(t) for t in texts):
        return False
    return any("," in t and GROUPED_NUMBER.match(t) is None for t in texts)


def _all_grouped_numbers(values: pd.Series) -> bool:
    return all(
        isinstance(v, str) and GROUPED_NUMBER.match(v.strip()) is not None
        for v in values
    )


def _infinite_as_missing(frame: pd.DataFrame, names: Sequence[str]) -> None:
    """Set infinite values (inf, -inf, or numbers beyond float range such as 9e308
    read as inf) of numeric columns to missing, in place, with one DataWarning."""
    counts: dict[str, int] = {}
    for name in names:
        values = frame[name]
        if pd.api.types.is_bool_dtype(values) or pd.api.types.is_integer_dtype(values):
            continue
        numbers = _as_numbers(values.dropna())
        if numbers is None:
            continue
        infinite = numbers.index[np.isinf(numbers.to_numpy(dtype=np.float64))]
        if len(infinite):
            frame.loc[infinite, name] = np.nan
            counts[name] = len(infinite)

    if counts:
        listed = ", ".join(f"{name!r} ({n} value(s))" for name, n in counts.items())
        warnings.warn(
            f"infinite numbers (inf or -inf) in column(s) {listed} were treated as "
            f"missing values; {sum(counts.values())} value(s) in all",
            DataWarning,
            stacklevel=4,
        )


def load_holdout(spec: JobSpec, schema: Schema) -> Dataset | None:
    """Read the spec's separate labelled test set, checked against the training schema.

    Rows without a label are dropped and counted, as for the training data.

    Args:
        spec: The job spec; reads ``holdout_data`` and ``delimiter``.
        schema: The training data's schema.

    Returns:
        The held-out :class:`Dataset` (its schema is the training schema with this
        table's row and class counts), or None when the spec names no holdout data.

    Raises:
        ColumnNotFoundError: A feature or the target is missing from the holdout table.
        TargetMissingError: Every holdout label is missing.
        InputError: A holdout label is not one of the training classes.
    """
    if spec.holdout_data is None:
        return None
    frame, _ = read_table(spec.holdout_data, delimiter=spec.delimiter)
    needed = [*schema.feature_names, schema.target]
    _require_columns(needed, [str(c) for c in frame.columns], role="holdout")
    warn_of_plain_numbers_for_percentages(frame, schema, "holdout data")
    frame, dropped_rows = _drop_missing_target(frame, schema.target, what="holdout")
    _check_holdout_features(frame, schema)
    labels = read_labels(
        frame[schema.target], schema, decimal_comma=_decimal_comma(frame, schema)
    )
    frame[schema.target] = labels
    counts = _class_counts(labels, list(schema.classes))
    held_schema = replace(
        schema,
        n_rows=len(frame),
        n_rows_dropped_missing_target=len(dropped_rows),
        dropped_target_rows=tuple(dropped_rows),
        class_counts=counts,
    )

    label = (
        str(spec.holdout_data)
        if isinstance(spec.holdout_data, Path)
        else f"<DataFrame {spec.holdout_data.shape}>"
    )
    logger.info("loaded holdout %s: %d labelled rows", label, len(frame))
    return Dataset(frame=frame, schema=held_schema, source=label)


def _check_holdout_features(frame: pd.DataFrame, schema: Schema) -> None:
    """Read the holdout table's features now, before any money is spent: a numeric
    column none of whose values can be read as in training is refused, and the
    warnings of the others are given here rather than after training."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        safe = to_safe_frame(frame, schema, include_target=False)
    for column in schema.features:
        if column.kind not in (ColumnKind.NUMERIC, ColumnKind.DATETIME):
            continue
        written = frame[column.name].notna()
        if written.any() and safe.loc[written, column.safe_name].isna().all():
            said = [
                str(w.message) for w in caught if f"{column.name!r}" in str(w.message)
            ]
            reason = said[0] if said else "none of its values is a date or time"
            raise InputError(
                f"no value of column {column.name!r} of the holdout data can be read as "
                f"in training ({reason}); write them as the training data does"
            )
    for warning in caught:
        if issubclass(warning.category, DataWarning):
            warnings.warn(warning.message, DataWarning, stacklevel=3)


def _check_metric_fits(name: str, task: Task) -> None:
    from broker.metrics import get_metric, metrics_for_task

    metric = get_metric(name)
    if task not in metric.tasks:
        allowed = ", ".join(m.name for m in metrics_for_task(task))
        raise ConfigurationError(
            f"metric {name!r} is not defined for a {task.value} task; "
            f"choose from {allowed}"
        )


def _require_columns(
    wanted: Sequence[str], columns: Sequence[str], *, role: str
) -> None:
    missing = [name for name in wanted if name not in columns]
    if not missing:
        return

    name = missing[0]
    lowered = {c.lower(): c for c in columns}
    close = difflib.get_close_matches(name, columns, n=3, cutoff=0.6)
    if name.lower() in lowered and lowered[name.lower()] not in close:
        close.insert(0, lowered[name.lower()])
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    shown = ", ".join(repr(c) for c in columns[:50])
    more = f" and {len(columns) - 50} more" if len(columns) > 50 else ""
    what = {
        "target": "target column",
        "ignore": "column named in ignore",
        "holdout": "column of the training data",
    }[role]
    raise ColumnNotFoundError(
        f"{what} {', '.join(repr(m) for m in missing)} not found; the columns are "
        f"{shown}{more}.{hint}",
        column=name,
        available=list(columns),
    )


# --- the target -----------------------------------------------------------------------


def _drop_missing_target(
    frame: pd.DataFrame, target: str, *, what: str = "data"
) -> tuple[pd.DataFrame, list[int]]:
    labels = frame[target]
    missing = labels.isna().to_numpy()
    if pd.api.types.is_float_dtype(labels):
        # An infinite label cannot be learned or scored: count it as missing.
        missing = missing | np.isinf(labels.to_numpy(dtype=float))
    if not pd.api.types.is_numeric_dtype(labels) and not pd.api.types.is_bool_dtype(
        labels
    ):
        blank = labels.map(lambda v: isinstance(v, str) and not v.strip())
        missing = missing | blank.to_numpy(dtype=bool)

    if missing.all():
        raise TargetMissingError(
            f"every value of the target {target!r} is missing in the {what} "
            f"({len(frame)} rows); fill in the labels or choose another target column"
        )
    rows = (np.flatnonzero(missing) + 1).tolist()  # 1-based data row numbers
    if not rows:
        return frame.reset_index(drop=True).copy(), []

    shown = ", ".join(str(r) for r in rows[:20]) + (" ..." if len(rows) > 20 else "")
    warnings.warn(
        f"dropped {len(rows)} row(s) of the {what} with a missing or infinite target "
        f"{target!r} "
        f"(data rows {shown}); {len(frame) - len(rows)} rows remain",
        DataWarning,
        stacklevel=4,
    )
    return frame.loc[~missing].reset_index(drop=True), rows


def _resolve_task(
    labels: pd.Series, target: str, task: Task
) -> tuple[pd.Series, Task, list[Any]]:
    kind, values = _label_kind(labels)
    distinct = pd.unique(values)
    if len(distinct) == 1:
        only = _native(distinct[0])
        raise TargetSingleClassError(
            f"the target {target!r} holds a single class, {only!r}, in all "
            f"{len(values)} labelled rows; a model needs at least two classes. Check "
            f"the target column, or add rows of another class",
            column=target,
            value=only,
        )

    if kind != "numeric" and len(values) >= 10 and len(distinct) == len(values):
        raise TargetError(
            f"the target {target!r} has a different value in every one of its "
            f"{len(values)} rows, as an identifier does, so there is no class to learn; "
            f"choose the column that holds the label"
        )

    integer_valued = kind == "numeric" and bool(np.all(np.mod(values, 1) == 0))
    if task == Task.AUTO:
        few_integers = integer_valued and len(distinct) <= MAX_INTEGER_CLASSES
        if kind == "numeric" and not few_integers:
            task = Task.REGRESSION
        else:
            task = Task.BINARY if len(distinct) == 2 else Task.MULTICLASS
    _check_task_fits(task, kind, len(distinct), target, values)

    if task == Task.REGRESSION:
        return pd.Series(values.astype(np.float64), index=labels.index), task, []
    if integer_valued:
        values = values.astype(np.int64)
    result = pd.Series(values, index=labels.index, dtype=object)
    classes = sorted((_native(v) for v in pd.unique(values)), key=_class_sort_key)
    result = result.map(_native)
    return result, task, classes


def _label_kind(labels: pd.Series) -> tuple[str, np.ndarray[Any, Any]]:
    if pd.api.types.is_bool_dtype(labels):
        return "bool", labels.to_numpy(dtype=bool)
    if pd.api.types.is_numeric_dtype(labels):
        return "numeric", labels.to_numpy(dtype=np.float64)

    objects = labels.to_numpy(dtype=object)
    if all(isinstance(v, bool | np.bool_) for v in objects):
        return "bool", objects.astype(bool)
    if all(
        isinstance(v, int | float | np.number) and not isinstance(v, bool)
        for v in objects
    ):
        return "numeric", objects.astype(np.float64)
    return "text", np.array([str(v).strip() for v in objects], dtype=object)


def _check_task_fits(
    task: Task, kind: str, n_distinct: int, target: str, values: np.ndarray[Any, Any]
) -> None:
    if task == Task.REGRESSION and kind != "numeric":
        sample = ", ".join(repr(_native(v)) for v in pd.unique(values)[:3])
        raise ConfigurationError(
            f"task 'regression' needs numbers in the target {target!r}, which holds "
            f"{kind} labels such as {sample}; use task 'binary' or 'multiclass', or "
            f"leave the task on 'auto'"
        )
    if task == Task.BINARY and n_distinct != 2:
        raise ConfigurationError(
            f"task 'binary' needs exactly 2 classes, but the target {target!r} has "
            f"{n_distinct}; use task 'multiclass' or 'auto'"
        )
    if task == Task.MULTICLASS and n_distinct < 3:
        raise ConfigurationError(
            f"task 'multiclass' needs at least 3 classes, but the target {target!r} "
            f"has {n_distinct}; use task 'binary' or 'auto'"
        )


def read_labels(
    labels: pd.Series,
    schema: Schema,
    *,
    decimal_comma: bool | None = None,
    where: str = "holdout",
) -> pd.Series:
    """Labels of the target read as training read them.

    Args:
        labels: Labels without missing values, as text or as read from a table.
        schema: The training data's schema.
        decimal_comma: Whether the labels' table writes a decimal comma; default as
            the training table did.
        where: What the labels are, for messages ("holdout", "new rows'").

    Returns:
        Class labels in the schema's spelling, or a regression target's numbers as
        float64 (percentages as fractions).

    Raises:
        InputError: A label is no class of the training data, or no number (or
            percentage) where the target is numeric.
    """
    if schema.task == Task.REGRESSION:
        if decimal_comma is None:
            decimal_comma = schema.decimal_comma
        return _regression_labels(labels, schema, decimal_comma, where)

    by_value = {c: c for c in schema.classes}
    by_text = {str(c): c for c in schema.classes}
    _, values = _label_kind(labels)
    normalised: list[Any] = []
    unknown: set[str] = set()
    for value in values.tolist():
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        found = by_value.get(value, by_text.get(str(value)))
        if found is None:
            unknown.add(repr(value))
        normalised.append(found)
    if unknown:
        raise InputError(
            f"holdout labels {', '.join(sorted(unknown)[:10])} of {schema.target!r} "
            f"are not among the training classes {list(schema.classes)}; remove those "
            f"rows or add them to the training data"
        )
    return pd.Series(normalised, index=labels.index, dtype=object)


def _regression_labels(
    labels: pd.Series, schema: Schema, decimal_comma: bool, where: str
) -> pd.Series:
    """Held-out labels of a regression target as float64, read as the training labels
    were (numbers; percentages as fractions, numbers there taken as fractions already);
    an InputError names those that are not."""
    target = next(c for c in schema.columns if c.kind == ColumnKind.TARGET)
    if pd.api.types.is_numeric_dtype(labels) and not pd.api.types.is_bool_dtype(labels):
        return pd.Series(labels.to_numpy(dtype=np.float64), index=labels.index)

    values = labels.tolist()
    if target.number_format is None or not target.number_format.is_percent:
        expected = "numbers"
        comma = _number_reader(target, schema, decimal_comma, labels) is european
        numbers = [_as_number(v, comma) for v in values]
    else:
        number_format = _read_as(target, schema, decimal_comma, labels)
        expected = f"percentages (such as {percent_example(number_format)})"
        read = _percent_column(labels, number_format, decimal_comma).tolist()
        numbers = [n if math.isfinite(n) else None for n in read]
    bad = list(
        dict.fromkeys(v for v, n in zip(values, numbers, strict=True) if n is None)
    )
    if bad:
        raise InputError(
            f"{where} labels of {schema.target!r} must be {expected}, as in the "
            f"training data (a regression target), but {len(bad)} distinct value(s) "
            f"are not, such as {', '.join(repr(_native(v)) for v in bad[:3])}; "
            f"correct or remove those rows"
        )
    return pd.Series(numbers, index=labels.index, dtype=np.float64)


def warn_of_plain_numbers_for_percentages(
    frame: pd.DataFrame, schema: Schema, what: str
) -> None:
    """Warn, once per column, where a user's table holds plain numbers in a column that
    training read as percentages, some beyond 1 (so likely percentages, such as 50):
    they are taken as fractions, so 50 is 5000%."""
    for column in schema.columns:
        number_format = column.number_format
        if number_format is None or not number_format.is_percent:
            continue
        if column.name not in frame.columns:
            continue
        values = frame[column.name]
        numbers = values.dropna()
        if len(numbers) == 0 or not all(
            isinstance(v, int | float | np.number) and not _is_bool(v) for v in numbers
        ):
            continue
        beyond = numbers[pd.to_numeric(numbers).abs() > 1]
        if len(beyond) == 0:
            continue  # fractions, as intake and a run folder write them
        warnings.warn(
            f"column {column.name!r} of the {what} holds plain numbers, such as "
            f"{_native(beyond.iloc[0])!r}, where training read percentages (such as "
            f"{percent_example(number_format)}); they are taken as fractions "
            f"(0.5 for 50%). Write them with a '%' sign if they are percentages",
            DataWarning,
            stacklevel=3,
        )


def _positive_class(labels: pd.Series, classes: list[Any]) -> Any:
    natural = _natural_positive(classes)
    if natural is not None:
        return natural

    counts = labels.value_counts()
    # Minority class; on a tie, the label that sorts last.
    return min(reversed(classes), key=lambda c: counts.get(c, 0))


def _natural_positive(classes: list[Any]) -> Any:
    if all(isinstance(c, bool) for c in classes):
        return True
    texts = [str(c).strip().lower() for c in classes]
    if all(isinstance(c, int | float) for c in classes):
        texts = [str(int(c)) if float(c).is_integer() else str(c) for c in classes]
    positive = _NATURAL_PAIRS.get(frozenset(texts))
    if positive is not None:
        return classes[texts.index(positive)]

    # Income-style brackets such as '<=50K' / '>50K': the upper bracket is positive.
    upper = [c for c, t in zip(classes, texts, strict=True) if t.startswith(">")]
    lower = [t for t in texts if t.startswith("<")]
    if len(upper) == 1 and len(lower) == 1:
        return upper[0]
    return None


def _class_counts(labels: pd.Series, classes: list[Any]) -> dict[str, int]:
    if not classes:
        return {}
    counts = labels.value_counts()
    return {str(c): int(counts.get(c, 0)) for c in classes}


def _class_sort_key(value: Any) -> tuple[int, Any]:
    if isinstance(value, bool | int | float):
        return (0, float(value))
    return (1, str(value))


def _native(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# --- column typing --------------------------------------------------------------------


def _target_column(name: str, safe: str, labels: pd.Series, n_missing: int) -> Column:
    return Column(
        name=name,
        safe_name=safe,
        kind=ColumnKind.TARGET,
        n_missing=n_missing,
        n_unique=int(labels.nunique()),
    )


def _ignored_column(name: str, safe: str, values: pd.Series) -> Column:
    return Column(
        name=name,
        safe_name=safe,
        kind=ColumnKind.IGNORED,
        dropped_reason="ignored (named in the ignore list)",
        n_missing=int(values.isna().sum()),
        n_unique=int(values.nunique()),
    )


def _typed_column(name: str, safe: str, values: pd.Series) -> Column:
    present = values.dropna()
    n_missing = len(values) - len(present)
    n_unique = int(present.nunique())
    kind, reason = _infer_kind(name, values, present, n_unique)
    return Column(
        name=name,
        safe_name=safe,
        kind=kind,
        dropped_reason=reason,
        n_missing=n_missing,
        n_unique=n_unique,
    )


def _infer_kind(
    name: str, values: pd.Series, present: pd.Series, n_unique: int
) -> tuple[ColumnKind, str | None]:
    if n_unique == 0:
        return ColumnKind.CONSTANT, "constant (every value is missing)"
    if n_unique == 1:
        only = _native(present.iloc[0])
        return ColumnKind.CONSTANT, f"constant (every present value is {only!r})"

    all_distinct = n_unique == len(present) and len(present) >= 2
    id_name = bool(_ID_NAME.search(name.lower()) or _CAMEL_ID.search(name))
    if pd.api.types.is_bool_dtype(values):
        return ColumnKind.CATEGORICAL, None
    if pd.api.types.is_datetime64_any_dtype(values):
        return ColumnKind.DATETIME, None

    numbers = _as_numbers(present)
    if numbers is not None:
        if all_distinct and _looks_like_row_numbers(numbers, by_name=id_name):
            return ColumnKind.IDENTIFIER, "identifier (a distinct whole number per row)"
        return ColumnKind.NUMERIC, None
    if _looks_like_dates(present):
        return ColumnKind.DATETIME, None
    if all_distinct and (len(present) == len(values) or id_name):
        return ColumnKind.IDENTIFIER, "identifier (a distinct value in every row)"
    # TODO(text-features): long free text is typed categorical; no TEXT detection yet.
    return ColumnKind.CATEGORICAL, None


def _as_numbers(present: pd.Series) -> pd.Series | None:
    if pd.api.types.is_numeric_dtype(present):
        return present
    if len(present) == 0 or pd.api.types.is_bool_dtype(present):
        return None

    # Numbers stored as text ("0.12"): try a sample first so text columns fail fast.
    def convert(part: pd.Series) -> pd.Series | None:
        text = part.astype(object).map(
            lambda v: v.strip() if isinstance(v, str) else str(v)
        )
        numbers = pd.to_numeric(text, errors="coerce")
        return None if numbers.isna().any() else numbers

    if convert(present.iloc[:_TYPE_SAMPLE]) is None:
        return None
    return convert(present)


def _looks_like_row_numbers(numbers: pd.Series, *, by_name: bool) -> bool:
    array = numbers.to_numpy(dtype=np.float64)
    if not np.all(np.mod(array, 1) == 0):
        return False
    if by_name:
        return True
    # An unnamed column of 0..n-1 or 1..n in row order is a saved row index.
    steps = np.diff(array)
    return len(array) >= 3 and bool(np.all(steps == 1))


def _looks_like_dates(present: pd.Series) -> bool:
    head = present.iloc[:_TYPE_SAMPLE]
    if not all(isinstance(v, str) and _ISO_DATE.match(v.strip()) for v in head):
        return False
    if not all(isinstance(v, str) and _ISO_DATE.match(v.strip()) for v in present):
        return False
    parsed = pd.to_datetime(present.astype(object).str.strip(), errors="coerce")
    return not parsed.isna().any()


def _require_features(columns: list[Column], target: str) -> None:
    if any(c.is_feature for c in columns):
        return
    dropped = {c.name: c.dropped_reason or "" for c in columns if c.name != target}
    listed = "; ".join(f"{name}: {reason}" for name, reason in dropped.items())
    raise NoUsableFeaturesError(
        f"no usable feature columns remain besides the target {target!r}"
        + (f" — dropped {listed}" if listed else " (the table has no other column)")
        + ". Add columns that describe each row, or shorten the ignore list",
        dropped=dropped,
    )


# --- safe names -----------------------------------------------------------------------


def make_safe_names(names: Sequence[str]) -> list[str]:
    """Backend-safe column names, one-to-one with ``names`` and deterministic.

    A safe name holds ASCII letters, digits and underscores, starts with a letter, is at
    most ``MAX_SAFE_NAME_LENGTH`` long, and differs from every other safe name even when
    case is ignored. A name that is already safe is kept; others are transliterated,
    and a clash gets the smallest free ``_2``, ``_3``... suffix, in column order.

    Example:
        >>> make_safe_names(["temp:max", "size[cm]", "a,b", "Größe", "a b", "a_b"])
        ['temp_max', 'size_cm', 'a_b_2', 'Grosse', 'a_b_3', 'a_b']
    """
    taken: set[str] = set()
    result: list[str | None] = [None] * len(names)
    for position, name in enumerate(names):
        fits = _SAFE_NAME.match(name) and len(name) <= MAX_SAFE_NAME_LENGTH
        if fits and name.lower() not in taken:
            taken.add(name.lower())
            result[position] = name

    for position, name in enumerate(names):
        if result[position] is not None:
            continue
        base = _safe_base(name, position)
        candidate, suffix = base, 1
        while candidate.lower() in taken:
            suffix += 1
            tail = f"_{suffix}"
            candidate = base[: MAX_SAFE_NAME_LENGTH - len(tail)] + tail
        taken.add(candidate.lower())
        result[position] = candidate
    return [r for r in result if r is not None]


def _safe_base(name: str, position: int) -> str:
    text = name.translate(_TRANSLITERATE)
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = _UNSAFE_RUN.sub("_", text.encode("ascii", "ignore").decode()).strip("_")
    if not text:
        text = f"column_{position + 1}"
    elif not text[0].isalpha():
        text = f"c_{text}"
    return text[:MAX_SAFE_NAME_LENGTH].rstrip("_")


# --- the held-out split ---------------------------------------------------------------


MIN_ROWS = 8  # below this no backend learns anything worth scoring


def split_holdout(dataset: Dataset, fraction: float, seed: int) -> HoldoutSplit:
    """Split rows into training rows and the broker's held-out scoring rows.

    Classification splits are stratified by class; the same data, fraction and seed
    always give the same split.

    Args:
        dataset: The loaded data.
        fraction: The share of rows held out, between 0 and 1.
        seed: The random seed.

    Returns:
        Sorted row positions for training and for scoring.

    Raises:
        ConfigurationError: ``fraction`` is not between 0 and 1.
        InputError: Too few rows for the split, or for one row of every class on each
            side of a stratified split.

    Warns:
        DataWarning: A class has a single row, so the split cannot be stratified and is
            made at random instead.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigurationError(
            f"holdout_fraction must be between 0 and 1 (exclusive), got {fraction}"
        )
    n = dataset.n_rows
    n_test = math.ceil(fraction * n)
    if n < MIN_ROWS or n_test < 1 or n - n_test < 1:
        raise InputError(
            f"{n} labelled rows are too few to hold out {fraction:.0%} and still train "
            f"(at least {MIN_ROWS} are needed); add rows or pass a separate "
            f"holdout_data table"
        )

    from sklearn.model_selection import train_test_split

    schema = dataset.schema
    stratify = None
    if schema.task != Task.REGRESSION:
        stratify = _stratify_labels(dataset, n_test, fraction)
    train, test = train_test_split(
        np.arange(n),
        test_size=n_test,
        random_state=seed,
        shuffle=True,
        stratify=stratify,
    )
    return HoldoutSplit(
        train_index=np.sort(train),
        test_index=np.sort(test),
        fraction=fraction,
        seed=seed,
        stratified=stratify is not None,
    )


def _stratify_labels(
    dataset: Dataset, n_test: int, fraction: float
) -> np.ndarray[Any, Any] | None:
    schema = dataset.schema
    labels = dataset.y
    counts = labels.value_counts()
    single = [c for c in schema.classes if counts.get(c, 0) < 2]
    if single:
        warnings.warn(
            f"class(es) {', '.join(repr(c) for c in single)} of {schema.target!r} "
            f"have a single row, so the held-out split is random, not stratified; "
            f"such a class is in the training rows or the scoring rows, never both",
            DataWarning,
            stacklevel=3,
        )
        return None

    n_classes = len(counts)
    n_train = dataset.n_rows - n_test
    if n_test < n_classes or n_train < n_classes:
        needed = n_classes / dataset.n_rows
        raise InputError(
            f"a stratified split of {dataset.n_rows} rows with holdout_fraction "
            f"{fraction} gives {n_test} scoring and {n_train} training rows, fewer "
            f"than the {n_classes} classes; set holdout_fraction between "
            f"{needed:.2f} and {1 - needed:.2f}, add rows, or pass a separate "
            f"holdout_data table"
        )
    return labels.astype(str).to_numpy()


# --- frames for backends --------------------------------------------------------------


def to_safe_frame(
    frame: pd.DataFrame, schema: Schema, *, include_target: bool = True
) -> pd.DataFrame:
    """The feature columns (and target) under their safe names, typed for backends.

    Numeric features become float64 (text that is not a number and infinite values
    become NaN, with a DataWarning; "1,234.5" with thousands separators is read as
    1234.5, and a column read as percentages in training reads "12.5%" as 0.125),
    categorical features text with NaN kept, datetime features
    datetime64. Columns may be addressed by their original or their safe names.

    Args:
        frame: Rows with the schema's columns (extra columns are left out).
        schema: The schema from intake.
        include_target: Also carry the target under its safe name.

    Returns:
        A new DataFrame with the same index.

    Raises:
        ColumnNotFoundError: A feature (or the target, when included) is missing.
    """
    available = {str(c).strip(): c for c in frame.columns}
    wanted = list(schema.features)
    if include_target:
        wanted += [c for c in schema.columns if c.kind == ColumnKind.TARGET]

    missing = [c.name for c in wanted if c.name not in available and
               c.safe_name not in available]  # fmt: skip
    if missing:
        _require_columns(missing, list(available), role="holdout")

    decimal_comma = _decimal_comma(frame, schema)
    data: dict[str, pd.Series] = {}
    for column in wanted:
        key = available.get(column.name, available.get(column.safe_name))
        data[column.safe_name] = _typed_values(
            frame[key], column, schema, decimal_comma
        )
    return pd.DataFrame(data, index=frame.index)


def _decimal_comma(frame: pd.DataFrame, schema: Schema) -> bool:
    """Whether `frame`'s text numbers have a decimal comma: as its own file was written
    (a semicolon-separated one), else as the training table was."""
    delimiter = frame.attrs.get(DELIMITER_ATTR)
    return schema.decimal_comma if delimiter is None else delimiter == ";"


def _read_as(
    column: Column, schema: Schema, decimal_comma: bool, values: pd.Series
) -> NumberFormat:
    """How to read a column of percentages in a table whose decimal mark may differ
    from the training table's: as training did, else as `values` are written there
    (a semicolon table's with a decimal comma where some value has a comma)."""
    assert column.number_format is not None and column.number_format.is_percent
    if decimal_comma == schema.decimal_comma:
        return column.number_format
    if decimal_comma and _has_comma(values):
        return NumberFormat.PERCENT_DECIMAL_COMMA
    return NumberFormat.PERCENT


def _number_reader(
    column: Column, schema: Schema, decimal_comma: bool, values: pd.Series
) -> Callable[[Any], Any]:
    """How to read a numeric column's text numbers in a table whose decimal mark may
    differ from the training table's: `european` (dots group thousands) where the
    column was written so in training, in a schema that predates number formats, or
    where some value of a semicolon table's column has a decimal comma; else
    `ungrouped` (commas group thousands, dots are decimal points)."""
    # TODO(decimal-locale): values pandas parsed before this sees them ("2.500" as 2.5
    # in a column whose dots grouped thousands) and a semicolon table's column of
    # comma-grouped thousands (read as such in training, later as a decimal comma)
    # need the table read as text; a spec option naming the decimal mark would do.
    if not decimal_comma:
        return ungrouped
    if column.number_format == NumberFormat.DECIMAL_COMMA:
        return european
    if column.number_format is None and schema.decimal_comma:
        return european
    return european if _has_comma(values) else ungrouped


def _has_comma(values: pd.Series) -> bool:
    return any(isinstance(v, str) and "," in v for v in values)


def _typed_values(
    values: pd.Series, column: Column, schema: Schema, decimal_comma: bool
) -> pd.Series:
    if column.kind == ColumnKind.TARGET:
        if schema.task == Task.REGRESSION:
            return pd.to_numeric(values, errors="coerce").astype(np.float64)
        return values.astype(object)
    if column.kind == ColumnKind.NUMERIC:
        return _numeric_values(values, column, schema, decimal_comma)
    if column.kind == ColumnKind.DATETIME:
        # TODO(datetime-features): backends get datetime64; no expansion into parts yet.
        return pd.to_datetime(values, errors="coerce")

    missing = values.isna()
    text = values.astype(object).map(str).astype(object)
    return text.where(~missing, np.nan)


def _numeric_values(
    values: pd.Series, column: Column, schema: Schema, decimal_comma: bool
) -> pd.Series:
    name = column.name
    numeric = pd.api.types.is_numeric_dtype(values)
    if numeric and not pd.api.types.is_bool_dtype(values):
        # numbers of a column of percentages are the fractions intake read
        return _finite(values.astype(np.float64), name)

    if column.number_format is not None and column.number_format.is_percent:
        number_format = _read_as(column, schema, decimal_comma, values)
        numbers = _percent_column(values, number_format, decimal_comma)
        expected = (
            f"percentages written as in training (such as "
            f"{percent_example(number_format)})"
        )
    else:
        read = _number_reader(column, schema, decimal_comma, values)
        text = values.astype(object).map(read)
        numbers = pd.to_numeric(text, errors="coerce").astype(np.float64)
        expected = "numbers"
    bad = numbers.isna() & values.notna()
    if bad.any():
        examples = ", ".join(repr(_native(v)) for v in values[bad].unique()[:3])
        warnings.warn(
            f"column {name!r}: {int(bad.sum())} value(s) are not {expected} and were "
            f"treated as missing, such as {examples}",
            DataWarning,
            stacklevel=4,
        )
    return _finite(numbers, name)


def _percent_column(
    values: pd.Series, number_format: NumberFormat, decimal_comma: bool
) -> pd.Series:
    """A column of percentages as fractions: text read as `number_format` ("5" with no
    sign is NaN: 5% or 500%?), numbers taken as the fractions intake made of them,
    unless they stand beside text percentages (5.9 beside "12.5%" is NaN too)."""
    fractions = percentages(values, number_format, decimal_comma)
    if any(isinstance(v, str) for v in values):
        return fractions
    numbers = [
        float(v) if isinstance(v, int | float | np.number) and not _is_bool(v) else f
        for v, f in zip(values.tolist(), fractions.tolist(), strict=True)
    ]
    return pd.Series(numbers, index=values.index, dtype=np.float64)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool | np.bool_)


def _finite(numbers: pd.Series, name: str) -> pd.Series:
    infinite = np.isinf(numbers.to_numpy())
    if not infinite.any():
        return numbers

    warnings.warn(
        f"column {name!r}: {int(infinite.sum())} infinite value(s) (inf or -inf) "
        f"were treated as missing",
        DataWarning,
        stacklevel=5,
    )
    return numbers.where(~infinite, np.nan)
