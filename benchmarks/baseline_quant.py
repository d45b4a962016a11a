"""The straightforward way to write UniQ / LSQ fake quantization, kept as the speed baseline.

This is how the paper's reference code and the common LSQ implementations write a learnable
quantizer: plain tensor ops, the straight-through estimator and the LSQ gradient scale both
expressed with the ``(y - y_grad).detach() + y_grad`` trick, autograd differentiating through
``x / s``, ``clamp`` and ``* s`` (which gives Eq. 6 for the step). Each op keeps its own
temporaries and autograd saves what each op needs. No eval-mode weight cache.

Same math as ``uniq_hub`` (same levels, same STE mask, same step gradient and LSQ scale), so
:func:`to_baseline` turns a model prepared with ``quantize_`` into an equivalent one whose
outputs match to float rounding; ``benchmarks/speed.py`` times the two side by side.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from uniq_hub.model.modules import QConv2d, QLinear, UniQQuantizer
from uniq_hub.model.quant import grad_scale_factor

_MIN_STEP = 1e-8


def grad_scale(x: Tensor, scale: float) -> Tensor:
    """Identity forward, gradient times ``scale`` (LSQ)."""
    y_grad = x * scale
    return (x - y_grad).detach() + y_grad


def round_pass(x: Tensor) -> Tensor:
    """``round`` forward, identity gradient (straight-through estimator)."""
    return (x.round() - x).detach() + x


class DetachTrickQuantizer(nn.Module):
    """Learnable-step fake quantizer written with detach tricks: ``(round(clamp(x/s + o)) - o) * s``."""

    def __init__(self, q: UniQQuantizer) -> None:
        super().__init__()
        self.bits, self.lo, self.hi, self.offset = q.bits, q.lo, q.hi, q.offset
        self.role, self.per_channel, self.use_grad_scale = q.spec.role, q.spec.per_channel, q.spec.grad_scale
        self.kind = "activation" if q.spec.role == "activation" else "weight"
        self.step = nn.Parameter(q.step.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        s = self.step.clamp_min(_MIN_STEP)
        if self.use_grad_scale:
            numel = x.numel() if self.role == "weight" else x[0].numel()
            if self.per_channel:
                numel //= self.step.numel()
            s = grad_scale(s, grad_scale_factor(numel, self.bits, self.kind))
        v = x / s + self.offset
        v = torch.clamp(v, self.lo, self.hi)
        v = round_pass(v)
        return (v - self.offset) * s


class _BaselineLayer:
    weight_quantizer: DetachTrickQuantizer | None
    input_quantizer: DetachTrickQuantizer | None

    def _quantized(self, x: Tensor) -> tuple[Tensor, Tensor]:
        w: Tensor = self.weight  # type: ignore[attr-defined]
        x = x if self.input_quantizer is None else self.input_quantizer(x)
        return x, (w if self.weight_quantizer is None else self.weight_quantizer(w))

    def _take(self, layer: nn.Module) -> None:
        self.weight, self.bias = layer.weight, layer.bias
        for side in ("weight_quantizer", "input_quantizer"):
            q = getattr(layer, side)
            setattr(self, side, None if q is None else DetachTrickQuantizer(q).to(layer.weight.device))


class BaselineQConv2d(_BaselineLayer, nn.Conv2d):
    """Conv2d with detach-trick quantizers on its weight and input, computed on every call."""

    @classmethod
    def from_uniq(cls, c: QConv2d) -> "BaselineQConv2d":
        new = cls(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation, c.groups,
                  c.bias is not None, c.padding_mode, device="meta")
        new._take(c)
        return new

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(*self._quantized(x), self.bias)


class BaselineQLinear(_BaselineLayer, nn.Linear):
    """Linear with detach-trick quantizers on its weight and input, computed on every call."""

    @classmethod
    def from_uniq(cls, lin: QLinear) -> "BaselineQLinear":
        new = cls(lin.in_features, lin.out_features, lin.bias is not None, device="meta")
        new._take(lin)
        return new

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(*self._quantized(x), self.bias)


_BASELINE = {QConv2d: BaselineQConv2d, QLinear: BaselineQLinear}


def to_baseline(model: nn.Module) -> nn.Module:
    """Swap every ``QConv2d`` / ``QLinear`` of a ``quantize_``-d model for its detach-trick twin, in place.

    Weights are shared with the original layers (deep-copy the model first to keep both);
    the step sizes are copied into the baseline quantizers.
    """
    for name, module in list(model.named_modules()):
        if type(module) in _BASELINE:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, _BASELINE[type(module)].from_uniq(module))
    return model


__all__ = ["DetachTrickQuantizer", "BaselineQConv2d", "BaselineQLinear", "grad_scale", "round_pass", "to_baseline"]
