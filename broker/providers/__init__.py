"""The backends, found by name. Modules are imported on first use, never at start-up."""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Mapping
from datetime import date
from typing import Any

from broker.errors import ConfigurationError
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
    """The class of the provider registered as `name`; its module is imported now.

    Args:
        name: A provider name such as ``"vertex"``.

    Returns:
        The provider class.

    Raises:
        ConfigurationError: `name` is not a registered provider (also a ValueError).
    """
    try:
        target = REGISTRY[name]
    except KeyError:
        raise ConfigurationError(
            f"unknown provider {name!r}; choose from {sorted(REGISTRY)}"
        ) from None

    module_name, _, class_name = target.partition(":")
    module = importlib.import_module(module_name)
    cls: type[Provider] = getattr(module, class_name)
    return cls


def accepted_settings(name: str) -> list[str] | None:
    """The keyword settings the provider `name` is built with, from its constructor.

    Args:
        name: A provider name.

    Returns:
        The setting names in the constructor's order, or None when the constructor
        takes any keyword (``**kwargs``).

    Raises:
        ConfigurationError: `name` is not a registered provider.
    """
    parameters = inspect.signature(provider_class(name).__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None
    return [
        p.name
        for p in parameters.values()
        if p.name != "self"
        and p.kind
        in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]


def check_provider_settings(name: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Refuse settings that the provider `name` does not take, naming a close match, or
    whose values are not of their type (see :func:`provider_settings`).

    Args:
        name: A provider name.
        settings: The keyword settings meant for its constructor.

    Returns:
        The settings as the constructor takes them.

    Raises:
        ConfigurationError: `name` is unknown, or a setting is not a constructor
            argument of the provider or not of its type.
    """
    accepted = accepted_settings(name)
    if accepted is None:
        return dict(settings)

    unknown = [str(key) for key in settings if key not in accepted]
    if not unknown:
        return provider_settings(name, settings)

    problems = []
    for key in unknown:
        close = difflib.get_close_matches(key, accepted, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(f"{key!r}{hint}")
    message = f"provider {name!r} has no setting {', '.join(problems)}; its settings "
    message += f"are {accepted}"
    if any("did you mean" not in problem for problem in problems):
        message += (
            f". Options for one job's training go in the job spec under "
            f"provider_options.{name}"
        )
    raise ConfigurationError(message)


def create_provider(name: str, **settings: Any) -> Provider:
    """Build the provider registered as `name` with its settings.

    Args:
        name: A provider name.
        **settings: Keyword arguments for the provider's constructor.

    Returns:
        The provider.

    Raises:
        ConfigurationError: `name` is unknown or a setting is not one it takes.
    """
    return provider_class(name)(**check_provider_settings(name, settings))


# Plain annotation words, and what a setting's value may be for each.
_SIMPLE_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
    "None": (type(None),),
}
_TYPE_WORDS = {
    "int": "a whole number",
    "float": "a number",
    "str": "text",
    "bool": "true or false",
}


def provider_settings(name: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """`settings` as the provider `name`'s constructor takes them.

    A value a config file could only write another way is read as meant: a project
    number or a date where text belongs becomes text, a number in quotes (or one YAML
    read as text, such as 1e3) a number. Anything else of the wrong plain type is
    refused before the provider sees it.

    Raises:
        ConfigurationError: a setting's value is not of its type, naming the provider,
            the setting and the value.
    """
    parameters = inspect.signature(provider_class(name).__init__).parameters
    fixed = dict(settings)
    for key, value in settings.items():
        parameter = parameters.get(str(key))
        if parameter is None or not isinstance(parameter.annotation, str):
            continue
        words = [w.strip() for w in parameter.annotation.split("|")]
        if not words or any(w not in _SIMPLE_TYPES for w in words):
            continue  # Decimal, Path, a clock...: the provider reads those itself
        fixed[key] = _as_setting(name, str(key), value, words)
    return fixed


def _as_setting(name: str, key: str, value: Any, words: list[str]) -> Any:
    allowed = tuple(t for w in words for t in _SIMPLE_TYPES[w])
    is_bool = isinstance(value, bool)
    if isinstance(value, allowed) and (not is_bool or bool in allowed):
        return value
    if "str" in words and isinstance(value, int | float | date) and not is_bool:
        return value.isoformat() if isinstance(value, date) else str(value)
    if isinstance(value, str) and ("int" in words or "float" in words):
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is not None and "float" in words:
            return number
        if number is not None and number.is_integer():
            return int(number)
    wanted = " or ".join(_TYPE_WORDS[w] for w in words if w != "None")
    raise ConfigurationError(
        f"provider {name!r} setting {key!r} must be {wanted}, got {value!r}"
    )


__all__ = [
    "REGISTRY",
    "Availability",
    "Provider",
    "ProviderJob",
    "ProviderJobRef",
    "ProviderResult",
    "ProviderStatus",
    "accepted_settings",
    "check_provider_settings",
    "create_provider",
    "provider_settings",
    "provider_class",
]
