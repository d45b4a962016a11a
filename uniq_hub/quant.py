"""Quantizer math of UniQ (Pham et al.) and the LSQ baseline, as pure functions.

Every quantizer here is a uniform quantizer ``Q(x) = (clamp(round(x / D + o), lo, hi) - o) * D`` with
integer code range ``[lo, hi]`` and code offset ``o``:

* UniQ weights (Eq. 3): ``N = 2**bits`` levels, ``lo, hi = 0, N - 1``, ``o = (N - 1) / 2``.
  Levels are ``+-D/2, +-3D/2, ...``: symmetric, no zero.
* UniQ / LSQ activations (Eq. 5): ``lo, hi = 0, N - 1``, ``o = 0``: unsigned, zero included.
* LSQ weights: two's complement codes ``lo, hi = -2**(bits-1), 2**(bits-1) - 1``, ``o = 0``.

Gradients use the straight-through estimator: ``dQ/dx = 1`` inside the clip range, ``0`` outside;
for the step, ``dQ/dD = (Q - 1[inside] * x) / D``. Inside the range this equals
``round(x/D + o) - o - x/D`` (Eq. 6); outside it is the clipped code ``(hi - o)`` or ``(lo - o)``,
i.e. ``sign(x) * alpha / D`` for UniQ weights (the paper's ``sign(x) alpha`` omits ``/D``).
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from functools import lru_cache
from typing import Callable, Literal

import torch
from torch import Tensor

Kind = Literal["weight", "activation"]

__all__ = [
    "code_range",
    "fake_quant",
    "fake_quant_weight",
    "fake_quant_activation",
    "fake_quant_weight_lsq",
    "fake_quant_learnable",
    "fake_quant_step_derivative",
    "set_compile",
    "compile_enabled",
    "recompute_fake_quant_saves",
    "set_recompute",
    "quantize_codes",
    "optimal_step",
    "lsq_init_step",
    "grad_scale_factor",
    "scale_grad",
]


def code_range(bits: int, scheme: str) -> tuple[int, int, float]:
    """Integer code range ``(lo, hi)`` and offset ``o`` of a quantizer scheme.

    ``scheme``: "symmetric" (UniQ weights, signed inputs), "unsigned" (activations) or
    "twos_complement" (LSQ weights).
    """
    if not 1 <= int(bits) <= 16:
        raise ValueError(f"bits must be in 1..16, got {bits!r}")
    n = 2**bits
    ranges = {
        "symmetric": (0, n - 1, (n - 1) / 2),
        "unsigned": (0, n - 1, 0.0),
        "twos_complement": (-(n // 2), n // 2 - 1, 0.0),
    }
    if scheme not in ranges:
        raise ValueError(f"unknown quantizer scheme {scheme!r}; expected one of {sorted(ranges)}")
    if scheme == "twos_complement" and bits == 1:
        raise ValueError("LSQ's two's complement weight quantizer has no 1-bit form (codes {-1, 0})")
    return ranges[scheme]


def _as_step(step: Tensor | float, like: Tensor) -> Tensor:
    if isinstance(step, Tensor):
        return step
    return torch.tensor(float(step), dtype=like.dtype, device=like.device)


# ---------------------------------------------------------------------------------------------
# Fused forward / backward. Two interchangeable implementations of the same math: an eager one
# (the reference; float64, tiny tensors, odd layouts, double backward) and one compiled with
# torch.compile into a single pass per direction. ``UNIQ_COMPILE=0`` or ``set_compile(False)``
# turns compilation off; a failed compile (no C compiler, no Triton) warns once and falls back.
# ---------------------------------------------------------------------------------------------

_FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# CPU only. On CUDA (H200, bf16, benchmarks/results/speed-cuda.json) per-quantizer compiled kernels
# were slower than the eager ones in training (ResNet-18 2.80x vs 2.62x FP, ResNet-20 4.6x vs 3.4x:
# per-call overhead, and Inductor's dynamic-shape full reductions ran on few thread blocks); there
# the fast path is compiling the whole model (1.41x), which traces these functions into its graph.
_FUSED_DEVICES = ("cpu",)
_MIN_FUSED_NUMEL = 4096  # below this, guard checks and launches cost more than the passes saved


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit():
        raise ValueError(f"environment variable {name} must be a non-negative integer, got {value!r}")
    return int(value)


_compile_state = {
    "enabled": os.environ.get("UNIQ_COMPILE", "1").strip().lower() not in ("0", "false", "off", "no"),
    # Compiling costs seconds; a few calls (a test, classifying a handful of images) are cheaper
    # eager. The first ``after`` eligible calls of the process run eager, later ones compiled.
    "after": _env_int("UNIQ_COMPILE_AFTER", 256),
    "calls": 0,
}
_compiled: dict[str, Callable] = {}


def set_compile(enabled: bool, after: int | None = None) -> None:
    """Use the torch.compile'd quantizer kernels (default: on unless ``UNIQ_COMPILE=0``).

    ``after``: how many eligible calls run eager before compiling (default 256, or
    ``UNIQ_COMPILE_AFTER``); 0 compiles on the first call.
    """
    _compile_state["enabled"] = bool(enabled)
    if after is not None:
        _compile_state["after"] = int(after)


def compile_enabled() -> bool:
    return _compile_state["enabled"]


def _eager_forward(x: Tensor, step: Tensor, lo: float, hi: float, offset: float) -> Tensor:
    step_c = step.to(x.dtype)
    q = x / step_c
    if offset:
        q.add_(offset)
    q.clamp_(lo, hi).round_()
    if offset:
        q.sub_(offset)
    return q.mul_(step_c)


def _eager_backward(grad: Tensor, x: Tensor, step: Tensor, lo: float, hi: float, offset: float, need_step: bool):
    step_c = step.to(x.dtype)
    inside = (x >= (lo - offset) * step_c) & (x <= (hi - offset) * step_c)
    grad_x = grad * inside
    if not need_step:
        return grad_x, None
    # dQ/dD = (Q - 1[inside] x) / D, reduced to the step's shape.
    g = _eager_forward(x, step, lo, hi, offset).sub_(x * inside).mul_(grad)
    return grad_x, (g.sum_to_size(step.shape) / step_c).to(step.dtype)


def _q(x: Tensor, s: Tensor, bounds: Tensor) -> Tensor:
    lo, hi, offset = bounds[0], bounds[1], bounds[2]
    return (torch.clamp(x / s + offset, lo, hi).round() - offset) * s


def _grads(grad: Tensor, x: Tensor, s: Tensor, bounds: Tensor) -> tuple[Tensor, Tensor]:
    """Input gradient and elementwise ``D * dQ/dD`` (reduced by the callers)."""
    lo, hi, offset = bounds[0], bounds[1], bounds[2]
    inside = ((x >= (lo - offset) * s) & (x <= (hi - offset) * s)).to(x.dtype)
    return grad * inside, grad * (_q(x, s, bounds) - x * inside)


# One function per kernel: torch.compile caches (and limits recompiles) per code object.
def _k_forward_layer(x: Tensor, step: Tensor, bounds: Tensor) -> Tensor:
    """Kernel: ``Q(x)`` for ``x`` of shape ``(N,)`` and a ``()`` step."""
    return _q(x, step.to(x.dtype), bounds).to(x.dtype)


def _k_forward_channel(x: Tensor, step: Tensor, bounds: Tensor) -> Tensor:
    """Kernel: ``Q(x)`` for ``x`` of shape ``(C, K)`` and a ``(C, 1)`` step."""
    return _q(x, step.to(x.dtype), bounds).to(x.dtype)


def _k_backward_layer(grad: Tensor, x: Tensor, step: Tensor, bounds: Tensor) -> tuple[Tensor, Tensor]:
    """Kernel: input gradient and the summed step gradient for a ``()`` step, one pass."""
    s = step.to(x.dtype)
    grad_x, g = _grads(grad, x, s, bounds)
    return grad_x.to(grad.dtype), (g.sum(dtype=torch.float32) / s).to(step.dtype)


def _k_backward_channel(grad: Tensor, x: Tensor, step: Tensor, bounds: Tensor) -> tuple[Tensor, Tensor]:
    """Kernel: as :func:`_k_backward_layer` for ``(C, K)`` rows with a ``(C, 1)`` step."""
    s = step.to(x.dtype)
    grad_x, g = _grads(grad, x, s, bounds)
    return grad_x.to(grad.dtype), (g.sum(dim=1, keepdim=True, dtype=torch.float32) / s).to(step.dtype)


_KERNELS: dict[str, Callable] = {
    "forward_layer": _k_forward_layer,
    "forward_channel": _k_forward_channel,
    "backward_layer": _k_backward_layer,
    "backward_channel": _k_backward_channel,
}


def _run_kernel(name: str, *args: Tensor):
    """Run the compiled kernel ``name``; on a compile failure warn once and run it eagerly."""
    if torch.compiler.is_compiling():  # inside a user's torch.compile: let it trace the kernel
        return _KERNELS[name](*args)
    if _compile_state["enabled"]:
        fn = _compiled.get(name)
        if fn is None:
            fn = _compiled[name] = torch.compile(_KERNELS[name], dynamic=True, fullgraph=True)
        try:
            return fn(*args)
        except Exception as err:  # noqa: BLE001 - any compile failure means: use the eager kernel
            out = _KERNELS[name](*args)  # re-raises if the inputs, not the compiler, are at fault
            _compile_state["enabled"] = False
            warnings.warn(
                f"uniq_hub: torch.compile of the quantizer kernels failed ({type(err).__name__}: {err}); "
                "using the eager kernels from now on (set UNIQ_COMPILE=0 to skip the attempt)",
                RuntimeWarning,
                stacklevel=3,
            )
            return out
    return _KERNELS[name](*args)


_BOUNDS: dict[tuple, Tensor] = {}


def _bounds(lo: float, hi: float, offset: float, device: torch.device) -> Tensor:
    """``[lo, hi, offset]`` as a tensor, made once per device: a kernel input, not a constant,
    so one compiled kernel serves every bit-width and scheme."""
    key = (lo, hi, offset, device)
    if key not in _BOUNDS:
        _BOUNDS[key] = torch.tensor([lo, hi, offset], dtype=torch.float32, device=device)
    return _BOUNDS[key]


def _layout(x: Tensor) -> str | None:
    """"contiguous", "channels_last" (4-D) or None: how to view ``x`` flat in memory order."""
    if x.is_contiguous():
        return "contiguous"
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    return None


def _flat(t: Tensor, layout: str, rows: int | None) -> Tensor:
    """``t`` as ``(N,)`` or ``(rows, K)`` in ``layout``'s memory order, detached and not a view
    (the compiled kernels then see one stable signature; copies only a mismatched grad)."""
    if layout == "channels_last":
        t = t.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
    else:
        t = t.contiguous()
    return (t.reshape(-1) if rows is None else t.reshape(rows, -1)).detach()


def _unflat(t: Tensor, like: Tensor, layout: str) -> Tensor:
    if layout == "channels_last":
        n, c, h, w = like.shape
        return t.view(n, h, w, c).permute(0, 3, 1, 2).detach()
    return t.view(like.shape).detach()


def _kernel_step(step: Tensor, rows: int | None) -> Tensor:
    return (step.reshape(rows, 1) if rows else step.reshape(())).detach()


def _fused_mode(x: Tensor, step: Tensor) -> tuple[str, str] | None:
    """``(layer | channel, layout)`` when the compiled kernels apply to ``x`` and ``step``, else None."""
    if (
        not _compile_state["enabled"]
        or x.dtype not in _FUSED_DTYPES
        or x.numel() < _MIN_FUSED_NUMEL
        or x.device.type not in _FUSED_DEVICES
        or step.device != x.device
    ):
        return None
    layout = _layout(x)
    if layout is None:
        return None
    if _compile_state["calls"] < _compile_state["after"]:
        _compile_state["calls"] += 1
        return None
    if step.numel() == 1:
        return "layer", layout
    if step.dim() == x.dim() and step.numel() == step.shape[0] == x.shape[0]:
        return "channel", layout
    return None


def _quantize(x: Tensor, step: Tensor, spec: tuple) -> Tensor:
    """Forward values of :class:`_FakeQuant` (no autograd); ``spec`` as stored on its ctx."""
    lo, hi, offset, mode = spec
    if mode is None:
        return _eager_forward(x, step, lo, hi, offset)
    kind, layout = mode
    rows = x.shape[0] if kind == "channel" else None
    q = _run_kernel("forward_" + kind, _flat(x, layout, rows), _kernel_step(step, rows), _bounds(lo, hi, offset, x.device))
    return _unflat(q, x, layout)


class _FakeQuant(torch.autograd.Function):
    """Fused fake quantization: one pass forward, one pass backward (input and step gradients).

    Saves only the input and the step (the input is usually kept alive by the ReLU / previous
    op anyway); backward recomputes ``Q(x)`` inside its single pass instead of keeping it.
    Optionally folds in the step's positivity clamp (``clamp_min(step, min_step)``) and the LSQ
    gradient scale, with exactly the gradients of those two ops applied separately.
    """

    @staticmethod
    def forward(ctx, x: Tensor, step: Tensor, lo: int, hi: int, offset: float,
                grad_scale: float = 1.0, min_step: float | None = None) -> Tensor:
        ctx.spec = (lo, hi, offset, _fused_mode(x, step))
        ctx.fold = (grad_scale, min_step)
        q = _quantize(x, _clamped(step, min_step), ctx.spec)
        ctx.save_for_backward(x, step)
        # Under a user's torch.compile there is no recompute hook (its partitioner decides what to keep).
        ctx.out_version = None if torch.compiler.is_compiling() or q.is_inference() else q._version
        return q

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, raw_step = _saved_inputs(ctx)
        ctx.unpacked = None
        lo, hi, offset, mode = ctx.spec
        grad_scale, min_step = ctx.fold
        step = _clamped(raw_step, min_step)
        need_x, need_step = ctx.needs_input_grad[:2]
        if mode is None or torch.is_grad_enabled():  # eager: reference path and double backward
            grad_x, grad_step = _eager_backward(grad, x, step, lo, hi, offset, need_step)
        else:
            kind, layout = mode
            rows = x.shape[0] if kind == "channel" else None
            gx, gs = _run_kernel(
                "backward_" + kind, _flat(grad, layout, rows), _flat(x, layout, rows), _kernel_step(step, rows),
                _bounds(lo, hi, offset, x.device),
            )
            grad_x, grad_step = _unflat(gx, x, layout), gs.reshape(step.shape)
        if need_step and grad_scale != 1.0:
            grad_step = grad_step * grad_scale
        if need_step and min_step is not None:
            grad_step = grad_step * (raw_step > min_step)  # clamp_min passes gradient where step > min
        return (grad_x if need_x else None), (grad_step if need_step else None), None, None, None, None, None


def _clamped(step: Tensor, min_step: float | None) -> Tensor:
    return step if min_step is None else step.clamp_min(min_step)


def _pack_saved(t: Tensor):
    fn = t.grad_fn
    if isinstance(fn, _FakeQuant._backward_cls) and t._version == fn.out_version:
        return fn  # the node keeps x and step, enough to rebuild t bit for bit
    return t


def _saved_inputs(node) -> tuple[Tensor, Tensor]:
    """The node's saved ``(x, step)``, unpacked once per backward (activation checkpointing
    allows a single unpack), whether the recompute below or the node's backward asks first."""
    unpacked = getattr(node, "unpacked", None)
    if unpacked is None:
        unpacked = node.unpacked = node.saved_tensors
    return unpacked


