"""The settings file: parse errors that keep secrets out, provider settings checked."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from broker.config import load_config
from broker.errors import ConfigurationError
from broker.providers import accepted_settings, create_provider
from broker.redact import describe_yaml_error

# Built from pieces so that this file does not hold the secret a message must not show.
SECRET = "hunter" + "2-" + "8d1f"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_load_config_unclosed_quote_gives_position_not_the_secret(tmp_path):
    path = write(tmp_path, f'providers:\n  h2o: {{password: "{SECRET}\n')

    with pytest.raises(ConfigurationError) as caught:
        load_config(path)

    # the parser's problem and where it is, both ends of the unclosed string
    assert str(caught.value) == (
        f"config file {str(path)!r} is not valid YAML: line 3, column 1: found "
        "unexpected end of stream (while scanning a quoted scalar that began at "
        "line 2, column 19)"
    )
    assert SECRET not in str(caught.value)


def test_load_config_unknown_tag_is_masked_in_the_message(tmp_path):
    path = write(tmp_path, f"store: !{SECRET} jobs.db\n")

    with pytest.raises(ConfigurationError, match=r"line 1, column 8: could not") as c:
        load_config(path)

    assert SECRET not in str(c.value)
    assert "the tag '[REDACTED]'" in str(c.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "a: [1, 2\nb: 3\n",
            "line 2, column 2: expected ',' or ']', but got ':' (while parsing a "
            "flow sequence that began at line 1, column 4)",
        ),
        (
            "a:\tb\n",
            "line 1, column 3: found character '\\t' that cannot start any token "
            "(while scanning for the next token)",
        ),
        (
            "a: b\nc: '<block end>' d\n",
            "line 2, column 18: expected <block end>, but found '<scalar>' (while "
            "parsing a block mapping that began at line 1, column 1)",
        ),
        (
            "a: \x00b\n",
            "unacceptable character #x0000: special characters are not allowed "
            "at character 4",
        ),
    ],
)
def test_describe_yaml_error_keeps_token_names_and_positions(text, expected):
    with pytest.raises(yaml.YAMLError) as caught:
        yaml.safe_load(text)

    assert describe_yaml_error(caught.value) == expected


def test_load_config_provider_setting_typo_names_the_close_match(tmp_path):
    path = write(tmp_path, "providers: {vertex: {projekt: x}}\n")

    with pytest.raises(
        ConfigurationError,
        match=(
            r"provider 'vertex' has no setting 'projekt' \(did you mean 'project'\?\);"
            r" its settings are \['project', 'location', "
        ),
    ):
        load_config(path)


def test_load_config_job_option_in_provider_settings_points_to_the_spec(tmp_path):
    path = write(tmp_path, "providers: {h2o: {nfolds: 1}}\n")

    with pytest.raises(ConfigurationError) as caught:
        load_config(path)

    message = str(caught.value)
    assert message.startswith("provider 'h2o' has no setting 'nfolds'; its settings")
    assert "'url', 'max_mem_gib', 'nthreads'" in message
    assert message.endswith("go in the job spec under provider_options.h2o")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            "{h2o: {max_mem_gib: lots}}",
            "provider 'h2o' setting 'max_mem_gib' must be a number, got 'lots'",
        ),
        (
            "{azure: {max_nodes: '4.5'}}",
            "provider 'azure' setting 'max_nodes' must be a whole number, got '4.5'",
        ),
        (
            "{h2o: {nthreads: yes}}",
            "provider 'h2o' setting 'nthreads' must be a whole number, got True",
        ),
    ],
)
def test_load_config_provider_setting_of_the_wrong_type_is_named(
    tmp_path, settings: str, message: str
):
    path = write(tmp_path, f"providers: {settings}\n")

    with pytest.raises(ConfigurationError) as caught:
        load_config(path)

    assert str(caught.value) == message


def test_provider_settings_read_what_yaml_could_only_write_another_way():
    from datetime import date

    from broker.providers import provider_settings

    # a project number, a number YAML reads as text (1e3), a quoted whole number
    assert provider_settings(
        "vertex", {"project": 123456789012, "poll_interval_s": "1e3"}
    ) == {"project": "123456789012", "poll_interval_s": 1000.0}
    assert provider_settings(
        "azure", {"max_nodes": "4", "staging_prefix": date(2024, 6, 1)}
    ) == {
        "max_nodes": 4,
        "staging_prefix": "2024-06-01",
    }


def test_load_config_unknown_provider_name_is_refused(tmp_path):
    path = write(tmp_path, "providers: {vertx: {project: p}}\n")

    with pytest.raises(
        ConfigurationError,
        match=(
            r"unknown provider 'vertx' \(did you mean 'vertex'\?\); providers are "
            r"\['azure', 'h2o', 'local', 'sagemaker', 'vertex'\]"
        ),
    ):
        load_config(path)


def test_load_config_provider_settings_that_are_not_a_mapping_are_not_echoed(
    tmp_path,
):
    path = write(tmp_path, f"providers: {{h2o: {SECRET}}}\n")

    with pytest.raises(
        ConfigurationError, match=r"providers.h2o must be a mapping .* got str$"
    ) as caught:
        load_config(path)

    assert SECRET not in str(caught.value)


def test_load_config_keeps_valid_provider_settings(tmp_path):
    path = write(
        tmp_path,
        "providers:\n"
        "  vertex: {project: p1, location: europe-west4}\n"
        "  h2o: {max_mem_gib: 2}\n"
        "  azure:\n",
    )

    config = load_config(path)

    assert config.providers == {
        "vertex": {"project": "p1", "location": "europe-west4"},
        "h2o": {"max_mem_gib": 2},
        "azure": {},
    }


def test_create_provider_unknown_setting_is_a_configuration_error():
    with pytest.raises(
        ConfigurationError,
        match=r"provider 'sagemaker' has no setting 'regoin' \(did you mean 'region'",
    ):
        create_provider("sagemaker", regoin="us-east-1")


def test_create_provider_unknown_name_lists_the_providers():
    # still a ValueError, as before, for callers that caught that
    with pytest.raises(ValueError, match=r"unknown provider 'gcp'; choose from \["):
        create_provider("gcp")


def test_accepted_settings_come_from_the_constructor():
    assert accepted_settings("local") == [
        "space",
        "after_preprocess",
        "cancel_wait_s",
        "knowledge",
    ]
