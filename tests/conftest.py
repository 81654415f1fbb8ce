"""Fixtures shared by every test module.

Every test runs without cloud credentials and with metadata lookups switched off, so no
test can reach a real account or the instance metadata address by accident.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

CREDENTIAL_PREFIXES = ("AWS_", "AZURE_", "GOOGLE_", "GCLOUD_", "CLOUDSDK_", "H2O_")
SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.fixture(autouse=True)
def _no_cloud_credentials(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Clear cloud credential and config variables; disable metadata probes."""
    for name in list(os.environ):
        if name.startswith(CREDENTIAL_PREFIXES):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    yield


@pytest.fixture(autouse=True)
def _own_broker_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Give each test its own job store, search memory and config folders, and drop
    the user's broker settings, so no test reads or writes the user's own."""
    for name in list(os.environ):
        if name.startswith("AUTOML_BROKER_"):
            monkeypatch.delenv(name, raising=False)
    home = tmp_path_factory.mktemp("broker-home")
    monkeypatch.setenv("AUTOML_BROKER_HOME", str(home / "data"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "xdg-data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "xdg-config"))


@pytest.fixture
def shared_datasets() -> Path:
    """The shared benchmark datasets folder; skips the test when it is absent."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"shared datasets folder absent: {SHARED_DATASETS}")
    return SHARED_DATASETS
