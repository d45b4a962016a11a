"""Architecture registry: ``@register_model`` entrypoints and their facts, looked up by name.

As timm's ``_registry.py`` with its per-architecture pretrained cfg: each entrypoint carries an
:class:`ArchInfo` (display name, designed input size, ImageNet or small-image design, default
weight granularity), so callers ask the registry instead of checking architecture names.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Literal

from torch import nn

from .constants import SMALL_IMAGE

Entrypoint = Callable[..., nn.Module]


@dataclass(frozen=True)
class ArchInfo:
    """Facts about a registered architecture.

    ``input_size``: side of the square input it was designed for (224: ImageNet stem, 32: CIFAR
    stem). ``stride``: how much the features are downsampled (input side / feature map side).
    ``weight_granularity``: the step-size granularity of its weights the paper used, which the model
    also declares to ``quantize_`` (``weight_per_channel``).
    """

    name: str
    display_name: str
    input_size: int = 224
    stride: int = 32
    weight_granularity: Literal["channel", "layer"] = "channel"

    @property
    def imagenet(self) -> bool:
        """Designed for ImageNet-sized inputs (as opposed to a small-image stem)."""
        return self.input_size >= SMALL_IMAGE


_MODELS: dict[str, Entrypoint] = {}
_INFO: dict[str, ArchInfo] = {}
# The package's architecture files: their entrypoints register when imported. Imported on the first
# lookup (they import this module), by name so that the flat copy saved as remote code finds them too.
_BUILTIN_MODULES = ("preresnet", "mobilenetv2")


def register_model(fn: Entrypoint | None = None, **info):
    """Register an architecture entrypoint under its function name; ``info``: :class:`ArchInfo` fields
    (``@register_model`` alone, or ``@register_model(display_name=..., input_size=...)``)."""

    def register(entry: Entrypoint) -> Entrypoint:
        name = entry.__name__
        _INFO[name] = ArchInfo(name=name, **{"display_name": name, **info})
        _MODELS[name] = entry
        return entry

    return register(fn) if fn is not None else register


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(f".{module}", __package__)


def list_models() -> list[str]:
    _load_builtins()
    return sorted(_MODELS)


def _check(name: str) -> None:
    if name not in _MODELS and name not in list_models():
        raise ValueError(f"unknown architecture {name!r}; expected one of {list_models()}")


def model_info(name: str) -> ArchInfo:
    """The :class:`ArchInfo` of a registered architecture."""
    _check(name)
    return _INFO[name]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a float architecture by name (``num_classes``, ``num_channels`` ...)."""
    _check(name)
    return _MODELS[name](**kwargs)
