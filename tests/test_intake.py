"""Tests for broker.intake: reading, typing, target checks, safe names and the split.

Cases C02, C03, C04, C05, C07, C08 and C11 from the shared case list, plus the adult
benchmark table.
"""

from __future__ import annotations

import gzip
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from broker.errors import (
    ColumnNotFoundError,
    ConfigurationError,
    DataReadError,
    DataWarning,
    DuplicateColumnError,
    EncodingError,
    InputError,
    NoUsableFeaturesError,
    TargetMissingError,
    TargetSingleClassError,
)
from broker.intake import (
    load_dataset,
    load_holdout,
    make_safe_names,
    read_labels,
    read_table,
    split_holdout,
    to_safe_frame,
)
from broker.metrics import compute_metrics
from broker.schema import ColumnKind, NumberFormat, Schema
from broker.spec import JobSpec, Task

SAFE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def _write(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _kinds(spec: JobSpec) -> dict[str, str]:
    return {c.name: c.kind.value for c in load_dataset(spec).schema.columns}


# --- C02: whitespace around header names ----------------------------------------------

C02_ROWS = "1,34,north,yes\n2,51,south,no\n3,29,north,yes\n4,45,east,no\n"


def test_read_table_c02_strips_header_whitespace_with_warning(tmp_path: Path) -> None:
    path = _write(tmp_path, " id ,age , city,label \n" + C02_ROWS)

    with pytest.warns(DataWarning) as caught:
        frame, renamed = read_table(path)

    assert list(frame.columns) == ["id", "age", "city", "label"]
    assert renamed == {" id ": "id", "age ": "age", " city": "city", "label ": "label"}
    message = str(caught[0].message)
    assert "4 column name(s)" in message
    assert "' id ' -> 'id'" in message and "'label ' -> 'label'" in message


def test_load_dataset_c02_target_and_ignore_resolve(tmp_path: Path) -> None:
    path = _write(tmp_path, " id ,age , city,label \n" + C02_ROWS)

    with pytest.warns(DataWarning, match="stripped whitespace"):
        dataset = load_dataset(JobSpec(data=path, target="label", ignore=["city"]))

    schema = dataset.schema
    assert schema.target == "label"
    assert schema.renamed_columns[" city"] == "city"
    assert schema.dropped == {
        "id": "identifier (a distinct whole number per row)",
        "city": "ignored (named in the ignore list)",
    }
    assert schema.feature_names == ["age"]


def test_read_table_c02_duplicate_after_stripping(tmp_path: Path) -> None:
    path = _write(tmp_path, "age,age ,label\n30,31,yes\n40,41,no\n")

    with pytest.raises(
        DuplicateColumnError, match=r"'age' at positions 1 and 2"
    ) as info:
        read_table(path)
    assert info.value.duplicates == {"age": [1, 2]}


def test_load_dataset_c02_not_found_quotes_names(tmp_path: Path) -> None:
    path = _write(tmp_path, " id ,age , city,label \n" + C02_ROWS)

    with (
        pytest.warns(DataWarning),
        pytest.raises(
            ColumnNotFoundError,
            match=r"'City' not found; the columns are 'id', 'age', 'city', 'label'\."
            r" Did you mean 'city'\?",
        ) as info,
    ):
        load_dataset(JobSpec(data=path, target="label", ignore=["City"]))
    assert info.value.column == "City"


def test_load_dataset_target_not_found(tmp_path: Path) -> None:
    path = _write(tmp_path, "a,b,outcome\n1,2,x\n2,3,y\n")
    with pytest.raises(ColumnNotFoundError, match=r"target column 'outcom' not found"):
        load_dataset(JobSpec(data=path, target="outcom"))


# --- C03: byte-order marks and encodings ----------------------------------------------

C03_TEXT = (
    "outcome,size,color\nyes,3,red\nno,5,blue\nyes,2,red\nno,7,green\n"
    "yes,4,blue\nno,6,red\nyes,1,green\nno,8,blue\n"
)


def test_load_dataset_c03_utf8_bom(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + C03_TEXT.encode("utf-8"))

    dataset = load_dataset(JobSpec(data=path, target="outcome"))

    assert list(dataset.frame.columns) == ["outcome", "size", "color"]
    assert dataset.schema.task == Task.BINARY
    assert dataset.schema.feature_names == ["size", "color"]
    # size is a shuffled 1..8, a number, not a row index.
    assert _kinds(JobSpec(data=path, target="outcome"))["size"] == "numeric"


def test_read_table_c03_utf16_le_bom_same_names(tmp_path: Path) -> None:
    utf8 = tmp_path / "utf8.csv"
    utf8.write_text(C03_TEXT, encoding="utf-8")
    utf16 = tmp_path / "utf16.csv"
    utf16.write_bytes(b"\xff\xfe" + C03_TEXT.encode("utf-16-le"))

    frame16, _ = read_table(utf16)
    frame8, _ = read_table(utf8)

    assert list(frame16.columns) == ["outcome", "size", "color"]
    pd.testing.assert_frame_equal(frame16, frame8)


def test_read_table_undecodable_bytes_name_encoding(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("Größe,label\n1,ja\n".encode("cp1252"))

    with pytest.raises(EncodingError, match=r"not valid utf-8: byte\(s\) f6") as info:
        read_table(path)
    assert info.value.encoding == "utf-8"


def test_read_table_utf16_without_bom_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nobom.csv"
    path.write_bytes(C03_TEXT.encode("utf-16-le"))

    with pytest.raises(EncodingError, match="NUL bytes") as info:
        read_table(path)
    assert info.value.encoding == "utf-16 (no byte-order mark)"


# --- C04: duplicate column names ------------------------------------------------------

C04_ROWS = [
    [1, 0.2, 0.9, "yes"],
    [2, 0.4, 0.1, "no"],
    [3, 0.6, 0.5, "yes"],
    [4, 0.8, 0.3, "no"],
    [5, 0.1, 0.7, "yes"],
    [6, 0.9, 0.2, "no"],
]


def test_load_dataset_c04_duplicate_columns_in_dataframe() -> None:
    frame = pd.DataFrame(C04_ROWS, columns=["id", "score", "score", "label"])

    with pytest.raises(
        DuplicateColumnError, match=r"'score' at positions 2 and 3"
    ) as info:
        load_dataset(JobSpec(data=frame, target="label"))
    assert info.value.duplicates == {"score": [2, 3]}


def test_load_dataset_c04_duplicate_columns_in_csv(tmp_path: Path) -> None:
    body = "".join(",".join(str(v) for v in row) + "\n" for row in C04_ROWS)
    path = _write(tmp_path, "id,score,score,label\n" + body)

    with pytest.raises(
        DuplicateColumnError, match=r"'score' at positions 2 and 3"
    ) as info:
        load_dataset(JobSpec(data=path, target="label"))
    assert info.value.duplicates == {"score": [2, 3]}


# --- C05: punctuation and non-ASCII names ---------------------------------------------

C05_FEATURES = ["temp:max", "size[cm]", "a,b", "Größe", "a b", "a_b"]


def _c05_file(tmp_path: Path) -> Path:
    lines = ['temp:max,size[cm],"a,b",Größe,a b,a_b,label']
    for i in range(12):
        values = [(i + j) % 6 for j in range(6)]
        lines.append(",".join(map(str, values)) + ("," + ("yes" if i % 2 else "no")))
    return _write(tmp_path, "\n".join(lines) + "\n")


def test_load_dataset_c05_distinct_safe_names(tmp_path: Path) -> None:
    schema = load_dataset(JobSpec(data=_c05_file(tmp_path), target="label")).schema

    assert schema.feature_names == C05_FEATURES
    safe = schema.safe_feature_names
    assert safe == ["temp_max", "size_cm", "a_b_2", "Grosse", "a_b_3", "a_b"]
    assert all(SAFE.match(s) for s in safe)
    assert len({s.lower() for s in safe}) == 6
    # The mapping is one-to-one: every original name is recoverable.
    assert [schema.to_original[s] for s in safe] == C05_FEATURES
    assert all(c.kind == ColumnKind.NUMERIC for c in schema.features)


def test_to_safe_frame_c05_accepts_original_names(tmp_path: Path) -> None:
    dataset = load_dataset(JobSpec(data=_c05_file(tmp_path), target="label"))
    schema = dataset.schema

    training = to_safe_frame(dataset.frame, schema)
    prediction = to_safe_frame(
        dataset.frame[C05_FEATURES], schema, include_target=False
    )

    assert list(training.columns) == [*schema.safe_feature_names, "label"]
    assert list(prediction.columns) == schema.safe_feature_names
    assert training["a_b_2"].tolist() == dataset.frame["a,b"].astype(float).tolist()
    assert training["a_b"].tolist() == dataset.frame["a_b"].astype(float).tolist()


def test_make_safe_names_is_deterministic_and_case_distinct() -> None:
    names = ["Age", "age", "1st", "", "温度", "x" * 80]
    first = make_safe_names(names)
    assert first == make_safe_names(names)
    assert first[:5] == ["Age", "age_2", "c_1st", "column_4", "column_5"]
    assert len(first[5]) == 64


# --- C07: a single class --------------------------------------------------------------

C07_TEXT = "f1,f2,label\n1,a,yes\n2,b,yes\n3,a,yes\n4,b,yes\n5,a,yes\n6,b,yes\n"


@pytest.mark.parametrize("task", [Task.AUTO, Task.BINARY, Task.MULTICLASS])
def test_load_dataset_c07_single_class(tmp_path: Path, task: Task) -> None:
    path = _write(tmp_path, C07_TEXT)

    with pytest.raises(
        TargetSingleClassError, match=r"'label' holds a single class, 'yes'"
    ) as info:
        load_dataset(JobSpec(data=path, target="label", task=task))
    assert (info.value.column, info.value.value) == ("label", "yes")


def test_load_dataset_c07_single_class_after_missing_dropped(tmp_path: Path) -> None:
    path = _write(tmp_path, C07_TEXT + "7,a,\n")

    with (
        pytest.warns(DataWarning, match=r"dropped 1 row\(s\).*data rows 7\)"),
        pytest.raises(TargetSingleClassError, match="in all 6 labelled rows"),
    ):
        load_dataset(JobSpec(data=path, target="label"))


def test_load_dataset_single_numeric_value_is_not_regression(tmp_path: Path) -> None:
    path = _write(tmp_path, "x,y\n1,5\n2,5\n3,5\n")
    with pytest.raises(TargetSingleClassError, match=r"single class, 5,") as info:
        load_dataset(JobSpec(data=path, target="y"))
    assert info.value.value == 5


# --- C08: missing target labels -------------------------------------------------------


def _c08_file(tmp_path: Path) -> Path:
    lines = ["x1,x2,label"]
    for row in range(1, 21):
        label = "yes" if row % 2 else "no"
        if row == 3:
            label = ""
        if row == 6:
            label = "NA"
        lines.append(f"{row % 5},{(row * 7) % 11 / 10},{label}")
    return _write(tmp_path, "\n".join(lines) + "\n")


def test_load_dataset_c08_drops_missing_labels(tmp_path: Path) -> None:
    path = _c08_file(tmp_path)

    with pytest.warns(
        DataWarning, match=r"dropped 2 row\(s\).*'label' \(data rows 3, 6\)"
    ):
        dataset = load_dataset(JobSpec(data=path, target="label"))

    schema = dataset.schema
    assert dataset.n_rows == 18 and schema.n_rows == 18
    assert schema.n_rows_dropped_missing_target == 2
    assert schema.dropped_target_rows == (3, 6)
    assert schema.class_counts == {"no": 9, "yes": 9}
    assert schema.positive_class == "yes"


def test_load_holdout_c08_three_labelled_rows(tmp_path: Path) -> None:
    holdout = _write(
        tmp_path, "x1,x2,label\n1,0.5,yes\n2,0.1,no\n3,0.3,\n4,0.9,yes\n", "hold.csv"
    )
    spec = JobSpec(data=_c08_file(tmp_path), target="label", holdout_data=holdout)
    with pytest.warns(DataWarning):
        schema = load_dataset(spec).schema

    with pytest.warns(
        DataWarning, match=r"dropped 1 row\(s\) of the holdout.*rows 3\)"
    ):
        held = load_holdout(spec, schema)

    assert held is not None
    assert held.n_rows == 3 and held.schema.n_rows == 3
    assert held.schema.dropped_target_rows == (3,)
    assert held.schema.class_counts == {"no": 1, "yes": 2}
    # Scores are computed over the 3 labelled rows.
    proba = np.array([[0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    report = compute_metrics(held.schema, held.y.tolist(), proba)
    assert report.n == 3
    assert report.values["accuracy"] == 1.0


def test_load_dataset_c08_every_label_missing(tmp_path: Path) -> None:
    path = _write(tmp_path, "x1,x2,label\n1,2,\n3,4,NA\n5,6,\n")
    with pytest.raises(
        TargetMissingError, match=r"every value of the target 'label'.*3 rows"
    ):
        load_dataset(JobSpec(data=path, target="label"))


def test_load_holdout_unknown_label(tmp_path: Path) -> None:
    spec = JobSpec(
        data=_write(tmp_path, "x,label\n4,yes\n2,no\n3,yes\n"),
        target="label",
        holdout_data=_write(tmp_path, "x,label\n1,maybe\n", "hold.csv"),
    )
    schema = load_dataset(spec).schema
    with pytest.raises(
        InputError, match="holdout labels 'maybe' of 'label' are not among"
    ):
        load_holdout(spec, schema)


# --- C11: constant, identifier-like and numbers-as-text columns -----------------------

C11_ROWS = [
    ("r001", "x", "0.12", "-1.50", 0),
    ("r002", "x", "0.40", "2.25", 1),
    ("r003", "x", "0.33", "0.75", 0),
    ("r004", "x", "0.91", "-0.20", 1),
    ("r005", "x", "0.05", "1.10", 0),
    ("r006", "x", "0.77", "-0.65", 1),
]


def test_load_dataset_c11_drops_identifier_and_constant(tmp_path: Path) -> None:
    lines = ["row_id,const,v1,v2,label"] + [
        ",".join(f'"{v}"' for v in row[:4]) + f",{row[4]}" for row in C11_ROWS
    ]
    dataset = load_dataset(
        JobSpec(
            data=_write(tmp_path, "\n".join(lines)), target="label", task=Task.BINARY
        )
    )

    schema = dataset.schema
    assert schema.feature_names == ["v1", "v2"]
    assert [c.kind for c in schema.features] == [ColumnKind.NUMERIC] * 2
    assert schema.dropped == {
        "row_id": "identifier (a distinct value in every row)",
        "const": "constant (every present value is 'x')",
    }
    safe = to_safe_frame(dataset.frame, schema)
    assert safe["v1"].dtype == np.float64
    assert safe["v1"].tolist() == [0.12, 0.40, 0.33, 0.91, 0.05, 0.77]


def test_load_dataset_c11_numbers_as_text_in_dataframe() -> None:
    frame = pd.DataFrame(C11_ROWS, columns=["row_id", "const", "v1", "v2", "label"])
    dataset = load_dataset(JobSpec(data=frame, target="label"))

    assert _kinds(JobSpec(data=frame, target="label"))["v2"] == "numeric"
    assert to_safe_frame(dataset.frame, dataset.schema)["v2"].tolist() == [
        -1.5,
        2.25,
        0.75,
        -0.2,
        1.1,
        -0.65,
    ]


def test_load_dataset_c11_no_usable_features(tmp_path: Path) -> None:
    lines = ["row_id,const,label"] + [f'"{r[0]}","{r[1]}",{r[4]}' for r in C11_ROWS]
    path = _write(tmp_path, "\n".join(lines))

    with pytest.raises(
        NoUsableFeaturesError, match=r"row_id: identifier.*; const: constant"
    ) as info:
        load_dataset(JobSpec(data=path, target="label"))
    assert set(info.value.dropped) == {"row_id", "const"}


# --- typing and task inference --------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "task", "classes"),
    [
        ([0, 1, 0, 1, 1, 0], Task.BINARY, (0, 1)),
        ([3, 5, 4, 3, 5, 4], Task.MULTICLASS, (3, 4, 5)),
        (list(range(12)), Task.REGRESSION, ()),
        ([0.5, 1.0, 1.5, 0.5, 1.0, 1.5], Task.REGRESSION, ()),
        (["b", "a", "c", "a", "b", "c"], Task.MULTICLASS, ("a", "b", "c")),
        ([True, False, True, False, True, True], Task.BINARY, (False, True)),
    ],
)
def test_load_dataset_infers_task(
    labels: list[object], task: Task, classes: tuple[object, ...]
) -> None:
    frame = pd.DataFrame({"x": [(i * 7) % 5 for i in range(len(labels))], "y": labels})
    schema = load_dataset(JobSpec(data=frame, target="y")).schema
    assert (schema.task, schema.classes) == (task, classes)


def test_load_dataset_string_labels_refuse_regression() -> None:
    frame = pd.DataFrame({"x": [1, 2, 1, 2], "y": ["lo", "hi", "lo", "hi"]})
    with pytest.raises(ConfigurationError, match=r"task 'regression' needs numbers"):
        load_dataset(JobSpec(data=frame, target="y", task=Task.REGRESSION))


def test_load_dataset_binary_with_three_classes() -> None:
    frame = pd.DataFrame({"x": [1, 2, 1], "y": ["a", "b", "c"]})
    with pytest.raises(
        ConfigurationError, match="exactly 2 classes, but the target 'y' has 3"
    ):
        load_dataset(JobSpec(data=frame, target="y", task=Task.BINARY))


def test_load_dataset_metric_must_fit_task() -> None:
    frame = pd.DataFrame({"x": [1, 2, 1, 3], "y": ["a", "b", "a", "b"]})
    with pytest.raises(
        ConfigurationError, match="metric 'rmse' is not defined for a binary"
    ):
        load_dataset(JobSpec(data=frame, target="y", metric="rmse"))


@pytest.mark.parametrize(
    ("labels", "positive"),
    [
        (["no", "yes", "yes", "yes"], "yes"),  # natural positive, though the majority
        (["<=50K", ">50K", "<=50K", "<=50K"], ">50K"),
        (["good", "bad", "good", "good"], "bad"),  # minority class
        (["b", "a", "b", "a"], "b"),  # tie: the label that sorts last
    ],
)
def test_load_dataset_positive_class(labels: list[str], positive: str) -> None:
    frame = pd.DataFrame({"x": [4, 2, 5, 1], "y": labels})
    assert (
        load_dataset(JobSpec(data=frame, target="y")).schema.positive_class == positive
    )


def test_load_dataset_types_dates_and_categories() -> None:
    frame = pd.DataFrame(
        {
            "when": ["2024-01-03", "2024-02-10", "2023-12-31", "2024-01-03"],
            "colour": ["red", None, "red", "blue"],
            "userId": [17, 4, 9, 12],
            "y": [0, 1, 0, 1],
        }
    )
    kinds = _kinds(JobSpec(data=frame, target="y"))
    assert kinds == {
        "when": "datetime",
        "colour": "categorical",
        "userId": "identifier",
        "y": "target",
    }


# --- reading --------------------------------------------------------------------------


@pytest.mark.parametrize("sep", [";", "\t", "|"])
def test_read_table_sniffs_delimiter(tmp_path: Path, sep: str) -> None:
    path = _write(
        tmp_path,
        sep.join(["a", "b c", "label"]) + "\n" + sep.join(["1,5", "x", "y"]) + "\n",
    )
    frame, _ = read_table(path)
    assert list(frame.columns) == ["a", "b c", "label"]
    assert frame.iloc[0].tolist() == ["1,5", "x", "y"]


def test_read_table_gzip(tmp_path: Path) -> None:
    path = tmp_path / "data.csv.gz"
    path.write_bytes(gzip.compress(C03_TEXT.encode("utf-8")))
    frame, _ = read_table(path)
    assert frame.shape == (8, 3)


def test_read_table_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    with pytest.raises(
        DataReadError, match=r"'.*nope\.csv' does not exist.*check the path"
    ):
        read_table(path)


def test_read_table_ragged_row(tmp_path: Path) -> None:
    path = _write(tmp_path, "a,b\n1,2\n3,4,5\n")
    with pytest.raises(
        DataReadError, match="line 3 has 3 field\\(s\\) where the header has 2"
    ):
        read_table(path)


def test_read_table_short_row_is_refused_not_filled(tmp_path: Path) -> None:
    # pandas would fill the missing field with a blank and shift the row's meaning
    path = _write(tmp_path, "label,x1,color\nyes,0.1,red\nno,0.2,blue\nyes,0.3\n")
    with pytest.raises(
        DataReadError, match="line 4 has 2 field\\(s\\) where the header has 3"
    ):
        read_table(path)


def test_load_dataset_drops_infinite_regression_targets(tmp_path: Path) -> None:
    rows = "\n".join(f"{(i * 7) % 5 + 0.5},{i * 1.5}" for i in range(30))
    path = _write(tmp_path, "x,y\n" + rows + "\n2.5,inf\n3.5,-inf\n")
    with pytest.warns(DataWarning, match="dropped 2 row\\(s\\) .* missing or infinite"):
        dataset = load_dataset(JobSpec(data=path, target="y", task=Task.REGRESSION))
    assert dataset.schema.n_rows == 30
    assert dataset.schema.dropped_target_rows == (31, 32)


# --- the held-out split ---------------------------------------------------------------


def _balanced(n_per_class: int) -> JobSpec:
    labels = ["a"] * n_per_class + ["b"] * n_per_class * 3
    frame = pd.DataFrame({"x": [(i * 13) % 7 for i in range(len(labels))], "y": labels})
    return JobSpec(data=frame, target="y")


def test_split_holdout_stratified_and_deterministic() -> None:
    dataset = load_dataset(_balanced(8))

    split = split_holdout(dataset, 0.25, seed=3)

    assert len(split.test_index) == 8 and len(split.train_index) == 24
    assert split.stratified
    assert sorted([*split.train_index, *split.test_index]) == list(range(32))
    # 8 'a' and 24 'b': a quarter of each class is held out.
    assert dataset.y.iloc[split.test_index].value_counts().to_dict() == {"b": 6, "a": 2}
    assert np.array_equal(split.test_index, split_holdout(dataset, 0.25, 3).test_index)
    assert not np.array_equal(
        split.test_index, split_holdout(dataset, 0.25, 4).test_index
    )


def test_split_holdout_single_row_class_falls_back(tmp_path: Path) -> None:
    frame = pd.DataFrame({"x": [5, 2, 7, 1, 4, 6, 3, 9, 8], "y": list("aaaabbbbc")})
    dataset = load_dataset(JobSpec(data=frame, target="y"))

    with pytest.warns(DataWarning, match=r"class\(es\) 'c' of 'y' have a single row"):
        split = split_holdout(dataset, 0.3, seed=0)
    assert not split.stratified
    assert len(split.test_index) == 3


def test_split_holdout_too_few_rows_per_class() -> None:
    frame = pd.DataFrame({"x": [5, 2, 6, 1, 4, 3, 9, 8, 7], "y": list("aaabbbccc")})
    dataset = load_dataset(JobSpec(data=frame, target="y"))

    with pytest.raises(InputError, match=r"gives 2 scoring.*fewer than the 3 classes"):
        split_holdout(dataset, 0.2, seed=0)


def test_split_holdout_refuses_a_table_too_small_to_score() -> None:
    frame = pd.DataFrame({"x": [5.5, 2.5, 6.5, 1.5], "y": list("abab")})
    dataset = load_dataset(JobSpec(data=frame, target="y"))

    with pytest.raises(InputError, match=r"4 labelled rows are too few .*at least 8"):
        split_holdout(dataset, 0.2, seed=0)


# --- the adult benchmark table --------------------------------------------------------


def test_load_dataset_adult_types_and_counts(shared_datasets: Path) -> None:
    # its speed is measured in benchmarks/overhead.py, not here
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        dataset = load_dataset(
            JobSpec(data=shared_datasets / "adult.csv", target="class")
        )

    schema = dataset.schema
    kinds = [c.kind for c in schema.features]
    assert schema.n_rows == 48842
    assert len(schema.features) == 14
    assert kinds.count(ColumnKind.NUMERIC) == 6
    assert kinds.count(ColumnKind.CATEGORICAL) == 8
    assert schema.task == Task.BINARY
    assert schema.class_counts == {"<=50K": 37155, ">50K": 11687}
    assert schema.positive_class == ">50K"
    assert schema.to_safe["education-num"] == "education_num"
    dtypes = to_safe_frame(dataset.frame, schema).dtypes
    assert (dtypes == np.float64).sum() == 6
    assert [str(t) for t in dtypes].count("object") == 8 + 1  # categoricals, target


def test_load_dataset_refuses_an_identifier_as_target() -> None:
    from broker.errors import TargetError

    frame = pd.DataFrame(
        {"x": [0.5, 1.5, 2.5, 3.5] * 5, "rid": [f"r{i:03d}" for i in range(20)]}
    )

    with pytest.raises(TargetError, match=r"'rid' has a different value in every one"):
        load_dataset(JobSpec(data=frame, target="rid"))


# --- infinite feature values ----------------------------------------------------------


def test_load_dataset_reads_infinite_features_as_missing_with_one_warning(
    tmp_path: Path,
) -> None:
    # 9e999 is beyond float range and is read as inf, like inf and -inf
    speeds = ["1.5", "inf", "2.5", "-inf", "1.5", "9e999", "4.5", "2.5", "3.5", "1.5"]
    loads = ["0.5", "1.5", "-inf", "0.5", "2.5", "1.5", "0.5", "2.5", "1.5", "0.5"]
    rows = "\n".join(
        f"{s},{w},{i % 2}" for i, (s, w) in enumerate(zip(speeds, loads, strict=True))
    )
    path = _write(tmp_path, "speed,load,y\n" + rows + "\n")

    with pytest.warns(DataWarning) as caught:
        dataset = load_dataset(JobSpec(data=path, target="y"))
    infinite = [str(w.message) for w in caught if "infinite" in str(w.message)]
    safe = to_safe_frame(dataset.frame, dataset.schema)

    # one warning names both columns with their counts and the total
    assert infinite == [
        "infinite numbers (inf or -inf) in column(s) 'speed' (3 value(s)), 'load' "
        "(1 value(s)) were treated as missing values; 4 value(s) in all"
    ]
    by_name = {c.name: c for c in dataset.schema.columns}
    assert (by_name["speed"].kind, by_name["speed"].n_missing) == (
        ColumnKind.NUMERIC,
        3,
    )
    assert (by_name["load"].kind, by_name["load"].n_missing) == (ColumnKind.NUMERIC, 1)
    assert safe["speed"].isna().tolist() == [
        s in ("inf", "-inf", "9e999") for s in speeds
    ]
    assert bool(np.isfinite(safe["speed"].dropna()).all())
    assert safe["speed"].sum() == pytest.approx(1.5 * 3 + 2.5 * 2 + 4.5 + 3.5)


def test_load_dataset_infinite_features_in_a_dataframe_become_missing() -> None:
    frame = pd.DataFrame(
        {
            "x": [0.5, np.inf, 1.5, 0.5, 2.5, 1.5, 0.5, 2.5],
            "y": ["a", "b", "a", "b", "a", "b", "a", "b"],
        }
    )

    with pytest.warns(DataWarning, match=r"'x' \(1 value\(s\)\)"):
        dataset = load_dataset(JobSpec(data=frame, target="y"))

    assert dataset.frame["x"].isna().tolist() == [False, True] + [False] * 6
    # the caller's frame is left as it was
    assert frame["x"].iloc[1] == np.inf


def test_to_safe_frame_infinite_holdout_feature_becomes_missing(
    tmp_path: Path,
) -> None:
    dataset = load_dataset(_balanced(8))
    holdout = pd.DataFrame({"x": [1.0, -np.inf, 3.0], "y": ["a", "b", "a"]})

    with pytest.warns(DataWarning, match=r"column 'x': 1 infinite value\(s\)"):
        safe = to_safe_frame(holdout, dataset.schema)

    assert safe["x"].isna().tolist() == [False, True, False]


# --- numbers with thousands separators ------------------------------------------------


def test_load_dataset_reads_thousands_separators_as_numbers(tmp_path: Path) -> None:
    # a semicolon file: "1,5" has a decimal comma; "1,234,567" groups thousands
    text = (
        "income;ratio;mixed;y\n"
        "1,234,567;1,5;1,000;0\n"
        "2,345.5;2,5;many;1\n"
        "999;1,5;2,000;0\n"
        "1,234,567;2,5;3,000;1\n"
        "-12,000;1,5;1,000;0\n"
        ";2,5;2,000;1\n"
        "999;1,5;3,000;0\n"
        "2,345.5;2,5;1,000;1\n"
    )
    path = _write(tmp_path, text)

    with pytest.warns(DataWarning) as caught:
        dataset = load_dataset(JobSpec(data=path, target="y"))
    grouped = [str(w.message) for w in caught if "thousands" in str(w.message)]

    assert grouped == [
        "read column(s) 'income' as numbers written with thousands separators "
        "(such as '1,234,567'); the commas were removed"
    ]
    kinds = {c.name: c.kind for c in dataset.schema.columns}
    assert kinds == {
        "income": ColumnKind.NUMERIC,
        "ratio": ColumnKind.NUMERIC,
        "mixed": ColumnKind.CATEGORICAL,
        "y": ColumnKind.TARGET,
    }
    safe = to_safe_frame(dataset.frame, dataset.schema)
    assert safe["income"].tolist()[:5] == [
        1234567.0,
        2345.5,
        999.0,
        1234567.0,
        -12000.0,
    ]
    assert np.isnan(safe["income"].iloc[5])
    assert dataset.frame["ratio"].tolist()[:2] == [1.5, 2.5]


def test_regression_target_with_thousands_separators_is_read_as_numbers(
    tmp_path: Path,
) -> None:
    rows = ["1,250,000", "980,500", "2,100,000.5", "875,000", "1,490,250", "640,000"]
    rows += ["1,020,000", "755,500", "999", "1,875,000", "1500", "702,250"]
    text = "rooms,price\n" + "".join(
        f'{i % 5 + 1},"{price}"\n' for i, price in enumerate(rows)
    )
    holdout = _write(tmp_path, 'rooms,price\n2,"1,100,000"\n3,"1200"\n', "hold.csv")
    spec = JobSpec(data=_write(tmp_path, text), target="price", holdout_data=holdout)

    with pytest.warns(DataWarning) as caught:
        dataset = load_dataset(spec)
    held = load_holdout(spec, dataset.schema)

    assert [str(w.message) for w in caught] == [
        "read the target 'price' as numbers written with thousands separators "
        "(such as '1,234,567'); the commas were removed"
    ]
    assert dataset.schema.task == Task.REGRESSION
    assert dataset.frame["price"].tolist()[:3] == [1250000.0, 980500.0, 2100000.5]
    assert dataset.frame["price"].tolist()[8:11] == [999.0, 1875000.0, 1500.0]
    assert held is not None
    assert held.frame["price"].tolist() == [1100000.0, 1200.0]

    bad = _write(tmp_path, 'rooms,price\n2,"1,100,000"\n3,"ask"\n4,"tbd"\n', "bad.csv")
    with pytest.raises(InputError) as info:
        load_holdout(
            JobSpec(data=spec.data, target="price", holdout_data=bad), dataset.schema
        )
    assert str(info.value) == (
        "holdout labels of 'price' must be numbers, as in the training data (a "
        "regression target), but 2 distinct value(s) are not, such as 'ask', 'tbd'; "
        "correct or remove those rows"
    )


def test_plain_numeric_regression_target_reads_without_warnings() -> None:
    frame = pd.DataFrame(
        {"x": [float(i % 7) for i in range(40)], "y": [i * 1.37 for i in range(40)]}
    )

    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        dataset = load_dataset(JobSpec(data=frame, target="y"))

    assert dataset.schema.task == Task.REGRESSION
    assert dataset.frame["y"].tolist()[:3] == [0.0, 1.37, 2.74]


def test_class_labels_with_thousands_separators_stay_as_written(
    tmp_path: Path,
) -> None:
    # a few whole numbers are classes; their labels keep the user's spelling
    labels = ["1,000", "2,000", "1,000", "5,000"] * 3
    text = "x,tier\n" + "".join(f'{i % 4},"{v}"\n' for i, v in enumerate(labels))

    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        dataset = load_dataset(JobSpec(data=_write(tmp_path, text), target="tier"))

    assert dataset.schema.task == Task.MULTICLASS
    assert dataset.schema.classes == ("1,000", "2,000", "5,000")
    assert dataset.frame["tier"].tolist()[:2] == ["1,000", "2,000"]

    # ten rows of ten such numbers are ten classes, as the plain numbers would be,
    # not an identifier
    tiers = [f"{n},000" for n in range(1, 11)]
    text = "x,tier\n" + "".join(f'{i % 3},"{v}"\n' for i, v in enumerate(tiers))
    dataset = load_dataset(JobSpec(data=_write(tmp_path, text), target="tier"))
    assert dataset.schema.task == Task.MULTICLASS
    assert dataset.schema.classes == tuple(tiers)


def test_semicolon_tables_read_the_comma_as_the_decimal_mark(tmp_path: Path) -> None:
    # in a semicolon file the comma is the decimal mark and the dot groups thousands;
    # a column only thousands separators explain ("1,234,567") is still read so
    text = (
        "gewicht;preis;menge;y\n"
        "0,582;7.876,63;1,234,567;0\n"
        "2,388;980;2,000;1\n"
        "0,582;1.250,5;3,500;0\n"
        "1;980;999;1\n"
        "-2,32;1.250,5;1,500;0\n"
        "2,388;980;12,345,678;1\n"
    )
    holdout = _write(tmp_path, "gewicht;preis;menge;y\n1,5;2.000,25;7;0\n", "h.csv")
    spec = JobSpec(data=_write(tmp_path, text), target="y", holdout_data=holdout)

    with pytest.warns(DataWarning) as caught:
        dataset = load_dataset(spec)

    assert [str(w.message) for w in caught] == [
        "read column(s) 'gewicht', 'preis' as numbers written with a decimal comma "
        "(such as '7.876,63' for 7876.63), as is usual in semicolon-separated files",
        "read column(s) 'menge' as numbers written with thousands separators (such "
        "as '1,234,567'); the commas were removed",
    ]
    frame = dataset.frame
    assert frame["gewicht"].tolist() == [0.582, 2.388, 0.582, 1.0, -2.32, 2.388]
    assert frame["preis"].tolist()[:3] == [7876.63, 980.0, 1250.5]
    assert frame["menge"].tolist()[:3] == [1234567.0, 2000.0, 3500.0]
    assert dataset.schema.decimal_comma is True
    held = load_holdout(spec, dataset.schema)
    assert held is not None
    safe = to_safe_frame(held.frame, dataset.schema)
    assert safe[["gewicht", "preis"]].iloc[0].tolist() == [1.5, 2000.25]


def test_decimal_commas_elsewhere_are_never_read_as_thousands_separators(
    tmp_path: Path,
) -> None:
    # in a comma-separated file quoted "1,250" groups thousands, but "0,125" is no 125
    text = 'a,b,y\n"0,125","1,250",0\n"0,5",980,1\n"1,75","2,000",0\n'
    text += '"2","1,000",1\n"0,25","3,125",0\n"1,5","1,500",1\n'
    with pytest.warns(DataWarning) as caught:
        dataset = load_dataset(JobSpec(data=_write(tmp_path, text), target="y"))
    assert [str(w.message) for w in caught] == [
        "read column(s) 'b' as numbers written with thousands separators (such as "
        "'1,234,567'); the commas were removed",
        "column(s) 'a' hold numbers that may be written with a decimal comma (such "
        "as '0,5'); they are read as text, not numbers. Write numbers with '.' as "
        "the decimal mark to have them read as numbers",
    ]
    assert dataset.frame["a"].tolist()[:2] == ["0,125", "0,5"]
    assert dataset.frame["b"].tolist()[:2] == [1250.0, 980.0]

    # a tab-separated table groups thousands with commas too: a price is a number
    prices = [f"{n},250" for n in range(1, 26)]
    text = "rooms\tprice\n" + "".join(f"{i % 4}\t{p}\n" for i, p in enumerate(prices))
    with pytest.warns(DataWarning, match="read the target 'price' as numbers"):
        dataset = load_dataset(
            JobSpec(data=_write(tmp_path, text, "t.tsv"), target="price")
        )
    assert dataset.schema.task == Task.REGRESSION
    assert dataset.frame["price"].tolist()[:2] == [1250.0, 2250.0]


def test_semicolon_table_regression_target_with_decimal_commas(tmp_path: Path) -> None:
    values = [f"{n},{n % 7}" for n in range(3, 30)]
    text = "x;y\n" + "".join(f"{i % 5};{v}\n" for i, v in enumerate(values))

    with pytest.warns(DataWarning) as caught:
        dataset = load_dataset(JobSpec(data=_write(tmp_path, text), target="y"))

    assert [str(w.message) for w in caught] == [
        "read the target 'y' as numbers written with a decimal comma (such as '7,5')"
    ]
    assert dataset.schema.task == Task.REGRESSION
    assert dataset.frame["y"].tolist()[:3] == [3.3, 4.4, 5.5]


def _semicolon_schema(tmp_path: Path) -> Schema:
    rows = [("1.000,5", "0.125", "1.234,5"), ("2.000,5", "0.25", "2.500,5")] * 4
    text = "p;q;y\n" + "".join(f"{p};{q};{y}\n" for p, q, y in rows)
    with pytest.warns(DataWarning):
        return load_dataset(JobSpec(data=_write(tmp_path, text), target="y")).schema


def test_semicolon_holdout_numbers_follow_how_training_wrote_the_column(
    tmp_path: Path,
) -> None:
    schema = _semicolon_schema(tmp_path)
    formats = {c.name: c.number_format for c in schema.columns}
    held = _write(tmp_path, "p;q\n2.500;0.500\n-;1.5\n1.234.567;?\n", "new.csv")
    frame, _ = read_table(held)

    with pytest.warns(DataWarning):
        safe = to_safe_frame(frame, schema, include_target=False)

    assert formats == {
        "p": NumberFormat.DECIMAL_COMMA,
        "q": NumberFormat.DECIMAL_POINT,
        "y": NumberFormat.DECIMAL_COMMA,
    }
    # p's dots grouped thousands in training; q's were decimal points
    assert safe["p"].tolist()[0] == 2500.0 and safe["p"].tolist()[2] == 1234567.0
    assert safe["q"].tolist()[:2] == [0.5, 1.5]
    labels = pd.Series(["1.234.567", "2.500"])
    assert read_labels(labels, schema, decimal_comma=True).tolist() == [
        1234567.0,
        2500.0,
    ]


def test_a_schema_without_number_formats_reads_as_it_always_did(
    tmp_path: Path,
) -> None:
    payload = _semicolon_schema(tmp_path).to_dict()
    for column in payload["columns"]:
        column.pop("number_format", None)  # as written before number formats
    schema = Schema.from_dict(payload)
    frame = pd.DataFrame({"p": ["2.500", "-"], "q": ["0.500", "2,5"]})

    with pytest.warns(DataWarning):
        safe = to_safe_frame(frame, schema, include_target=False)

    assert safe["p"].tolist()[0] == 2500.0
    assert safe["q"].tolist() == [500.0, 2.5]


def test_to_safe_frame_reads_thousands_separators_in_holdout_rows() -> None:
    train = pd.DataFrame(
        {"x": [1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 1.0, 2.0], "y": list("abababab")}
    )
    dataset = load_dataset(JobSpec(data=train, target="y"))
    holdout = pd.DataFrame({"x": ["1,234.5", "12", "1,5"], "y": ["a", "b", "a"]})

    with pytest.warns(DataWarning, match=r"1 value\(s\) are not numbers.*'1,5'"):
        safe = to_safe_frame(holdout, dataset.schema)

    assert safe["x"].tolist()[:2] == [1234.5, 12.0]
    assert np.isnan(safe["x"].iloc[2])


def _percent_table(tmp_path: Path) -> Path:
    rows = [
        ("12.5%", "1,250 %", "5% off", 0),
        ("7%", "-3%", "none", 1),
        ("100%", "0.5%", "5% off", 0),
        ("", "2e1%", "none", 1),
        ("0%", "40%", "5% off", 0),
        ("33.3%", "1%", "none", 1),
    ]
    text = "rate,share,label,y\n"
    text += "".join(f'{a},"{b}",{c},{y}\n' for a, b, c, y in rows)
    return _write(tmp_path, text)


def test_percentages_are_read_as_their_fractions(tmp_path: Path) -> None:
    with pytest.warns(DataWarning) as caught:
        dataset = load_dataset(JobSpec(data=_percent_table(tmp_path), target="y"))

    assert [str(w.message) for w in caught if "percent" in str(w.message)] == [
        "read column(s) 'rate', 'share' as percentages (such as '12.5%' for 0.125)"
    ]
    columns = {c.name: c for c in dataset.schema.columns}
    assert columns["rate"].kind == ColumnKind.NUMERIC
    assert columns["rate"].number_format == "percent"
    assert columns["label"].kind == ColumnKind.CATEGORICAL
    rate = dataset.frame["rate"].tolist()
    assert rate[:3] == [0.125, 0.07, 1.0] and np.isnan(rate[3])
    assert rate[4:] == [0.0, 0.333]
    assert dataset.frame["share"].tolist() == [12.5, -0.03, 0.005, 0.2, 0.4, 0.01]


def _percent_schema(tmp_path: Path) -> Schema:
    with pytest.warns(DataWarning):
        return load_dataset(JobSpec(data=_percent_table(tmp_path), target="y")).schema


def test_a_bare_number_in_a_column_of_percentages_is_missing_not_rescaled(
    tmp_path: Path,
) -> None:
    schema = _percent_schema(tmp_path)
    rows = {"share": ["1%"] * 3, "label": ["none"] * 3}
    holdout = pd.DataFrame({"rate": ["50%", "5", "1,000%"], **rows})

    with pytest.warns(DataWarning) as caught:
        safe = to_safe_frame(holdout, schema, include_target=False)

    # "5" could be 5% or 500%: neither is guessed, and the user is told
    assert [str(w.message) for w in caught] == [
        "column 'rate': 1 value(s) are not percentages written as in training (such "
        "as '12.5%') and were treated as missing, such as '5'"
    ]
    assert safe["rate"].iloc[0] == 0.5 and safe["rate"].iloc[2] == 10.0
    assert np.isnan(safe["rate"].iloc[1])


def test_the_fractions_intake_made_are_read_back_as_they_are(tmp_path: Path) -> None:
    with pytest.warns(DataWarning):
        dataset = load_dataset(JobSpec(data=_percent_table(tmp_path), target="y"))
    stored = tmp_path / "holdout.csv.gz"
    dataset.frame.to_csv(stored, index=False)  # as a run folder keeps its held-out rows
    again, _ = read_table(stored)

    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        safe = to_safe_frame(again, dataset.schema)

    assert safe["rate"].tolist()[:3] == [0.125, 0.07, 1.0]
    assert safe["share"].tolist() == [12.5, -0.03, 0.005, 0.2, 0.4, 0.01]


def test_numbers_beside_text_percentages_are_missing_not_fractions(
    tmp_path: Path,
) -> None:
    schema = _percent_schema(tmp_path)
    rows = {"share": ["1%"] * 2, "label": ["none"] * 2}
    holdout = pd.DataFrame({"rate": ["12.5%", 5.9], **rows})

    with pytest.warns(DataWarning, match=r"1 value\(s\) are not percentages.*5\.9"):
        safe = to_safe_frame(holdout, schema, include_target=False)

    assert safe["rate"].iloc[0] == 0.125 and np.isnan(safe["rate"].iloc[1])


def test_a_column_of_plain_numbers_does_not_read_percentages_later() -> None:
    train = pd.DataFrame({"x": [float(i % 5) for i in range(10)], "y": list("ab") * 5})
    schema = load_dataset(JobSpec(data=train, target="y")).schema

    with pytest.warns(DataWarning, match=r"column 'x': 1 value\(s\) are not numbers"):
        safe = to_safe_frame(
            pd.DataFrame({"x": ["50%", "2"]}), schema, include_target=False
        )

    assert np.isnan(safe["x"].iloc[0]) and safe["x"].iloc[1] == 2.0


def test_semicolon_table_percentages_follow_the_columns_decimal_mark(
    tmp_path: Path,
) -> None:
    commas = ["12,5%", "1.250,5 %", "3%", "0,1%", "7,25%", "50%"]
    points = ["0.125%", "1.5%", "2.25%", "3.5%", "4.75%", "5.5%"]
    mixed = ["12,5%", "3%", "1.5%", "0,1%", "7,25%", "50%"]
    rows = enumerate(zip(commas, points, mixed, strict=True))
    text = "c;p;m;y\n" + "".join(f"{c};{p};{m};{i % 2}\n" for i, (c, p, m) in rows)

    with pytest.warns(DataWarning) as caught:
        dataset = load_dataset(JobSpec(data=_write(tmp_path, text), target="y"))

    assert [str(w.message) for w in caught] == [
        "read column(s) 'p' as percentages (such as '12.5%' for 0.125)",
        "read column(s) 'c' as percentages (such as '12,5%' for 0.125)",
        "column 'm' holds percentages with a decimal comma, such as '12,5%', and "
        "others written differently, such as '1.5%'; it is read as text, not "
        "numbers. Write them all with a decimal comma (such as '12,5%') to have it "
        "read as percentages",
    ]
    assert dataset.frame["c"].tolist() == [0.125, 12.505, 0.03, 0.001, 0.0725, 0.5]
    assert dataset.frame["p"].tolist() == [0.00125, 0.015, 0.0225, 0.035, 0.0475, 0.055]
    assert dataset.frame["m"].tolist()[:3] == ["12,5%", "3%", "1.5%"]


def test_whole_percentages_in_a_semicolon_table_take_its_decimal_comma(
    tmp_path: Path,
) -> None:
    text = "r;y\n" + "".join(f"{n}%;{n % 2}\n" for n in range(1, 9))
    with pytest.warns(DataWarning, match=r"'r' as percentages \(such as '12,5%'"):
        schema = load_dataset(JobSpec(data=_write(tmp_path, text), target="y")).schema
    holdout = pd.DataFrame({"r": ["12,5%", "12.5%"]})

    with pytest.warns(DataWarning, match=r"1 value\(s\).*such as '12\.5%'$"):
        safe = to_safe_frame(holdout, schema, include_target=False)

    assert safe["r"].iloc[0] == 0.125 and np.isnan(safe["r"].iloc[1])


def test_semicolon_held_out_percentages_keep_the_columns_decimal_mark(
    tmp_path: Path,
) -> None:
    commas = ["12,5%", "3%", "0,1%", "7,25%", "50%", "2%"]
    points = ["0.125%", "1.5%", "2.25%", "3.5%", "4.75%", "5.5%"]
    rows = enumerate(zip(commas, points, strict=True))
    text = "c;p;y\n" + "".join(f"{c};{p};{i % 2}\n" for i, (c, p) in rows)
    with pytest.warns(DataWarning):
        schema = load_dataset(JobSpec(data=_write(tmp_path, text), target="y")).schema
    holdout = pd.DataFrame({"c": ["2,5%", "1.500%"], "p": ["1,500%", "2.5%"]})

    with pytest.warns(DataWarning) as caught:
        safe = to_safe_frame(holdout, schema, include_target=False)

    # "1.500%" beside decimal commas, and "1,500%" beside decimal points, could each
    # be read two ways: both are missing, never 1000 times off
    assert [str(w.message).split(", such as ")[1] for w in caught] == [
        "'1.500%'",
        "'1,500%'",
    ]
    assert safe["c"].iloc[0] == 0.025 and np.isnan(safe["c"].iloc[1])
    assert np.isnan(safe["p"].iloc[0]) and safe["p"].iloc[1] == 0.025


def test_percentages_beside_other_values_stay_text_with_the_way_out(
    tmp_path: Path,
) -> None:
    rates = ["10%", "20%", "30%", "-"]
    text = "rate,y\n" + "".join(f"{r},{i % 2}\n" for i, r in enumerate(rates * 2))

    with pytest.warns(DataWarning) as caught:
        dataset = load_dataset(JobSpec(data=_write(tmp_path, text), target="y"))

    assert [str(w.message) for w in caught] == [
        "column 'rate' holds percentages, such as '10%', but also 2 other value(s), "
        "such as '-'; it is read as text, not numbers. Write every value as a "
        "percentage like the others, and leave unknown values empty, to have it read "
        "as percentages"
    ]
    kinds = {c.name: c.kind for c in dataset.schema.columns}
    assert kinds["rate"] == ColumnKind.CATEGORICAL


def test_decimal_comma_percentages_in_a_comma_table_get_the_decimal_comma_hint(
    tmp_path: Path,
) -> None:
    quoted = ["1,25%", "0,5%", "2%", "3,75%"] * 2
    text = "q,y\n" + "".join(f'"{q}",{i % 2}\n' for i, q in enumerate(quoted))

    with pytest.warns(DataWarning) as caught:
        dataset = load_dataset(JobSpec(data=_write(tmp_path, text), target="y"))

    assert [str(w.message) for w in caught] == [
        "column(s) 'q' hold numbers that may be written with a decimal comma (such as "
        "'0,5'); they are read as text, not numbers. Write numbers with '.' as the "
        "decimal mark to have them read as numbers",
    ]
    assert dataset.frame["q"].tolist()[:2] == ["1,25%", "0,5%"]


def test_text_that_only_ends_in_a_percent_sign_stays_text_quietly(
    tmp_path: Path,
) -> None:
    bins = ["0-10%", "10-20%", "<5%", ">95%", "−5%"] * 2
    text = "band,y\n" + "".join(f"{b},{i % 2}\n" for i, b in enumerate(bins))

    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        dataset = load_dataset(JobSpec(data=_write(tmp_path, text), target="y"))

    kinds = {c.name: c.kind for c in dataset.schema.columns}
    assert kinds["band"] == ColumnKind.CATEGORICAL


def test_percentages_beyond_float_range_become_missing_not_an_error(
    tmp_path: Path,
) -> None:
    values = ["1e1000002%", "5%", "1e-99999999999999999999%", "1e0000000001%", "2%"]
    text = "p,y\n" + "".join(f"{v},{i % 2}\n" for i, v in enumerate(values))

    with pytest.warns(DataWarning) as caught:
        dataset = load_dataset(JobSpec(data=_write(tmp_path, text), target="y"))

    assert any("'p' (1 value(s))" in str(w.message) for w in caught)
    p = dataset.frame["p"].tolist()
    assert np.isnan(p[0]) and p[1:] == [0.05, 0.0, 0.1, 0.02]


def _percent_target(tmp_path: Path) -> Path:
    values = [f"{n / 4:g}%" for n in range(3, 30)]
    text = "x,y\n" + "".join(f"{i % 5},{v}\n" for i, v in enumerate(values))
    return _write(tmp_path, text)


def test_regression_target_of_percentages_is_read_as_fractions(tmp_path: Path) -> None:
    with pytest.warns(DataWarning) as caught:
        dataset = load_dataset(JobSpec(data=_percent_target(tmp_path), target="y"))

    assert [str(w.message) for w in caught] == [
        "read the target 'y' as percentages (such as '12.5%' for 0.125)"
    ]
    assert dataset.schema.task == Task.REGRESSION
    target = dataset.schema.columns[-1]
    assert target.kind == ColumnKind.TARGET
    assert target.number_format == NumberFormat.PERCENT
    assert dataset.frame["y"].tolist()[:3] == [0.0075, 0.01, 0.0125]


def test_held_out_labels_of_a_percentage_target_are_read_as_in_training(
    tmp_path: Path,
) -> None:
    with pytest.warns(DataWarning):
        schema = load_dataset(
            JobSpec(data=_percent_target(tmp_path), target="y")
        ).schema

    assert read_labels(pd.Series(["50%", "7.5 %"]), schema).tolist() == [0.5, 0.075]
    # numbers are the fractions intake made, as a run folder stores them
    assert read_labels(pd.Series([0.5, 0.075]), schema).tolist() == [0.5, 0.075]
    for labels, shown in (
        (pd.Series(["50%", "0.5"]), "'0.5'"),
        (pd.Series(["1e400%"]), "'1e400%'"),
    ):
        with pytest.raises(InputError) as caught:
            read_labels(labels, schema)
        assert "must be percentages (such as '12.5%'), as in the training" in str(
            caught.value
        )
        assert f"such as {shown};" in str(caught.value)


def test_plain_numbers_for_percentages_in_a_holdout_file_are_named(
    tmp_path: Path,
) -> None:
    path = _percent_target(tmp_path)
    holdout = _write(tmp_path, "x,y\n1,50\n2,12.5\n", "hold.csv")
    spec = JobSpec(data=path, target="y", holdout_data=holdout)
    with pytest.warns(DataWarning):
        schema = load_dataset(spec).schema

    with pytest.warns(DataWarning) as caught:
        held = load_holdout(spec, schema)

    assert [str(w.message) for w in caught] == [
        "column 'y' of the holdout data holds plain numbers, such as 50, where "
        "training read percentages (such as '12.5%'); they are taken as fractions "
        "(0.5 for 50%). Write them with a '%' sign if they are percentages"
    ]
    assert held is not None and held.frame["y"].tolist() == [50.0, 12.5]


def test_holdout_features_that_cannot_be_read_are_refused_before_training(
    tmp_path: Path,
) -> None:
    spec = JobSpec(data=_percent_table(tmp_path), target="y")
    with pytest.warns(DataWarning):
        schema = load_dataset(spec).schema
    rows = "".join(f'"{n},5%",1%,none,{n % 2}\n' for n in range(4))
    holdout = _write(tmp_path, "rate,share,label,y\n" + rows, "hold.csv")

    with pytest.raises(InputError) as caught:
        load_holdout(spec.model_copy(update={"holdout_data": holdout}), schema)

    assert str(caught.value) == (
        "no value of column 'rate' of the holdout data can be read as in training "
        "(column 'rate': 4 value(s) are not percentages written as in training (such "
        "as '12.5%') and were treated as missing, such as '0,5%', '1,5%', '2,5%'); "
        "write them as the training data does"
    )


def test_holdout_dates_that_cannot_be_read_are_refused_too(tmp_path: Path) -> None:
    rows = "".join(f"2024-01-{d:02d},{d % 3},{d % 2}\n" for d in range(1, 13))
    spec = JobSpec(data=_write(tmp_path, "when,x,y\n" + rows), target="y")
    schema = load_dataset(spec).schema
    text = "when,x,y\nsoon,1,0\n2024-02-01,2,\nlater,0,1\n"
    holdout = _write(tmp_path, text, "hold.csv")

    with pytest.raises(InputError) as caught, pytest.warns(DataWarning):
        load_holdout(spec.model_copy(update={"holdout_data": holdout}), schema)

    # the one readable date is on a row without a label, which is dropped first
    assert str(caught.value) == (
        "no value of column 'when' of the holdout data can be read as in training "
        "(none of its values is a date or time); write them as the training data does"
    )


def test_a_few_stray_labels_in_a_target_of_percentages_are_named(
    tmp_path: Path,
) -> None:
    values = [f"{n * 1.3:.1f}%" for n in range(1, 13)] + ["?"]
    text = "x,y\n" + "".join(f"{i % 4},{v}\n" for i, v in enumerate(values))

    with pytest.raises(InputError) as caught:
        load_dataset(JobSpec(data=_write(tmp_path, text), target="y"))

    assert str(caught.value) == (
        "the target 'y' holds percentages but also 1 other value(s), such as '?'; "
        "correct those rows, or leave their labels empty to have the rows dropped"
    )


def test_a_few_distinct_percentages_stay_class_labels_as_written(
    tmp_path: Path,
) -> None:
    values = ["10%", "20%", "30%"] * 4
    text = "x,y\n" + "".join(f"{i % 4},{v}\n" for i, v in enumerate(values))

    dataset = load_dataset(JobSpec(data=_write(tmp_path, text), target="y"))

    assert dataset.schema.task == Task.MULTICLASS
    assert dataset.schema.classes == ("10%", "20%", "30%")


def test_a_percentage_target_beyond_float_range_is_refused_by_row(
    tmp_path: Path,
) -> None:
    values = ["1e400%"] + [f"{n}%" for n in range(12)]
    text = "x,y\n" + "".join(f"{i % 4},{v}\n" for i, v in enumerate(values))

    with pytest.raises(InputError) as caught:
        load_dataset(
            JobSpec(data=_write(tmp_path, text), target="y", task="regression")
        )

    assert str(caught.value) == (
        "the target 'y' holds a percentage beyond the range of numbers, '1e400%'; "
        "correct or remove that row"
    )


def test_number_formats_survive_a_stored_schema_and_old_ones_load(
    tmp_path: Path,
) -> None:
    schema = _percent_schema(tmp_path)
    payload = schema.to_dict()
    columns = {c["name"]: c for c in payload["columns"]}

    assert columns["rate"]["number_format"] == "percent"
    assert "number_format" not in columns["label"]  # as stored before formats existed
    again = Schema.from_dict(json.loads(json.dumps(payload)))
    assert again == schema
    columns["rate"]["number_format"] = "permille"
    with pytest.raises(ValueError, match="'permille' is not a valid NumberFormat"):
        Schema.from_dict(payload)


def test_spec_file_data_path_missing_names_the_spec_folder_rule(tmp_path: Path) -> None:
    from broker.spec import JobSpec

    (tmp_path / "specs").mkdir()
    spec_path = tmp_path / "specs" / "job.yaml"
    spec_path.write_text("data: data/adult.csv\ntarget: class\n")
    spec = JobSpec.from_file(spec_path)

    with pytest.raises(DataReadError) as caught:
        read_table(Path(str(spec.data)))

    message = str(caught.value)
    assert str(tmp_path / "specs" / "data" / "adult.csv") in message
    assert "read from the spec file's folder" in message
    assert "current folder" not in message


def test_a_label_read_as_missing_is_named_with_the_way_out(tmp_path: Path) -> None:
    # "NA" (North America) is one of the spellings pandas reads as a missing value
    text = "x,region\n" + "".join(
        f"{i % 3},{'NA' if i % 2 else 'EU'}\n" for i in range(20)
    )

    with pytest.raises(TargetSingleClassError) as caught:
        load_dataset(JobSpec(data=_write(tmp_path, text), target="region"))

    assert str(caught.value).endswith(
        "add rows of another class; the target 'region' was read as missing where it "
        "is written 'NA', spellings of a missing value; if one is a label, write it "
        "another way (such as 'N.A.') or pass the table as a DataFrame"
    )

    text += "1,AS\n"
    with pytest.warns(DataWarning) as caught_warnings:
        dataset = load_dataset(JobSpec(data=_write(tmp_path, text), target="region"))
    messages = [str(w.message) for w in caught_warnings]
    assert messages[-1].startswith(
        "the target 'region' was read as missing where it is written 'NA'"
    )
    assert dataset.schema.classes == ("AS", "EU")