def _unpack_saved(saved):
    if isinstance(saved, _FakeQuant._backward_cls):
        x, step = _saved_inputs(saved)
        with torch.no_grad():
            return _quantize(x, _clamped(step, saved.fold[1]), saved.spec)
    return saved


_recompute_state = {"enabled": os.environ.get("UNIQ_RECOMPUTE", "1").strip().lower() not in ("0", "false", "off", "no")}


def set_recompute(enabled: bool) -> None:
    """Rebuild fake-quantized conv / linear inputs in backward instead of keeping them (default on;
    ``UNIQ_RECOMPUTE=0`` keeps them: one pass less per layer, about 1.5x the activation memory)."""
    _recompute_state["enabled"] = bool(enabled)


def recompute_fake_quant_saves() -> contextlib.AbstractContextManager:
    """Context in which ops save fake-quantized tensors as a recipe, rebuilt in backward.

    A convolution saves its (fake-quantized) input for the weight gradient; inside this context
    it keeps a reference to the quantizer's autograd node instead, whose saved input and step
    rebuild the identical tensor in backward. Training memory then stays near full precision.
    A no-op context when :func:`set_recompute` turned it off.
    """
    if not _recompute_state["enabled"] or torch.compiler.is_compiling():
        return contextlib.nullcontext()
    return torch.autograd.graph.saved_tensors_hooks(_pack_saved, _unpack_saved)


