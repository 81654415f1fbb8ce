"""Fixtures shared by every test module.

Every test runs without cloud credentials and with metadata lookups switched off, so no
test can reach a real account or the instance metadata address by accident.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
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


@pytest.fixture
def trial_data() -> Callable[[pd.DataFrame], tuple[Any, Any]]:
    """Turn a frame of numeric `a`, `b` and a yes/no `label` into one trial's data
    (validated on its own rows) and the ROC AUC metric."""
    from broker.local.preprocess import TabularPreprocessor
    from broker.local.scoring import ValidationMetric
    from broker.local.trainer import TrialData

    def make(frame: pd.DataFrame) -> tuple[Any, Any]:
        pre = TabularPreprocessor.fit(frame, numeric=["a", "b"], categorical=[])
        x_num, x_cat = pre.transform(frame)
        y = (frame["label"] == "yes").to_numpy().astype(np.int64)
        data = TrialData(
            task="binary",
            n_outputs=2,
            x_num_train=x_num,
            x_cat_train=x_cat,
            y_train=y,
            x_num_val=x_num,
            x_cat_val=x_cat,
            y_val=y,
            cardinalities=pre.cardinalities,
        )
        return data, ValidationMetric.create("roc_auc", "binary", 1)

    return make
