"""Credential discovery from environment variables and files only."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from broker.credentials import discover, discover_all, module_installed

SECRET = "s3cr3t-value-never-shown"


def everything(module: str) -> bool:
    return True


def nothing(module: str) -> bool:
    return False


def write(path: Path, text: str = "{}") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- SDK missing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "hint"),
    [
        ("vertex", r"google-cloud-aiplatform package is not installed.*\[vertex\]"),
        ("azure", r"azure-ai-ml package is not installed.*\[azure\]"),
        ("sagemaker", r"boto3 package is not installed.*\[aws\]"),
        ("h2o", r"h2o package is not installed.*\[h2o\]"),
    ],
)
def test_discover_missing_sdk_says_how_to_install(
    provider: str, hint: str, tmp_path: Path
) -> None:
    found = discover(provider, env={}, home=tmp_path, installed=nothing)
    assert not found.available
    assert re.search(hint, found.reason), found.reason


def test_discover_local_is_always_available(tmp_path: Path) -> None:
    found = discover("local", env={}, home=tmp_path, installed=nothing)
    assert (found.available, found.credential_source) == (True, "local")


def test_discover_unknown_provider_lists_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown provider 'gcp'; choose from"):
        discover("gcp", env={}, home=tmp_path)


def test_discover_all_without_credentials_only_local(tmp_path: Path) -> None:
    found = discover_all(env={"PATH": ""}, home=tmp_path, installed=everything)
    assert {name: a.available for name, a in found.items()} == {
        "vertex": False,
        "azure": False,
        "sagemaker": False,
        "h2o": False,
        "local": True,
    }


# --- Vertex ---------------------------------------------------------------------------


def test_discover_vertex_key_file_and_project(tmp_path: Path) -> None:
    key = write(tmp_path / "key.json")
    env = {"GOOGLE_APPLICATION_CREDENTIALS": str(key), "GOOGLE_CLOUD_PROJECT": "p1"}
    found = discover("vertex", env=env, home=tmp_path, installed=everything)
    assert found.available
    assert found.credential_source == "GOOGLE_APPLICATION_CREDENTIALS"


def test_discover_vertex_adc_file_without_project_names_variable(
    tmp_path: Path,
) -> None:
    write(tmp_path / ".config" / "gcloud" / "application_default_credentials.json")
    found = discover("vertex", env={}, home=tmp_path, installed=everything)
    assert not found.available
    assert "no project; set GOOGLE_CLOUD_PROJECT" in found.reason
    assert found.credential_source == "gcloud application-default credentials"


def test_discover_vertex_key_file_missing_on_disk(tmp_path: Path) -> None:
    env = {"GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "gone.json")}
    found = discover("vertex", env=env, home=tmp_path, installed=everything)
    assert not found.available
    assert "names a file that does not exist" in found.reason


# --- Azure ----------------------------------------------------------------------------


def test_discover_azure_service_principal_never_shows_secret(tmp_path: Path) -> None:
    env = {
        "AZURE_CLIENT_ID": "cid",
        "AZURE_TENANT_ID": "tid",
        "AZURE_CLIENT_SECRET": SECRET,
        "AZURE_SUBSCRIPTION_ID": "sub",
    }
    found = discover("azure", env=env, home=tmp_path, installed=everything)
    assert found.available
    assert found.reason == (
        "Azure ML: credentials from service principal "
        "(AZURE_CLIENT_ID, AZURE_TENANT_ID)"
    )
    assert SECRET not in found.reason


def test_discover_azure_partial_principal_names_missing_variables(
    tmp_path: Path,
) -> None:
    env = {"AZURE_CLIENT_ID": "cid"}
    found = discover("azure", env=env, home=tmp_path, installed=everything)
    assert not found.available
    assert found.reason == (
        "Azure ML: service principal incomplete; also set AZURE_TENANT_ID, "
        "AZURE_CLIENT_SECRET or AZURE_CLIENT_CERTIFICATE_PATH"
    )


def test_discover_azure_cli_login_needs_subscription(tmp_path: Path) -> None:
    write(tmp_path / ".azure" / "msal_token_cache.json")
    found = discover("azure", env={}, home=tmp_path, installed=everything)
    assert not found.available
    assert "no subscription; set AZURE_SUBSCRIPTION_ID" in found.reason

    env = {"AZURE_SUBSCRIPTION_ID": "sub"}
    found = discover("azure", env=env, home=tmp_path, installed=everything)
    assert found.available
    assert "Azure CLI login cache" in found.reason


# --- AWS ------------------------------------------------------------------------------


def test_discover_sagemaker_access_keys_never_shows_secret(tmp_path: Path) -> None:
    env = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": SECRET}
    found = discover("aws", env=env, home=tmp_path, installed=everything)
    assert found.available
    assert SECRET not in found.reason and "AKIDEXAMPLE" not in found.reason


def test_discover_sagemaker_key_without_secret(tmp_path: Path) -> None:
    env = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE"}
    found = discover("sagemaker", env=env, home=tmp_path, installed=everything)
    assert not found.available
    assert "without AWS_SECRET_ACCESS_KEY" in found.reason


def test_discover_sagemaker_profile_found_in_config(tmp_path: Path) -> None:
    write(tmp_path / ".aws" / "config", "[profile dev]\nregion = us-east-1\n")
    found = discover(
        "sagemaker", env={"AWS_PROFILE": "dev"}, home=tmp_path, installed=everything
    )
    assert found.available
    assert found.reason == "SageMaker: credentials from AWS profile 'dev'"


def test_discover_sagemaker_profile_absent_says_aws_configure(tmp_path: Path) -> None:
    write(
        tmp_path / ".aws" / "credentials",
        f"[default]\naws_secret_access_key={SECRET}\n",
    )
    found = discover(
        "sagemaker", env={"AWS_PROFILE": "prod"}, home=tmp_path, installed=everything
    )
    assert not found.available
    assert "`aws configure --profile prod`" in found.reason
    assert SECRET not in found.reason


def test_discover_sagemaker_default_credentials_file(tmp_path: Path) -> None:
    path = write(tmp_path / ".aws" / "credentials", "[default]\n")
    found = discover("sagemaker", env={}, home=tmp_path, installed=everything)
    assert found.available
    assert found.credential_source == str(path)


# --- H2O ------------------------------------------------------------------------------


def test_discover_h2o_java_home(tmp_path: Path) -> None:
    java = write(tmp_path / "jdk" / "bin" / "java", "")
    env = {"JAVA_HOME": str(java.parents[1]), "PATH": ""}
    found = discover("h2o", env=env, home=tmp_path, installed=everything)
    assert found.available
    assert found.reason == "H2O: embedded cluster with Java from JAVA_HOME"


def test_discover_h2o_java_on_path(tmp_path: Path) -> None:
    java = write(tmp_path / "bin" / "java", "")
    java.chmod(0o755)
    found = discover(
        "h2o", env={"PATH": str(java.parent)}, home=tmp_path, installed=everything
    )
    assert found.available
    assert found.credential_source == "java"


def test_discover_h2o_cluster_url_needs_no_java(tmp_path: Path) -> None:
    env = {"AUTOML_BROKER_H2O_URL": "http://127.0.0.1:54321", "PATH": ""}
    found = discover("h2o", env=env, home=tmp_path, installed=everything)
    assert found.available
    assert found.credential_source == "AUTOML_BROKER_H2O_URL"


def test_discover_h2o_without_java_says_how_to_fix(tmp_path: Path) -> None:
    found = discover("h2o", env={"PATH": ""}, home=tmp_path, installed=everything)
    assert not found.available
    assert "no Java runtime found" in found.reason
    assert "AUTOML_BROKER_H2O_URL" in found.reason


# --- the installed-package probe ------------------------------------------------------


def test_module_installed_finds_without_importing() -> None:
    assert module_installed("json")
    assert not module_installed("no_such_package_here")
    assert not module_installed("no_such_package_here.sub")
    if "h2o" not in sys.modules:
        module_installed("h2o")
        assert "h2o" not in sys.modules  # found, not imported