def fake_quant(x: Tensor, step: Tensor | float, lo: int, hi: int, offset: float = 0.0) -> Tensor:
    """``(clamp(round(x / step + offset), lo, hi) - offset) * step`` with STE gradients.

    ``step`` is a scalar or a tensor broadcastable to ``x`` (e.g. ``(C_out, 1, 1, 1)``).
    """
    return _FakeQuant.apply(x, _as_step(step, x), lo, hi, offset)


def fake_quant_learnable(
    x: Tensor, step: Tensor, lo: int, hi: int, offset: float, grad_scale: float = 1.0, min_step: float | None = None
) -> Tensor:
    """``fake_quant(x, scale_grad(step.clamp_min(min_step), grad_scale), ...)`` as one autograd node.

    Same values and gradients as the three ops chained; what :class:`UniQQuantizer` calls.
    """
    return _FakeQuant.apply(x, step, lo, hi, offset, grad_scale, min_step)


def fake_quant_step_derivative(
    x: Tensor, step: Tensor, lo: int, hi: int, offset: float, grad_scale: float = 1.0, min_step: float | None = None
) -> Tensor:
    """Elementwise ``dQ/dD`` of :func:`fake_quant_learnable` (Eq. 6 with the clamp and grad scale).

    The step's gradient is ``sum(grad_Q * this)``, reduced to the step's shape.
    """
    step_c = _clamped(step, min_step).to(x.dtype)
    inside = (x >= (lo - offset) * step_c) & (x <= (hi - offset) * step_c)
    d = _eager_forward(x, step_c, lo, hi, offset).sub_(x * inside).div_(step_c)
    if grad_scale != 1.0:
        d.mul_(grad_scale)
    if min_step is not None:
        d.mul_((step > min_step).to(d.dtype))
    return d


