from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest

from broker.config import load_config
from broker.errors import ConfigurationError
from broker.spec import JobSpec, Task, parse_spec


def test_spec_defaults_and_metric_per_task():
    spec = JobSpec(data="x.csv", target="label")
    assert spec.task is Task.AUTO
    assert spec.budget.max_runtime_s == 600
    assert spec.budget.max_usd is None
    assert spec.metric_for(Task.BINARY) == "roc_auc"
    assert spec.metric_for(Task.MULTICLASS) == "log_loss"
    assert spec.metric_for(Task.REGRESSION) == "rmse"


def test_spec_budget_is_exact_decimal():
    spec = parse_spec({"data": "x.csv", "target": "y", "budget": {"max_usd": "0.10"}})
    assert spec.budget.max_usd == Decimal("0.10")
    assert isinstance(spec.budget.max_usd, Decimal)


def test_spec_unknown_provider_is_refused_with_choices():
    with pytest.raises(ConfigurationError, match=r"unknown provider\(s\) \['gcp'\]"):
        parse_spec(
            {"data": "x.csv", "target": "y", "constraints": {"providers": ["gcp"]}}
        )


def test_spec_unknown_metric_lists_choices():
    with pytest.raises(ConfigurationError, match="unknown metric 'auc_roc'.*roc_auc"):
        parse_spec({"data": "x.csv", "target": "y", "metric": "auc_roc"})


def test_spec_unknown_field_is_refused():
    with pytest.raises(ConfigurationError, match="budgett"):
        parse_spec({"data": "x.csv", "target": "y", "budgett": {}})


def test_spec_errors_repeat_the_value_given_but_never_a_secret():
    with pytest.raises(ConfigurationError) as caught:
        parse_spec(
            {
                "data": "x.csv",
                "target": 5,
                "budget": {"max_usd": "$5"},
                "task": "clustering",
                "notify": {"password": 12345},
            }
        )

    lines = str(caught.value).splitlines()
    assert lines[0] == "invalid job spec:"
    assert "  target: Input should be a valid string, got 5" in lines
    assert "  budget.max_usd: Input should be a valid decimal, got '$5'" in lines
    assert (
        "  task: Input should be 'auto', 'binary', 'multiclass' or 'regression', got "
        "'clustering'" in lines
    )
    assert "12345" not in str(caught.value)


def test_spec_dataframe_source_recorded_by_shape():
    frame = pd.DataFrame({"a": [1, 2], "y": [0, 1]})
    spec = JobSpec(data=frame, target="y")
    assert spec.to_dict()["data"] == "<DataFrame (2, 2)>"


def test_spec_from_yaml_resolves_data_next_to_file(tmp_path):
    (tmp_path / "job.yaml").write_text(
        "data: d.csv\ntarget: y\nbudget: {max_usd: 2.5, max_runtime_s: 60}\n"
    )
    spec = JobSpec.from_file(tmp_path / "job.yaml")
    assert spec.data == (tmp_path / "d.csv").resolve()
    assert spec.budget.max_usd == Decimal("2.5")
    assert spec.budget.max_runtime_s == 60


def test_spec_from_file_resolves_holdout_next_to_file_and_overrides_as_given(
    tmp_path, monkeypatch
):
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "job.yaml").write_text(
        "data: d.csv\nholdout_data: ../held/h.csv\n"
    )
    monkeypatch.chdir(tmp_path)

    # the file names no target: the override gives it, and its data path is the
    # caller's, not resolved from the file's folder
    spec = JobSpec.from_file(tmp_path / "specs" / "job.yaml", target="y")
    other = JobSpec.from_file(
        tmp_path / "specs" / "job.yaml", target="y", data="mine.csv"
    )

    assert spec.target == "y"
    assert spec.data == (tmp_path / "specs" / "d.csv").resolve()
    assert spec.holdout_data == (tmp_path / "held" / "h.csv").resolve()
    assert str(other.data) == "mine.csv"


def test_spec_from_file_that_is_not_a_mapping(tmp_path):
    (tmp_path / "job.yaml").write_text("- a\n- b\n")
    with pytest.raises(
        ConfigurationError, match="must hold a mapping of fields, got list"
    ):
        JobSpec.from_file(tmp_path / "job.yaml")


def test_config_unknown_key_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("providerz: {}\n")
    with pytest.raises(ConfigurationError, match=r"unknown keys \['providerz'\]"):
        load_config(path)


def test_config_reads_rate_as_decimal(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "local_rate_usd_per_hour: 0.05\nproviders: {h2o: {max_mem_gib: 2}}\n"
    )
    config = load_config(path)
    assert config.local_rate_usd_per_hour == Decimal("0.05")
    assert config.providers == {"h2o": {"max_mem_gib": 2}}


def test_config_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("local_rate_usd_per_hour: .inf\n", "finite number of dollars"),
        ("local_rate_usd_per_hour: -1\n", "finite number of dollars"),
        (
            "poll_interval_s: abc\n",
            "poll_interval_s must be a number of seconds above 0",
        ),
        ("poll_interval_s: 0\n", "poll_interval_s must be a number of seconds above 0"),
        ("pending_timeout_s: .nan\n", "pending_timeout_s must be a number of seconds"),
        ("providers: {vertex: 5}\n", "providers.vertex must be a mapping of settings"),
    ],
)
def test_config_bad_values_are_named(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=message):
        load_config(path)


def test_spec_prefer_repeated_names_keep_their_first_place():
    spec = parse_spec(
        {
            "data": "x.csv",
            "target": "y",
            "constraints": {"prefer": ["local", "H2O ", "local", "h2o", "local"]},
        }
    )
    assert spec.constraints.prefer == ["local", "h2o"]


def test_spec_prefer_unknown_name_is_still_refused_among_repeats():
    with pytest.raises(ConfigurationError, match=r"unknown provider\(s\) \['gcp'\]"):
        parse_spec(
            {
                "data": "x.csv",
                "target": "y",
                "constraints": {"prefer": ["local", "local", "gcp"]},
            }
        )


def test_spec_file_with_broken_yaml_names_the_place_but_not_its_text(
    tmp_path: Path,
) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(
        'data: x.csv\ntarget: y\nprovider_options:\n  h2o: {password: "SPEC-SECRET-7\n'
    )

    with pytest.raises(
        ConfigurationError, match=r"is not valid YAML: line \d+"
    ) as caught:
        JobSpec.from_file(path)

    assert "SPEC-SECRET-7" not in str(caught.value)
