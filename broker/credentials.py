"""Whether each provider can be used here, judged from the environment alone.

:func:`discover` reads environment variables, checks that credential files exist, and
asks the import system whether an SDK package is installed
(``importlib.util.find_spec``, without importing it). It never opens a network
connection, never asks a metadata server, and never reads or repeats a secret: reasons
name variables and files, not their values.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

from broker.providers.base import Availability

logger = logging.getLogger(__name__)

H2O_URL_ENV = "AUTOML_BROKER_H2O_URL"

Installed = Callable[[str], bool]


def discover(
    provider: str,
    env: Mapping[str, str] = os.environ,
    home: Path | None = None,
    *,
    installed: Installed | None = None,
) -> Availability:
    """Whether `provider` has an SDK and credentials on this machine.

    Args:
        provider: one of vertex, azure, sagemaker (aws is accepted too), h2o, local.
        env: the environment to read.
        home: the home folder holding ``.aws``, ``.azure`` and ``.config/gcloud``.
        installed: tells whether a module is installed; ``find_spec`` when None.

    Returns:
        An :class:`Availability` whose reason says where the credentials came from, or
        what is missing and how to supply it.

    Raises:
        ValueError: `provider` is not a known name.

    Example:
        >>> discover("local").available
        True
    """
    home = Path.home() if home is None else home
    installed = installed or module_installed
    name = "sagemaker" if provider == "aws" else provider
    try:
        check = _CHECKS[name]
    except KeyError:
        raise ValueError(
            f"unknown provider {provider!r}; choose from {sorted(_CHECKS)}"
        ) from None

    availability = check(env, home, installed)
    logger.debug("%s availability: %s", name, availability.reason)
    return availability


def discover_all(
    env: Mapping[str, str] = os.environ,
    home: Path | None = None,
    *,
    installed: Installed | None = None,
) -> dict[str, Availability]:
    """:func:`discover` for every provider, keyed by name."""
    return {name: discover(name, env, home, installed=installed) for name in _CHECKS}


def module_installed(module: str) -> bool:
    """True when `module` can be imported; finds it without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package of a dotted name
        return False


# --- one check per provider -----------------------------------------------------------


def _vertex(env: Mapping[str, str], home: Path, installed: Installed) -> Availability:
    if not installed("google.cloud.aiplatform"):
        return _missing_sdk("Vertex AI", "google-cloud-aiplatform", "vertex")

    source = None
    key_file = env.get("GOOGLE_APPLICATION_CREDENTIALS")
    if key_file:
        if not Path(key_file).is_file():
            return Availability(
                False,
                "Vertex AI: GOOGLE_APPLICATION_CREDENTIALS names a file that does not "
                "exist; point it at a service-account key file or unset it and run "
                "`gcloud auth application-default login`",
            )
        source = "GOOGLE_APPLICATION_CREDENTIALS"
    else:
        config_dir = env.get("CLOUDSDK_CONFIG") or str(home / ".config" / "gcloud")
        if (Path(config_dir) / "application_default_credentials.json").is_file():
            source = "gcloud application-default credentials"
    if source is None:
        return Availability(
            False,
            "Vertex AI: no Google credentials found; set "
            "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file or run "
            "`gcloud auth application-default login`",
        )

    project_vars = ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT", "GCLOUD_PROJECT")
    if not any(env.get(var) for var in project_vars):
        return Availability(
            False,
            f"Vertex AI: credentials found ({source}) but no project; set "
            "GOOGLE_CLOUD_PROJECT to the project to train in",
            credential_source=source,
        )
    return Availability(True, f"Vertex AI: credentials from {source}", source)