def fake_quant_weight(x: Tensor, step: Tensor | float, bits: int) -> Tensor:
    """UniQ symmetric quantizer (Eq. 3): ``2**bits`` levels at odd multiples of ``step / 2``."""
    return fake_quant(x, step, *code_range(bits, "symmetric"))


def fake_quant_activation(x: Tensor, step: Tensor | float, bits: int) -> Tensor:
    """Unsigned activation quantizer (Eq. 5): levels ``0, step, ..., (2**bits - 1) * step``."""
    return fake_quant(x, step, *code_range(bits, "unsigned"))


def fake_quant_weight_lsq(x: Tensor, step: Tensor | float, bits: int) -> Tensor:
    """LSQ's semi-symmetric weight quantizer: codes ``-2**(b-1) .. 2**(b-1) - 1`` times ``step``."""
    return fake_quant(x, step, *code_range(bits, "twos_complement"))


def quantize_codes(x: Tensor, step: Tensor, bits: int, scheme: str) -> Tensor:
    """Integer codes ``0 .. 2**bits - 1`` (shifted by ``lo``) that ``fake_quant`` maps ``x`` to."""
    lo, hi, offset = code_range(bits, scheme)
    codes = torch.round(torch.clamp(x / step + offset, lo, hi)) - lo
    return codes.to(torch.uint8 if bits <= 8 else torch.int32)


