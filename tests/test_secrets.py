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
import time
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


def test_secrets_under_cloud_option_names_stay_out_of_store_and_run_folder(tmp_path):
    # The option names users of Vertex AI, AWS and H2O give credentials: each value
    # must be masked, while the plain settings beside them stay readable.
    tail = hashlib.sha256(b"another fake account").hexdigest()
    secrets = {
        "service_account_json": '{"type": "service_account", "k": "' + tail[:20] + '"}',
        "keyfile": "kf-" + tail[20:36],
        "bearer": "br-" + tail[36:52],
        "session": "ss-" + tail[52:64],
    }
    readable = {
        "region": "region-marker-5510",
        "project": "project-marker-5511",
        "machine_type": "n1-marker-5512",
        "key_column": "column-marker-5513",
    }
    write_table(tmp_path / "table.csv")
    config: dict[str, Any] = {
        "store": str(tmp_path / "jobs.db"),
        "service": str(tmp_path / "service.db"),
        "providers": {"vertex": {}},
    }
    job = {
        "data": str(tmp_path / "table.csv"),
        "target": "label",
        "providers": ["vertex"],
        "provider_options": {"vertex": {**secrets, **readable}},
    }
    broker = build_broker(config)

    result = broker.run(job_spec(job), run_dir=tmp_path / "run", idempotency_key="o1")

    assert result.state == "succeeded"
    stored = broker.store.get(result.job_id).spec["provider_options"]["vertex"]
    broker.store.close()
    store_bytes = b"".join(p.read_bytes() for p in tmp_path.glob("jobs.db*"))
    spec_json = (tmp_path / "run" / "spec.json").read_bytes()
    # the masked names are exactly the four secrets; the rest is kept as given
    assert stored == {**dict.fromkeys(secrets, "[REDACTED]"), **readable}
    for name, secret in secrets.items():
        assert secret.encode() not in store_bytes, f"{name} in the job store"
        assert secret.encode() not in spec_json, f"{name} in spec.json"
    for value in readable.values():
        assert value.encode() in spec_json


@pytest.mark.parametrize(
    "name",
    [
        "bearer",
        "keyfile",
        "key_file",
        "service_account_json",
        "serviceAccountFile",
        "service_account",
        "session",
        "session_token",
        "aws_session_token",
        "private_key",
        "connection_string",
        "sas",
        "signature",
        "cookie",
        "authorization",
        "credentials",
        "passwd",
        "key",
        "secret_key_id",
        "client_certificate",
    ],
)
def test_is_secret_key_names_cloud_credentials(name: str) -> None:
    from broker.redact import is_secret_key

    assert is_secret_key(name) is True


@pytest.mark.parametrize(
    "name",
    [
        "region",
        "project",
        "machine_type",
        "location",
        "key_column",
        "keyColumn",
        "session_name",
        "token_ttl_s",
        "service_account_email",
        "signature_version",
        "idempotency_key",
        "kms_key_id",
        "encryption_spec_key_name",
        "key_vault_url",
        "author",
    ],
)
def test_is_secret_key_keeps_settings_that_only_describe_a_secret(name: str) -> None:
    from broker.redact import is_secret_key

    assert is_secret_key(name) is False


