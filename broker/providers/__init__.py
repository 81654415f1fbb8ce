"""The backends, found by name. Modules are imported on first use, never at start-up."""

from __future__ import annotations

import importlib
from typing import Any

from broker.providers.base import (
    Availability,
    Provider,
    ProviderJob,
    ProviderJobRef,
    ProviderResult,
    ProviderStatus,
)

REGISTRY: dict[str, str] = {
    "vertex": "broker.providers.vertex:VertexProvider",
    "azure": "broker.providers.azure:AzureProvider",
    "sagemaker": "broker.providers.sagemaker:SageMakerProvider",
    "h2o": "broker.providers.h2o:H2OProvider",
    "local": "broker.providers.local:LocalProvider",
}


def provider_class(name: str) -> type[Provider]:
    try:
        target = REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown provider {name!r}; choose from {sorted(REGISTRY)}"
        ) from None
    module_name, _, class_name = target.partition(":")
    module = importlib.import_module(module_name)
    cls: type[Provider] = getattr(module, class_name)
    return cls


def create_provider(name: str, **settings: Any) -> Provider:
    return provider_class(name)(**settings)


__all__ = [
    "REGISTRY",
    "Availability",
    "Provider",
    "ProviderJob",
    "ProviderJobRef",
    "ProviderResult",
    "ProviderStatus",
    "create_provider",
    "provider_class",
]
