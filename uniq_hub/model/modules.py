"""Thin modules over the quantizer math: a learnable-step quantizer and quantized conv / linear."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .quant import code_range, grad_scale_factor, lsq_init_step, optimal_step
from .quant_kernels import WeightCache, fake_quant_learnable, fake_quant_step_derivative, recompute_fake_quant_saves

Role = Literal["weight", "activation", "signed"]
Method = Literal["uniq", "lsq"]

# (method, role) -> code scheme. "signed" is an activation quantizer for signed inputs
# (the normalised image, MobileNetV2's linear bottlenecks): symmetric like UniQ's weights.
_SCHEMES = {
    ("uniq", "weight"): "symmetric",
    ("uniq", "activation"): "unsigned",
    ("uniq", "signed"): "symmetric",
    ("lsq", "weight"): "twos_complement",
    ("lsq", "activation"): "unsigned",
    ("lsq", "signed"): "twos_complement",
}
MIN_STEP = 1e-8


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized.

    ``step_init``: "mse" (paper, Section 4.2), "lsq" (``2 E|x| / sqrt(Qp)``) or a positive float.
    ``per_channel``: one step per output channel (kernel-wise); weights only.
    """

    bits: int
    role: Role = "weight"
    method: Method = "uniq"
    per_channel: bool = False
    step_init: str | float = "mse"
    grad_scale: bool = True

    def __post_init__(self) -> None:
        if (self.method, self.role) not in _SCHEMES:
            raise ValueError(f"unknown quantizer method/role {self.method!r}/{self.role!r}")
        code_range(self.bits, _SCHEMES[self.method, self.role])  # validates bits
        object.__setattr__(self, "step_init", parse_step_init(self.step_init, "QuantSpec.step_init"))


def parse_step_init(value: Any, name: str = "step_init") -> str | float:
    """A step-size init rule: "mse", "lsq", or a positive number (also given as a string, "0.1")."""
    if value in ("mse", "lsq"):
        return value
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be 'mse', 'lsq' or a positive number, got {value!r}")
    return number


class UniQQuantizer(nn.Module):
    """Fake quantizer with a learnable step size.

    The step is a parameter of shape ``()`` (layer-wise) or ``(C, 1, ..., 1)`` (per output channel).
    Call :meth:`init_from` with the tensor to quantize (weights) or set ``calibrating = True`` and
    run batches (activations): the step becomes the maximum of the per-batch estimates.
    """

    def __init__(self, spec: QuantSpec, channels: int = 1, ndim: int = 4) -> None:
        super().__init__()
        self.spec = spec
        self.lo, self.hi, self.offset = code_range(spec.bits, _SCHEMES[spec.method, spec.role])
        shape = (channels,) + (1,) * (ndim - 1) if spec.per_channel else ()
        const = None if isinstance(spec.step_init, str) else spec.step_init
        self.step = nn.Parameter(torch.full(shape, const or 1.0))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.calibrating = False

    @property
    def bits(self) -> int:
        return self.spec.bits

    @property
    def scheme(self) -> str:
        return _SCHEMES[self.spec.method, self.spec.role]

    def extra_repr(self) -> str:
        s = self.spec
        return f"bits={s.bits}, role={s.role}, method={s.method}, per_channel={s.per_channel}"

    def _stat_kind(self) -> str:
        return "activation" if self.spec.role == "activation" else "weight"

    @torch.no_grad()
    def estimate_step(self, x: Tensor) -> Tensor:
        """The initial step the spec's init rule gives for ``x`` (shape of ``self.step``)."""
        spec, kind = self.spec, self._stat_kind()
        dims = tuple(range(1, x.dim())) if spec.per_channel else None
        x = x.detach().float()
        if not isinstance(spec.step_init, str):
            return torch.full_like(self.step, spec.step_init)
        if spec.step_init == "lsq":
            mean_abs = x.abs().mean(dim=dims, keepdim=True) if dims else x.abs().mean()
            est = lsq_init_step(mean_abs, spec.bits, kind)
        elif kind == "activation":
            # D_a = D_a^u * sqrt(2 E[x^2]): the pre-activation std under a symmetric assumption.
            est = optimal_step(spec.bits, "activation")[0] * torch.sqrt(2.0 * x.pow(2).mean())
        else:
            std = x.std(dim=dims, keepdim=True) if dims else x.std()
            est = optimal_step(spec.bits, "weight")[0] * std
        return est.reshape(self.step.shape).clamp_min(MIN_STEP)

    @torch.no_grad()
    def init_from(self, x: Tensor, running_max: bool = False) -> None:
        """Set the step from ``x``; with ``running_max`` keep the maximum over calls."""
        est = self.estimate_step(x).to(self.step)
        if running_max and bool(self.initialized):
            est = torch.maximum(est, self.step)
        self.step.copy_(est)
        self.initialized.fill_(True)

    def _grad_scale(self, numel: int) -> float:
        if not (self.spec.grad_scale and self.step.requires_grad):
            return 1.0
        per = numel // self.step.numel() if self.spec.per_channel else numel
        return grad_scale_factor(per, self.spec.bits, self._stat_kind())

    def forward(self, x: Tensor) -> Tensor:
        if self.calibrating:
            self.init_from(x, running_max=True)
        numel = x.numel() if self.spec.role == "weight" else math.prod(x.shape[1:])
        # One autograd node for fake_quant(x, scale_grad(step.clamp_min(MIN_STEP), scale)).
        return fake_quant_learnable(x, self.step, self.lo, self.hi, self.offset, self._grad_scale(numel), MIN_STEP)


