"""The layer swap: ``quantize_(model, QuantConfig)`` applies the paper's precision policy, and
:class:`QuantConfig` is the one schema of the quantization options.

Policy (Section 5.1): every Conv2d / Linear at ``(w_bits, a_bits)``, 1x1 shortcut convs included;
the first conv and the last classifier at 8 bits, the first conv's input (the normalised image)
through the symmetric quantizer. At 1 bit the first conv, the last classifier and the
downsampling shortcut convs stay full precision. Weights per output channel and activations
per layer, unless the architecture says otherwise (MobileNetV2: per layer for both).
Per-layer ``overrides`` map fnmatch patterns on layer names to ``(w_bits, a_bits)``. The last
matching pattern wins.

Schema: the fields of :class:`QuantConfig`, their names, their meaning (``QUANT_FIELD_HELP``) and
their checks (:func:`check_quant_fields`) are shared by ``UniQConfig`` (config.json) and
``TrainConfig`` (``uniq-hub train`` flags and config files). Everywhere a bit width of
``FP_BITS`` (32) means full precision; ``None`` is read as 32. Names older releases wrote are read
through :func:`rename_legacy`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from torch import nn

from .constants import FP_BITS
from .modules import QConv2d, QLinear, QuantSpec, UniQQuantizer, parse_step_init

_SWAPS: dict[type, type] = {nn.Conv2d: QConv2d, nn.Linear: QLinear}
BIT_FIELDS = ("w_bits", "a_bits", "first_bits", "last_bits")
METHODS = ("uniq", "lsq")
GRANULARITIES = (None, "channel", "layer")
# Keys older releases wrote (config.json, run configs, recipes) -> the schema's names.
LEGACY_NAMES = {"init": "step_init", "in_chans": "num_channels", "calibration_batches": "calib_batches"}
QUANT_FIELD_HELP = {
    "w_bits": "weight bits, 1..8, or 32 for full precision",
    "a_bits": "activation bits, 1..8, or 32 for full precision",
    "first_bits": "bits of the first conv (weights and input; 32: full precision)",
    "last_bits": "bits of the last classifier (32: full precision)",
    "method": "quantizer: uniq (symmetric, the paper) or lsq (two's complement weights, baseline)",
    "weight_granularity": "channel or layer (default: the architecture's)",
    "step_init": "step-size init: mse (paper), lsq, or a constant like 0.1",
    "grad_scale": "LSQ-style gradient scale on the step sizes",
    "binary_fp_layers": "at 1 bit keep first / last / shortcut layers in full precision",
    "signed_inputs": "symmetric quantizer on signed inputs (MobileNetV2 bottlenecks)",
    "overrides": "per-layer bits, 'PATTERN=W,A;PATTERN=W,A' (fnmatch on layer names, 32: full precision, the "
                 "last match wins), or a mapping in a config file",
}


def rename_legacy(options: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``options`` with the keys of :data:`LEGACY_NAMES` under their current names; a key given
    under both names with different values is an error naming both."""
    out = dict(options)
    for old, new in LEGACY_NAMES.items():
        if old in out:
            value = out.pop(old)
            if new in out and out[new] != value:
                raise ValueError(f"{where}: {old!r} (an older name of {new!r}) is {value!r} but {new!r} is "
                                 f"{out[new]!r}; give one")
            out.setdefault(new, value)
    return out


def check_bits(value: Any, name: str) -> int:
    """An int in 1..8 -> itself; 32 or ``None`` -> 32 (full precision); anything else -> ValueError."""
    if value is None:
        return FP_BITS
    if isinstance(value, bool) or not isinstance(value, int) or not (1 <= value <= 8 or value == FP_BITS):
        raise ValueError(f"{name} must be an int in 1..8 or {FP_BITS} (full precision), got {value!r}")
    return value


def check_quant_fields(values: Mapping[str, Any], name_as: str = "{}") -> dict[str, Any]:
    """The schema's checks, in one place: ``values`` (any subset of the fields) normalised as
    config files store them (bits ``None`` -> 32, overrides ``{pattern: [w, a]}``, a numeric
    ``step_init`` string -> float). ``name_as`` formats a field's name in errors
    (``"UniQConfig.{}"``, ``"option '{}'"``)."""
    out = dict(values)
    for field_name in BIT_FIELDS:
        if field_name in out:
            out[field_name] = check_bits(out[field_name], name_as.format(field_name))
    for field_name, allowed in (("method", METHODS), ("weight_granularity", GRANULARITIES)):
        if field_name in out and out[field_name] not in allowed:
            raise ValueError(f"{name_as.format(field_name)} must be one of {allowed}, got {out[field_name]!r}")
    if "step_init" in out:
        out["step_init"] = parse_step_init(out["step_init"], name_as.format("step_init"))
    for field_name in ("grad_scale", "binary_fp_layers", "signed_inputs"):
        if field_name in out and not isinstance(out[field_name], bool):
            raise ValueError(f"{name_as.format(field_name)} must be a bool, got {out[field_name]!r}")
    if "overrides" in out:
        out["overrides"] = _valid_overrides(out["overrides"] or {}, name_as)
    if out.get("method") == "lsq" and 1 in (out.get("w_bits"), *(w for w, _ in out.get("overrides", {}).values())):
        raise ValueError(f"{name_as.format('method')} 'lsq' has no 1-bit weight quantizer (two's complement codes "
                         "{-1, 0})")
    return out


