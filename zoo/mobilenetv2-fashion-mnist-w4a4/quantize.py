"""The layer swap: ``quantize_(model, QuantConfig)`` applies the paper's precision policy.

Policy (Section 5.1): every Conv2d / Linear at ``(w_bits, a_bits)``, 1x1 shortcut convs included;
the first conv and the last classifier at 8 bits, the first conv's input (the normalised image)
through the symmetric quantizer. At 1 bit the first conv, the last classifier and the
downsampling shortcut convs stay full precision. Weights per output channel and activations
per layer, unless the architecture says otherwise (MobileNetV2: per layer for both).
Per-layer ``overrides`` map fnmatch patterns on layer names to ``(w_bits, a_bits)``;
``None`` keeps that side in full precision. The last matching pattern wins.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

from .modules import QConv2d, QLinear, QuantSpec, UniQQuantizer

Bits = int | None
_SWAPS: dict[type, type] = {nn.Conv2d: QConv2d, nn.Linear: QLinear}


@dataclass
class QuantConfig:
    """What ``quantize_`` does; see the module docstring for the policy."""

    w_bits: int = 2
    a_bits: int = 2
    first_bits: Bits = 8
    last_bits: Bits = 8
    method: Literal["uniq", "lsq"] = "uniq"
    weight_granularity: Literal["channel", "layer"] | None = None  # None: the architecture's default
    init: str | float = "mse"
    grad_scale: bool = True
    binary_fp_layers: bool = True  # at 1 bit keep first / last / shortcut layers in full precision
    signed_inputs: bool = False  # symmetric quantizer on inputs the architecture marks as signed
    overrides: dict[str, tuple[Bits, Bits]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("w_bits", "a_bits", "first_bits", "last_bits"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and 1 <= value <= 8):
                raise ValueError(f"QuantConfig.{name} must be an int in 1..8 (or None for FP), got {value!r}")
        if self.weight_granularity not in (None, "channel", "layer"):
            raise ValueError(f"weight_granularity must be 'channel', 'layer' or None, got {self.weight_granularity!r}")
        self.overrides = {k: tuple(v) for k, v in self.overrides.items()}  # type: ignore[misc]

    @property
    def binary(self) -> bool:
        return self.binary_fp_layers and 1 in (self.w_bits, self.a_bits)


def _policy_layers(model: nn.Module) -> tuple[list[str], str, str, set[str], set[str]]:
    names = [n for n, m in model.named_modules() if type(m) in _SWAPS]
    if not names:
        raise ValueError(f"{type(model).__name__} has no Conv2d / Linear layer to quantize")
    first = getattr(model, "first_layer", names[0])
    last = getattr(model, "last_layer", names[-1])
    shortcuts = set(getattr(model, "shortcut_layers", ()))
    signed = set(getattr(model, "signed_input_layers", (first,)))
    return names, first, last, shortcuts, signed


def layer_bits(model: nn.Module, config: QuantConfig) -> dict[str, tuple[Bits, Bits]]:
    """``{layer name: (w_bits, a_bits)}`` the policy assigns; ``None`` means full precision."""
    names, first, last, shortcuts, _ = _policy_layers(model)
    plan: dict[str, tuple[Bits, Bits]] = {}
    for name in names:
        bits: tuple[Bits, Bits] = (config.w_bits, config.a_bits)
        if config.binary and (name in (first, last) or name in shortcuts):
            bits = (None, None)
        elif name == first:
            bits = (config.first_bits, config.first_bits)
        elif name == last:
            bits = (config.last_bits, config.last_bits)
        for pattern, override in config.overrides.items():
            if fnmatch.fnmatchcase(name, pattern):
                bits = override
        plan[name] = bits
    return plan


def quantize_(model: nn.Module, config: QuantConfig) -> nn.Module:
    """Swap Conv2d / Linear for QConv2d / QLinear in place, reusing their Parameters."""
    names, first, _, _, signed = _policy_layers(model)
    per_channel = (
        config.weight_granularity == "channel"
        if config.weight_granularity
        else getattr(model, "weight_per_channel", True)
    )
    spec = dict(method=config.method, init=config.init, grad_scale=config.grad_scale)
    modules = dict(model.named_modules())
    for name, (w_bits, a_bits) in layer_bits(model, config).items():
        if w_bits is None and a_bits is None:
            continue
        is_signed = name == first or (config.signed_inputs and name in signed)
        w_spec = QuantSpec(w_bits, "weight", per_channel=per_channel, **spec) if w_bits else None
        a_spec = QuantSpec(a_bits, "signed" if is_signed else "activation", **spec) if a_bits else None
        float_module = modules[name]
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        setattr(parent, child, _SWAPS[type(float_module)].from_float(float_module, w_spec, a_spec))
    model.quant_config = config
    return model


def quantizers(model: nn.Module) -> dict[str, UniQQuantizer]:
    """All quantizers of a model by qualified name (``layer.weight_quantizer`` ...)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, UniQQuantizer)}