def dequantize_codes(codes: Tensor, step: Tensor, bits: int, scheme: str) -> Tensor:
    """Inverse of :func:`quantize_codes`: exactly the values ``fake_quant`` produces."""
    lo, _, offset = code_range(bits, scheme)
    return (codes.to(step.dtype) + lo - offset) * step


# ---------------------------------------------------------------------------------------------
# Step-size gradient scaling (LSQ style; the reference UniQ code uses it too)
# ---------------------------------------------------------------------------------------------


def grad_scale_factor(numel: int, bits: int, kind: Kind) -> float:
    """``1 / sqrt(numel * Qp)``; ``Qp = max(2**(b-1) - 1, 1)`` for weights, ``2**b - 1`` otherwise."""
    qp = max(2 ** (bits - 1) - 1, 1) if kind == "weight" else 2**bits - 1
    return 1.0 / math.sqrt(max(int(numel), 1) * qp)


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.scale, None


def scale_grad(x: Tensor, scale: float) -> Tensor:
    """Identity in forward, multiplies the gradient by ``scale`` in backward."""
    return _ScaleGrad.apply(x, scale)


# ---------------------------------------------------------------------------------------------
# MSE-optimal unit step sizes (Section 4.2, Table 1), computed numerically
# ---------------------------------------------------------------------------------------------

