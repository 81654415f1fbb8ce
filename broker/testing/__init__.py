"""Fakes of the cloud services, shipped so users can test without accounts.

- :class:`FakeServer` (with :class:`Fault`, :class:`FakeResponse`): a threaded HTTP server
  on 127.0.0.1 with routes, a call log, fault injection and a controllable clock.
- :mod:`broker.testing.vertex_fake`: a Vertex AI REST fake the real SDK talks to.
- :mod:`broker.testing.azure_fake`: an Azure ML REST fake the real SDK talks to.
- :func:`synthetic_job`: a small :class:`broker.providers.base.ProviderJob` to run.

The service fakes import scikit-learn when they train; import them by module.
"""

from broker.testing._fake_server import (
    FakeRequest,
    FakeResponse,
    FakeServer,
    Fault,
    RecordedCall,
)
from broker.testing._jobs import SyntheticJob, synthetic_job, synthetic_table

__all__ = [
    "FakeRequest",
    "FakeResponse",
    "FakeServer",
    "Fault",
    "RecordedCall",
    "SyntheticJob",
    "synthetic_job",
    "synthetic_table",
]

# The SageMaker Autopilot driver (moto plus a job lifecycle) and the scripted provider;
# both import moto, boto3 and scikit-learn only when used.
from broker.testing.sagemaker_fake import (  # noqa: E402
    AutopilotFake,
    AutopilotScript,
    CandidatePlan,
)
from broker.testing.scripted import ScriptedProvider, ScriptStep  # noqa: E402

__all__ += [
    "AutopilotFake",
    "AutopilotScript",
    "CandidatePlan",
    "ScriptStep",
    "ScriptedProvider",
]
