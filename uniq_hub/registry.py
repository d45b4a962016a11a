"""Architecture registry: ``@register_model`` entrypoints, looked up by name."""

from __future__ import annotations

from typing import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register an architecture entrypoint under its function name."""
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a float architecture by name (``num_classes``, ``in_chans`` ...)."""
    if name not in _MODELS:
        raise ValueError(f"unknown architecture {name!r}; expected one of {list_models()}")
    return _MODELS[name](**kwargs)