def test_redact_masks_cloud_credential_options_and_keeps_plain_settings() -> None:
    from broker.redact import redact

    options = {
        "vertex": {
            "service_account_json": "X",
            "keyfile": "Y",
            "bearer": "Z",
            "session": "W",
            "region": "europe-west4",
            "key_column": "customer_id",
        }
    }

    assert redact(options) == {
        "vertex": {
            "service_account_json": "[REDACTED]",
            "keyfile": "[REDACTED]",
            "bearer": "[REDACTED]",
            "session": "[REDACTED]",
            "region": "europe-west4",
            "key_column": "customer_id",
        }
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://user:p@ss@127.0.0.1:1/", "http://user:[REDACTED]@127.0.0.1:1/"),
        ("http://u:a/b@c@127.0.0.1/x", "http://u:[REDACTED]@127.0.0.1/x"),
        (
            "h2o at http://u:pw@127.0.0.1:54321/3?to=ops@example.org failed",
            "h2o at http://u:[REDACTED]@127.0.0.1:54321/3?to=ops@example.org failed",
        ),
        ("http://127.0.0.1:54321/3/Jobs", "http://127.0.0.1:54321/3/Jobs"),
    ],
)
def test_redact_text_masks_the_whole_password_of_a_url(
    text: str, expected: str
) -> None:
    from broker.redact import redact_text

    assert redact_text(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("AZURE_CLIENT_SECRET=S5", "AZURE_CLIENT_SECRET=[REDACTED]"),
        ("GOOGLE_API_KEY=abc123", "GOOGLE_API_KEY=[REDACTED]"),
        ("export HF_TOKEN=hf_x", "export HF_TOKEN=[REDACTED]"),
        ("sas_token=sv2020", "sas_token=[REDACTED]"),
        ('{"client_secret": "S16"}', '{"client_secret": "[REDACTED]"}'),
        ("nightly token=SUPERSECRET_NAME", "nightly token=[REDACTED]"),
        ("a-b-private-key: q1", "a-b-private-key: [REDACTED]"),
        ("secret_key=abc123", "secret_key=[REDACTED]"),
        ("AZURE_STORAGE_KEY=k1", "AZURE_STORAGE_KEY=[REDACTED]"),
        ("account_key=xyz", "account_key=[REDACTED]"),
        ("subscription_key: s1", "subscription_key: [REDACTED]"),
        (
            "credentials: c1 and passphrase: pp",
            "credentials: [REDACTED] and passphrase: [REDACTED]",
        ),
        ('"client_secret": "abc def ghi"', '"client_secret": "[REDACTED]"'),
        ("Authorization: Basic dXNlcjpwYXNz", "Authorization: Basic [REDACTED]"),
        ("password: 123456", "password: [REDACTED]"),
        # settings that only mention a secret's kind keep their values
        ("max_tokens=100", "max_tokens=100"),
        ("token_ttl_s=5", "token_ttl_s=5"),
        ("tokenizer=bert", "tokenizer=bert"),
        ("key_column: id", "key_column: id"),
        ("sort_key=name", "sort_key=name"),
        ("H2O: basic model families only", "H2O: basic model families only"),
        (
            "column 'token': 3 value(s) are not numbers",
            "column 'token': 3 value(s) are not numbers",
        ),
        ("read /data/secret:/mnt", "read /data/secret:/mnt"),
        ("use_token: true", "use_token: true"),
    ],
)
def test_redact_text_masks_prefixed_and_quoted_secret_fields(
    text: str, expected: str
) -> None:
    from broker.redact import redact_text

    assert redact_text(text) == expected


def test_redact_text_reads_long_unbroken_text_in_one_pass() -> None:
    from broker.redact import redact_text

    # each rule starts only where a word starts: a 40,000-character word is read
    # once, not once per character (which took half a minute)
    long_word = "a_" * 20_000 + "x"
    started = time.monotonic()

    assert redact_text(long_word) == long_word
    assert redact_text("token" * 20_000) == "token" * 20_000
    assert time.monotonic() - started < 5.0


def test_redacting_filter_masks_secrets_in_any_record(caplog) -> None:
    from broker.redact import RedactingFilter

    record = logging.LogRecord(
        "google.auth", logging.WARNING, __file__, 1, "refresh failed: %s", None, None
    )
    record.args = ("client_secret=s3cr3t-value",)

    assert RedactingFilter().filter(record) is True
    assert record.getMessage() == "refresh failed: client_secret=[REDACTED]"


def test_cli_error_message_is_masked_before_it_is_shown(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from broker.cli import app

    data = tmp_path / "table.csv"
    data.write_text("x,y\n" + "".join(f"{i % 3},{i % 2}\n" for i in range(20)))
    config = tmp_path / "config.yaml"
    config.write_text(
        "providers:\n  vertex: {project: p, staging: "
        '"https://storage.example/b?token=abc123secret"}\n'
    )
    monkeypatch.setenv("AUTOML_BROKER_CONFIG", str(config))

    result = CliRunner().invoke(
        app, ["plan", str(data), "--target", "y", "--providers", "vertex,local"]
    )

    assert "abc123secret" not in result.output
    assert "token=[REDACTED]" in result.output


def test_redacting_filter_masks_a_traceback_that_carries_a_secret() -> None:
    from broker.redact import RedactingFilter

    try:
        raise RuntimeError("auth failed for client_secret=S3CRETVALUE")
    except RuntimeError:
        import sys

        record = logging.LogRecord(
            "azure", logging.ERROR, __file__, 1, "login failed", None, sys.exc_info()
        )

    assert RedactingFilter().filter(record) is True
    shown = logging.Formatter().format(record)
    assert "S3CRETVALUE" not in shown
    assert shown.startswith("login failed\nTraceback (most recent call last):")
    assert "RuntimeError: auth failed for client_secret=[REDACTED]" in shown