def _valid_overrides(overrides: Any, name_as: str) -> dict[str, list[int]]:
    if not isinstance(overrides, Mapping):
        raise ValueError(f"{name_as.format('overrides')} must map layer patterns to [w_bits, a_bits], got "
                         f"{overrides!r}")
    out = {}
    for pattern, pair in overrides.items():
        where = name_as.format(f"overrides[{pattern!r}]")
        if not isinstance(pattern, str) or not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"{where} must be [w_bits, a_bits] (32 = full precision), got {pair!r}")
        out[pattern] = [check_bits(b, where) for b in pair]
    return out


@dataclass
class QuantConfig:
    """What ``quantize_`` does; see the module docstring for the policy and ``QUANT_FIELD_HELP``
    for each field. Bit widths: 1..8, or 32 (``FP_BITS``; ``None`` is read as 32) for full precision."""

    w_bits: int = 2
    a_bits: int = 2
    first_bits: int = 8
    last_bits: int = 8
    method: Literal["uniq", "lsq"] = "uniq"
    weight_granularity: Literal["channel", "layer"] | None = None  # None: the architecture's default
    step_init: str | float = "mse"
    grad_scale: bool = True
    binary_fp_layers: bool = True  # at 1 bit keep first / last / shortcut layers in full precision
    signed_inputs: bool = False  # symmetric quantizer on inputs the architecture marks as signed
    overrides: dict[str, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checked = check_quant_fields({f.name: getattr(self, f.name) for f in fields(self)}, "QuantConfig.{}")
        checked["overrides"] = {pattern: tuple(pair) for pattern, pair in checked["overrides"].items()}
        for name, value in checked.items():
            setattr(self, name, value)

    @property
    def binary(self) -> bool:
        return self.binary_fp_layers and 1 in (self.w_bits, self.a_bits)


QUANT_FIELDS = tuple(f.name for f in fields(QuantConfig))


def _policy_layers(model: nn.Module) -> tuple[list[str], str, str, set[str], set[str]]:
    names = [n for n, m in model.named_modules() if type(m) in _SWAPS]
    if not names:
        raise ValueError(f"{type(model).__name__} has no Conv2d / Linear layer to quantize")
    first = getattr(model, "first_layer", names[0])
    last = getattr(model, "last_layer", names[-1])
    shortcuts = set(getattr(model, "shortcut_layers", ()))
    signed = set(getattr(model, "signed_input_layers", (first,)))
    return names, first, last, shortcuts, signed


def layer_bits(model: nn.Module, config: QuantConfig) -> dict[str, tuple[int, int]]:
    """``{layer name: (w_bits, a_bits)}`` the policy assigns; 32 (``FP_BITS``) means full precision."""
    names, first, last, shortcuts, _ = _policy_layers(model)
    plan: dict[str, tuple[int, int]] = {}
    for name in names:
        bits = (config.w_bits, config.a_bits)
        if config.binary and (name in (first, last) or name in shortcuts):
            bits = (FP_BITS, FP_BITS)
        elif name == first:
            bits = (config.first_bits, config.first_bits)
        elif name == last:
            bits = (config.last_bits, config.last_bits)
        for pattern, override in config.overrides.items():
            if fnmatch.fnmatchcase(name, pattern):
                bits = override
        plan[name] = bits
    unmatched = [p for p in config.overrides if not any(fnmatch.fnmatchcase(name, p) for name in names)]
    if unmatched:  # an override that changes nothing is a mistake, never a silent no-op
        hint = " (layer names have no 'model.' prefix)" if any(p.startswith("model.") for p in unmatched) else ""
        raise ValueError(f"overrides {unmatched} match no layer of {type(model).__name__}{hint}; its quantizable "
                         f"layers are: {', '.join(names)}")
    return plan


def quantize_(model: nn.Module, config: QuantConfig) -> nn.Module:
    """Swap Conv2d / Linear for QConv2d / QLinear in place, reusing their Parameters."""
    names, first, _, _, signed = _policy_layers(model)
    per_channel = (
        config.weight_granularity == "channel"
        if config.weight_granularity
        else getattr(model, "weight_per_channel", True)
    )
    spec = dict(method=config.method, step_init=config.step_init, grad_scale=config.grad_scale)
    modules = dict(model.named_modules())
    for name, (w_bits, a_bits) in layer_bits(model, config).items():
        if w_bits == a_bits == FP_BITS:
            continue
        is_signed = name == first or (config.signed_inputs and name in signed)
        w_spec = QuantSpec(w_bits, "weight", per_channel=per_channel, **spec) if w_bits != FP_BITS else None
        role = "signed" if is_signed else "activation"
        a_spec = QuantSpec(a_bits, role, **spec) if a_bits != FP_BITS else None
        float_module = modules[name]
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        setattr(parent, child, _SWAPS[type(float_module)].from_float(float_module, w_spec, a_spec))
    model.quant_config = config
    return model


def quantizers(model: nn.Module) -> dict[str, UniQQuantizer]:
    """All quantizers of a model by qualified name (``layer.weight_quantizer`` ...)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, UniQQuantizer)}