_SQRT2 = math.sqrt(2.0)


def _pdf(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi) if math.isfinite(x) else 0.0


def _cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / _SQRT2)) if math.isfinite(x) else float(x > 0)


def _cell_mse(a: float, b: float, r: float) -> float:
    """``int_a^b (x - r)^2 phi(x) dx`` for the standard normal density ``phi``."""
    mass = _cdf(b) - _cdf(a)
    first = _pdf(a) - _pdf(b)  # int x phi
    xa = a * _pdf(a) if math.isfinite(a) else 0.0
    xb = b * _pdf(b) if math.isfinite(b) else 0.0
    second = mass + xa - xb  # int x^2 phi
    return second - 2.0 * r * first + r * r * mass


def _mse(step: float, bits: int, kind: Kind) -> float:
    """Quantization MSE of a unit Gaussian (weights) or of ReLU of one (activations)."""
    n = 2**bits
    if kind == "weight":
        # Cells of width step centred on (k - (n-1)/2) * step; the outer cells extend to +-inf.
        edges = [(k - n / 2) * step for k in range(1, n)]
        bounds = [-math.inf, *edges, math.inf]
        levels = [(k - (n - 1) / 2) * step for k in range(n)]
    else:
        # Only the positive half: x <= 0 maps to the level 0 without error.
        edges = [(k + 0.5) * step for k in range(n - 1)]
        bounds = [0.0, *edges, math.inf]
        levels = [k * step for k in range(n)]
    return sum(_cell_mse(lo, hi, r) for lo, hi, r in zip(bounds[:-1], bounds[1:], levels))


def _signal_power(kind: Kind) -> float:
    """Variance of the unit Gaussian, or of ReLU of it: ``1/2 - 1/(2 pi)``."""
    return 1.0 if kind == "weight" else 0.5 - 1.0 / (2.0 * math.pi)


def _golden_min(f, lo: float, hi: float, iters: int = 200) -> float:
    g = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return (a + b) / 2.0


@lru_cache(maxsize=None)
def optimal_step(bits: int, kind: Kind) -> tuple[float, float]:
    """MSE-optimal unit step ``D^u`` and its SQNR in dB (Table 1), solved numerically.

    Weights: unit Gaussian input, symmetric quantizer. Activations: ReLU of a unit Gaussian,
    unsigned quantizer (the zero mass is quantized exactly). The SQNR is the input variance
    over the MSE. A coarse grid brackets the minimum, golden-section search refines it.
    """
    if kind not in ("weight", "activation"):
        raise ValueError(f"kind must be 'weight' or 'activation', got {kind!r}")
    if not 1 <= int(bits) <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits!r}")
    span = 8.0 / (2**bits - 1) + 1.0  # beyond any useful step: clip range > 8 sigma
    grid = [span * (i + 1) / 400 for i in range(400)]
    best = min(range(len(grid)), key=lambda i: _mse(grid[i], bits, kind))
    lo, hi = grid[max(best - 1, 0)] * (0.5 if best == 0 else 1.0), grid[min(best + 1, len(grid) - 1)]
    step = _golden_min(lambda s: _mse(s, bits, kind), lo, hi)
    sqnr = 10.0 * math.log10(_signal_power(kind) / _mse(step, bits, kind))
    return step, sqnr


def lsq_init_step(mean_abs: Tensor | float, bits: int, kind: Kind) -> Tensor | float:
    """LSQ's heuristic initial step ``2 E|x| / sqrt(Qp)``."""
    qp = max(2 ** (bits - 1) - 1, 1) if kind == "weight" else 2**bits - 1
    return 2.0 * mean_abs / math.sqrt(qp)
