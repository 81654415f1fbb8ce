"""Credentials, tokens and signed URLs never reach the logs, the store or the run folder.

A job runs with secrets in its provider's settings and in its spec's provider options;
the fake service signs artifact URLs with them, as real services do. Afterwards every
captured log line (at DEBUG), the raw bytes of the job store's files and every file of
the run folder are scanned for each secret. The secrets are built from pieces so that
this file itself does not hold them.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from broker.testing.durable import DurableService, build_broker, job_spec

pytestmark = pytest.mark.filterwarnings("ignore::broker.errors.MetricWarning")


def fake_secrets() -> dict[str, str]:
    tail = hashlib.sha256(b"not a real account").hexdigest()
    return {
        "access_key_id": "AKIA" + tail[:16].upper(),
        "secret_access_key": "wJalr" + tail[16:40],
        "api_key": "sk-" + tail[40:64],
        "sas_signature": "sig" + tail[:12] + "Zq",
        "bearer": "eyJhbG" + tail[8:30],
        "account_key": "acctkey" + tail[30:50] + "==",
    }


def write_table(path: Path) -> None:
    rng = np.random.default_rng(2)
    x1 = rng.normal(size=120)
    pd.DataFrame({"x1": x1, "label": np.where(x1 > 0, "yes", "no")}).to_csv(
        path, index=False
    )


def test_secrets_never_reach_logs_store_or_run_folder(tmp_path, caplog):
    secrets = fake_secrets()
    write_table(tmp_path / "table.csv")
    config: dict[str, Any] = {
        "store": str(tmp_path / "jobs.db"),
        "service": str(tmp_path / "service.db"),
        "providers": {
            "sagemaker": {
                "credentials": {
                    "aws_access_key_id": secrets["access_key_id"],
                    "aws_secret_access_key": secrets["secret_access_key"],
                }
            }
        },
    }
    job = {
        "data": str(tmp_path / "table.csv"),
        "target": "label",
        "providers": ["sagemaker"],
        "provider_options": {
            "sagemaker": {
                "api_key": secrets["api_key"],
                "output_url": "https://127.0.0.1/out/model.tar.gz?sv=2024-01-01"
                f"&sig={secrets['sas_signature']}",
                "auth_header": f"Bearer {secrets['bearer']}",
                "storage": "DefaultEndpointsProtocol=https;AccountName=acct;"
                f"AccountKey={secrets['account_key']}",
            }
        },
    }
    caplog.set_level(logging.DEBUG)
    broker = build_broker(config)
    spec = job_spec(job)
    # the secrets really are in what the broker was given
    assert spec.provider_options["sagemaker"]["api_key"] == secrets["api_key"]

    result = broker.run(spec, run_dir=tmp_path / "run", idempotency_key="secret-run")

    assert result.state == "succeeded"
    [service_job] = DurableService(config["service"]).jobs()
    [attempt] = broker.store.attempts(result.job_id)
    signed = broker.provider("sagemaker")._ref(service_job["job_id"], "k", None)
    url_signature = signed.extra["artifact_url"].rsplit("=", 1)[1]
    assert attempt.provider_ref is not None  # the handle with the signed URL was kept
    broker.store.close()

    logs = "\n".join([caplog.text] + [r.getMessage() for r in caplog.records]).encode()
    store_bytes = b"".join(p.read_bytes() for p in tmp_path.glob("jobs.db*"))
    run_files = {
        p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()
    }
    # the scans read real content: the job id is in all three
    assert result.job_id.encode() in logs
    assert result.job_id.encode() in store_bytes
    assert any(result.job_id.encode() in data for data in run_files.values())
    for name, secret in {**secrets, "url_signature": url_signature}.items():
        needle = secret.encode()
        assert needle not in logs, f"{name} in the logs"
        assert needle not in store_bytes, f"{name} in the job store"
        leaks = [str(p) for p, data in run_files.items() if needle in data]
        assert leaks == [], f"{name} in {leaks}"