def _azure(env: Mapping[str, str], home: Path, installed: Installed) -> Availability:
    if not installed("azure.ai.ml"):
        return _missing_sdk("Azure ML", "azure-ai-ml", "azure")

    principal = [v for v in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID") if env.get(v)]
    has_secret = bool(
        env.get("AZURE_CLIENT_SECRET") or env.get("AZURE_CLIENT_CERTIFICATE_PATH")
    )
    config_dir = Path(env.get("AZURE_CONFIG_DIR") or home / ".azure")
    login_files = ("msal_token_cache.json", "msal_token_cache.bin", "accessTokens.json")
    logged_in = any((config_dir / f).is_file() for f in login_files)

    if len(principal) == 2 and has_secret:
        source = "service principal (AZURE_CLIENT_ID, AZURE_TENANT_ID)"
    elif logged_in:
        source = f"Azure CLI login cache in {config_dir}"
    elif principal:
        missing = [
            v for v in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID") if v not in principal
        ]
        if not has_secret:
            missing.append("AZURE_CLIENT_SECRET or AZURE_CLIENT_CERTIFICATE_PATH")
        return Availability(
            False,
            "Azure ML: service principal incomplete; also set " + ", ".join(missing),
        )
    else:
        return Availability(
            False,
            "Azure ML: no Azure credentials found; set AZURE_CLIENT_ID, "
            "AZURE_TENANT_ID and AZURE_CLIENT_SECRET, or run `az login`",
        )

    if not env.get("AZURE_SUBSCRIPTION_ID"):
        return Availability(
            False,
            f"Azure ML: credentials found ({source}) but no subscription; set "
            "AZURE_SUBSCRIPTION_ID",
            credential_source=source,
        )
    return Availability(True, f"Azure ML: credentials from {source}", source)


def _sagemaker(
    env: Mapping[str, str], home: Path, installed: Installed
) -> Availability:
    if not installed("boto3"):
        return _missing_sdk("SageMaker", "boto3", "aws")

    if env.get("AWS_ACCESS_KEY_ID"):
        if not env.get("AWS_SECRET_ACCESS_KEY"):
            return Availability(
                False,
                "SageMaker: AWS_ACCESS_KEY_ID is set without AWS_SECRET_ACCESS_KEY; "
                "set both, or use AWS_PROFILE",
            )
        return Availability(
            True, "SageMaker: credentials from AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"
        )

    credentials_file = Path(
        env.get("AWS_SHARED_CREDENTIALS_FILE") or home / ".aws" / "credentials"
    )
    config_file = Path(env.get("AWS_CONFIG_FILE") or home / ".aws" / "config")
    files = [f for f in (credentials_file, config_file) if f.is_file()]
    profile = env.get("AWS_PROFILE")
    if profile:
        if any(_has_profile(f, profile) for f in files):
            return Availability(
                True,
                f"SageMaker: credentials from AWS profile {profile!r}",
                "AWS_PROFILE",
            )
        return Availability(
            False,
            f"SageMaker: AWS_PROFILE={profile!r} is not in "
            f"{credentials_file} or {config_file}; run "
            f"`aws configure --profile {profile}`",
        )
    if files:
        return Availability(
            True, f"SageMaker: credentials from {files[0]}", str(files[0])
        )
    return Availability(
        False,
        "SageMaker: no AWS credentials found; set AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY, set AWS_PROFILE, or run `aws configure`",
    )


def _h2o(env: Mapping[str, str], home: Path, installed: Installed) -> Availability:
    if not installed("h2o"):
        return _missing_sdk("H2O", "h2o", "h2o")

    if env.get(H2O_URL_ENV):
        return Availability(True, f"H2O: cluster URL from {H2O_URL_ENV}", H2O_URL_ENV)

    java_home = env.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return Availability(
            True, "H2O: embedded cluster with Java from JAVA_HOME", "java"
        )
    if shutil.which("java", path=env.get("PATH", "")):
        return Availability(True, "H2O: embedded cluster with java on PATH", "java")
    return Availability(
        False,
        "H2O: no Java runtime found; install Java 8-17 and put `java` on PATH or set "
        f"JAVA_HOME, or set {H2O_URL_ENV} to a running H2O cluster",
    )


def _local(env: Mapping[str, str], home: Path, installed: Installed) -> Availability:
    return Availability(True, "local: runs on this machine", "local")


_CHECKS: dict[str, Callable[[Mapping[str, str], Path, Installed], Availability]] = {
    "vertex": _vertex,
    "azure": _azure,
    "sagemaker": _sagemaker,
    "h2o": _h2o,
    "local": _local,
}


def _missing_sdk(service: str, package: str, extra: str) -> Availability:
    return Availability(
        False,
        f"{service}: the {package} package is not installed; run "
        f"`pip install 'automl-broker[{extra}]'`",
    )


def _has_profile(path: Path, profile: str) -> bool:
    """True when the AWS file has a section for `profile`; reads section names only."""
    headers = {f"[{profile}]", f"[profile {profile}]"}
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            return any(line.strip() in headers for line in handle)
    except OSError:
        return False
