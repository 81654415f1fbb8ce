"""All three cloud fakes at once, with chosen faults, for a whole broker run.

``automl-broker run DATA --target T --fakes vertex=quota,azure=capacity,sagemaker=credentials``
uses this module to start the Vertex and Azure REST fakes on 127.0.0.1 and the SageMaker
driver around moto, each wired to its real adapter, so a user can watch the broker fail over
from cloud to cloud and land on the local backend without any account. Jobs in the fakes run
on the real clock with short schedules (seconds, not hours).

From Python::

    with fake_fleet({"vertex": "quota", "azure": "ok"}) as fleet:
        result = Broker(providers=fleet.providers).run(spec)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from broker.clock import SYSTEM_CLOCK, Clock
from broker.errors import ConfigurationError
from broker.providers.base import Provider

logger = logging.getLogger(__name__)

CLOUDS = ("vertex", "azure", "sagemaker")
FAULT_NAMES = (
    "ok",
    "quota",
    "capacity",
    "credentials",
    "throttle",
    "server",
    "invalid",
)
# A faulty cloud stays faulty for the whole run: every matching request fails.
PERSISTENT = 10_000


@dataclass
class FakeFleet:
    """The running fakes and the providers wired to them."""

    providers: dict[str, Provider]
    faults: dict[str, str]
    servers: dict[str, Any] = field(default_factory=dict)


def parse_faults(text: str) -> dict[str, str]:
    """Parse ``vertex=quota,azure=ok`` into a mapping, checking every name."""
    faults: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, _, fault = part.partition("=")
        name, fault = name.strip().lower(), (fault.strip().lower() or "ok")
        if name not in CLOUDS:
            raise ConfigurationError(
                f"--fakes names {name!r}, which has no fake; choose from {list(CLOUDS)}"
            )
        if fault not in FAULT_NAMES:
            raise ConfigurationError(
                f"--fakes fault {fault!r} for {name} is unknown; choose from "
                f"{list(FAULT_NAMES)}"
            )
        faults[name] = fault
    if not faults:
        raise ConfigurationError(
            "--fakes is empty; write e.g. vertex=quota,azure=capacity,sagemaker=ok"
        )
    return faults


@contextmanager
def fake_fleet(
    faults: Mapping[str, str], *, clock: Clock = SYSTEM_CLOCK
) -> Iterator[FakeFleet]:
    """Start a fake for each cloud named in `faults`, inject its fault, and stop them
    all on exit."""
    starters: dict[str, Callable[[ExitStack, str, Clock], tuple[Any, Provider]]] = {
        "vertex": _vertex,
        "azure": _azure,
        "sagemaker": _sagemaker,
    }
    fleet = FakeFleet(providers={}, faults=dict(faults))
    with ExitStack() as stack:
        for name, fault in faults.items():
            server, provider = starters[name](stack, fault, clock)
            fleet.servers[name] = server
            fleet.providers[name] = provider
            logger.info("fake %s started (fault: %s)", name, fault)
        yield fleet


def _vertex(stack: ExitStack, fault: str, clock: Clock) -> tuple[Any, Provider]:
    from broker.providers.vertex import VertexProvider
    from broker.testing import vertex_fake as vf

    schedule = (("PIPELINE_STATE_QUEUED", 1.0), ("PIPELINE_STATE_RUNNING", 3.0))
    server = stack.enter_context(vf.VertexFake(clock=clock, schedule=schedule))
    pipelines = r".*/trainingPipelines$"
    faults = {
        "quota": lambda: vf.quota_exceeded(path=pipelines),
        "credentials": lambda: vf.unauthenticated(method="POST"),
        "throttle": lambda: vf.rate_limited(),
        "server": lambda: vf.server_error(),
        "invalid": lambda: vf.invalid_argument(path=pipelines),
    }
    if fault == "capacity":
        server.fail_next_pipeline(vf.capacity_failure())
    elif fault in faults:
        server.inject(replace(faults[fault](), times=PERSISTENT))
    settings = server.client_settings(refresh_fails=fault == "credentials")
    settings["clock"] = clock
    return server, VertexProvider(**settings)


def _azure(stack: ExitStack, fault: str, clock: Clock) -> tuple[Any, Provider]:
    from broker.providers.azure import AzureProvider
    from broker.testing import azure_fake as af

    schedule = (("Queued", 1.0), ("Running", 3.0))
    server = stack.enter_context(af.AzureFake(clock=clock, schedule=schedule))
    faults = {
        "quota": af.quota_exceeded,
        "capacity": af.allocation_failed,
        "credentials": af.expired_token,
        "throttle": af.throttled,
        "server": af.server_error,
        "invalid": af.invalid_request,
    }
    if fault in faults:
        server.inject(replace(faults[fault](), times=PERSISTENT))
    settings = server.client_settings()
    settings["clock"] = clock
    return server, AzureProvider(**settings)


def _sagemaker(stack: ExitStack, fault: str, clock: Clock) -> tuple[Any, Provider]:
    from broker.testing import sagemaker_fake as sf

    script = sf.AutopilotScript(
        timeline=(
            (0, "InProgress", "Starting"),
            (1, "InProgress", "AnalyzingData"),
            (2, "InProgress", "ModelTuning"),
            (4, "Completed", "Completed"),
        ),
        candidates=(sf.CandidatePlan("xgboost", 2, 1.5),),
    )
    fake = sf.AutopilotFake(clock=clock, script=script)  # type: ignore[arg-type]
    server = stack.enter_context(fake)
    operation = "CreateAutoMLJobV2"
    aws_fault = {
        "quota": "quota",
        "capacity": "capacity",
        "credentials": "expired_token",
        "throttle": "throttling",
        "server": "server_error",
        "invalid": "validation",
    }.get(fault)
    if aws_fault is not None:
        server.inject(operation, aws_fault, times=PERSISTENT)
    return server, server.provider(clock=clock, poll_interval_s=1.0)