class QuantizedMixin:
    """Shared by QConv2d / QLinear: optional weight and input quantizers and an eval-mode cache
    of the quantized weight (:class:`WeightCache`)."""

    weight_quantizer: UniQQuantizer | None
    input_quantizer: UniQQuantizer | None

    def _setup_quantizers(self, w_spec: QuantSpec | None, a_spec: QuantSpec | None) -> None:
        weight: Tensor = self.weight  # type: ignore[attr-defined]
        self.weight_quantizer = UniQQuantizer(w_spec, weight.shape[0], weight.dim()) if w_spec else None
        self.input_quantizer = UniQQuantizer(a_spec) if a_spec else None
        if self.weight_quantizer is not None and weight.device.type != "meta":
            self.weight_quantizer.to(weight.device).init_from(weight)
        self._wq_cache = WeightCache()

    def quantized_weight(self) -> Tensor:
        weight: Tensor = self.weight  # type: ignore[attr-defined]
        wq = self.weight_quantizer
        if wq is None:
            return weight
        if torch.compiler.is_compiling():  # a compiled graph has no Python-side cache
            return wq(weight)
        if self.training or torch.is_grad_enabled() and (weight.requires_grad or wq.step.requires_grad):
            self._wq_cache.clear()
            return wq(weight)
        return self._wq_cache.get(weight, wq.step, lambda: wq(weight))

    def quantize_input(self, x: Tensor) -> Tensor:
        return x if self.input_quantizer is None else self.input_quantizer(x)

    def _apply_quantized(self, op, x: Tensor, bias: Tensor | None) -> Tensor:
        """``op(Q(x), Q(w), bias)``; when training, ``op`` saves its quantized inputs as recipes.

        The convolution would otherwise keep ``Q(x)`` alive for its weight gradient next to ``x``
        (kept by the quantizer and the ReLU), half again the activation memory of the float model.
        """
        aq = self.input_quantizer
        if (
            aq is not None and aq.step.requires_grad and aq.step.numel() == 1 and not x.requires_grad
            and not aq.calibrating
            and torch.is_grad_enabled() and not torch.compiler.is_compiling()
        ):
            return self._apply_with_input_step_adjoint(op, x, bias)
        qx, qw = self.quantize_input(x), self.quantized_weight()
        if torch.is_grad_enabled() and not torch.compiler.is_compiling() and (
            qx.grad_fn is not None or qw.grad_fn is not None
        ):
            with recompute_fake_quant_saves():
                return op(qx, qw, bias)
        return op(qx, qw, bias)

    def _apply_with_input_step_adjoint(self, op, x: Tensor, bias: Tensor | None) -> Tensor:
        """The first layer: its input (the image) needs no gradient, only its quantizer's step does.

        ``op`` is linear in its input, so the step's gradient ``<op^T(g), dQ/dD>`` equals
        ``<g, op(dQ/dD)>``: one forward ``op`` in backward instead of ``op``'s input gradient
        (for a 7x7 / stride-2 stem on 3 channels the data gradient costs ~2.5x the forward).
        """
        aq = self.input_quantizer
        with torch.no_grad():
            qx = aq(x)  # module call: hooks run; a constant for autograd
        qw = self.quantized_weight()
        with recompute_fake_quant_saves():
            out = op(qx, qw, bias)
        probe = _InputStepAdjoint.apply(aq.step, x, qw, out.shape, op, aq)
        return out.add_(probe)


class _InputStepAdjoint(torch.autograd.Function):
    """Zeros of the op's output shape; backward gives the input quantizer's step gradient."""

    @staticmethod
    def forward(ctx, step: Tensor, x: Tensor, qw: Tensor, out_shape: torch.Size, op, quantizer: UniQQuantizer):
        ctx.save_for_backward(step, x, qw)
        ctx.op, ctx.quantizer = op, quantizer
        ctx.numel = math.prod(x.shape[1:])
        return step.new_zeros(()).expand(out_shape)

    @staticmethod
    def backward(ctx, grad: Tensor):
        step, x, qw = ctx.saved_tensors
        q = ctx.quantizer
        d = fake_quant_step_derivative(x, step, q.lo, q.hi, q.offset, q._grad_scale(ctx.numel), MIN_STEP)
        with torch.no_grad():
            response = ctx.op(d.to(qw.dtype), qw.detach(), None)
        grad_step = (grad.to(response.dtype) * response).sum().to(step.dtype).reshape(step.shape)
        return grad_step, None, None, None, None, None


class QConv2d(QuantizedMixin, nn.Conv2d):
    """``nn.Conv2d`` whose weight and input are fake-quantized."""

    def __init__(self, *args, w_spec: QuantSpec | None = None, a_spec: QuantSpec | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._setup_quantizers(w_spec, a_spec)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, w_spec: QuantSpec | None, a_spec: QuantSpec | None) -> "QConv2d":
        """Swap in a quantized conv that reuses ``conv``'s Parameters (no copy)."""
        q = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode, device="meta",
        )
        q.weight, q.bias = conv.weight, conv.bias
        q._setup_quantizers(w_spec, a_spec)
        return q

    def forward(self, x: Tensor) -> Tensor:
        return self._apply_quantized(self._conv_forward, x, self.bias)


class QLinear(QuantizedMixin, nn.Linear):
    """``nn.Linear`` whose weight and input are fake-quantized."""

    def __init__(self, *args, w_spec: QuantSpec | None = None, a_spec: QuantSpec | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._setup_quantizers(w_spec, a_spec)

    @classmethod
    def from_float(cls, linear: nn.Linear, w_spec: QuantSpec | None, a_spec: QuantSpec | None) -> "QLinear":
        """Swap in a quantized linear that reuses ``linear``'s Parameters (no copy)."""
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        q.weight, q.bias = linear.weight, linear.bias
        q._setup_quantizers(w_spec, a_spec)
        return q

    def forward(self, x: Tensor) -> Tensor:
        return self._apply_quantized(F.linear, x, self.bias)
