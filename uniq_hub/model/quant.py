"""Quantizer math of UniQ (Pham et al.) and the LSQ baseline, as pure functions.

Every quantizer is ``Q(x) = (clamp(round(x / D + o), lo, hi) - o) * D`` with step ``D``, integer
code range ``[lo, hi]`` and code offset ``o`` (:func:`code_range`):

* UniQ weights (Eq. 3): ``N = 2**bits`` levels, ``lo, hi = 0, N - 1``, ``o = (N - 1) / 2``:
  levels ``+-D/2, +-3D/2, ...``, symmetric, no zero.
* UniQ / LSQ activations (Eq. 5): ``lo, hi = 0, N - 1``, ``o = 0``: unsigned, zero included.
* LSQ weights: two's complement codes ``lo, hi = -2**(bits-1), 2**(bits-1) - 1``, ``o = 0``.

Gradients (straight-through estimator): ``dQ/dx = 1`` inside the clip range, ``0`` outside;
``dQ/dD = (Q(x) - 1[inside] x) / D`` (:func:`eq6`): inside the range ``round(x/D + o) - o - x/D``
(Eq. 6), outside the clipped code, i.e. ``sign(x) alpha / D`` for UniQ weights (the paper's
``sign(x) alpha`` omits ``/D``). The fused and compiled kernels are in :mod:`.quant_kernels`.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal

import torch
from torch import Tensor

Kind = Literal["weight", "activation"]
Bound = float | Tensor  # a tensor too, so one compiled kernel serves every bit-width

__all__ = [
    "code_range", "quantize_dequantize", "inside", "eq6", "fake_quant_backward", "fake_quant", "fake_quant_weight",
    "fake_quant_activation", "fake_quant_weight_lsq", "quantize_codes", "dequantize_codes",
    "grad_scale_factor", "scale_grad", "optimal_step", "lsq_init_step",
]


def code_range(bits: int, scheme: str) -> tuple[int, int, float]:
    """``(lo, hi, o)`` of a scheme: "symmetric" (UniQ weights, signed inputs), "unsigned"
    (activations) or "twos_complement" (LSQ weights)."""
    if not 1 <= int(bits) <= 16:
        raise ValueError(f"bits must be in 1..16, got {bits!r}")
    n = 2**bits
    ranges = {"symmetric": (0, n - 1, (n - 1) / 2), "unsigned": (0, n - 1, 0.0),
              "twos_complement": (-(n // 2), n // 2 - 1, 0.0)}
    if scheme not in ranges:
        raise ValueError(f"unknown quantizer scheme {scheme!r}; expected one of {sorted(ranges)}")
    if scheme == "twos_complement" and bits == 1:
        raise ValueError("LSQ's two's complement weight quantizer has no 1-bit form (codes {-1, 0})")
    return ranges[scheme]


def _nonzero(offset: Bound) -> bool:
    return isinstance(offset, Tensor) or offset != 0


def quantize_dequantize(x: Tensor, step: Tensor, lo: Bound, hi: Bound, offset: Bound = 0.0) -> Tensor:
    """``Q(x)`` (Eq. 3 / 5), in ``x``'s dtype; ``step`` broadcasts to ``x``."""
    step = step.to(x.dtype)
    q = x / step
    if _nonzero(offset):
        q.add_(offset)
    q.clamp_(lo, hi).round_()
    if _nonzero(offset):
        q.sub_(offset)
    return q.mul_(step)


def inside(x: Tensor, step: Tensor, lo: Bound, hi: Bound, offset: Bound = 0.0) -> Tensor:
    """``1[inside the clip range]`` (bool): where the straight-through estimator passes ``dQ/dx = 1``."""
    step = step.to(x.dtype)
    return (x >= (lo - offset) * step) & (x <= (hi - offset) * step)


def eq6(x: Tensor, step: Tensor, lo: Bound, hi: Bound, offset: Bound = 0.0, mask: Tensor | None = None) -> Tensor:
    """``D * dQ/dD = Q(x) - 1[inside] x`` elementwise (Eq. 6 times the step); ``mask``: :func:`inside`."""
    mask = inside(x, step, lo, hi, offset) if mask is None else mask
    return quantize_dequantize(x, step, lo, hi, offset).sub_(x * mask)


def fake_quant_backward(
    grad: Tensor, x: Tensor, step: Tensor, lo: Bound, hi: Bound, offset: Bound, need_step: bool = True
) -> tuple[Tensor, Tensor | None]:
    """Input gradient and step gradient (summed to the step's shape) of ``Q`` for ``grad``."""
    mask = inside(x, step, lo, hi, offset)
    grad_x = grad * mask
    if not need_step:
        return grad_x, None
    grad_step = eq6(x, step, lo, hi, offset, mask).mul_(grad).sum_to_size(step.shape) / step.to(x.dtype)
    return grad_x, grad_step.to(step.dtype)


class _FakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, step: Tensor, lo: int, hi: int, offset: float) -> Tensor:
        ctx.spec = (lo, hi, offset)
        ctx.save_for_backward(x, step)
        return quantize_dequantize(x, step, lo, hi, offset)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, step = ctx.saved_tensors
        grad_x, grad_step = fake_quant_backward(grad, x, step, *ctx.spec, ctx.needs_input_grad[1])
        return grad_x, grad_step, None, None, None


def fake_quant(x: Tensor, step: Tensor | float, lo: int, hi: int, offset: float = 0.0) -> Tensor:
    """``Q(x)`` with the straight-through gradients above; ``step`` a scalar or a tensor
    broadcastable to ``x`` (e.g. ``(C_out, 1, 1, 1)``)."""
    if not isinstance(step, Tensor):
        step = torch.tensor(float(step), dtype=x.dtype, device=x.device)
    return _FakeQuant.apply(x, step, lo, hi, offset)


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


# Step-size gradient scaling (LSQ; the reference UniQ code uses it too) and LSQ's initial step


def _qp(bits: int, kind: Kind) -> int:
    return max(2 ** (bits - 1) - 1, 1) if kind == "weight" else 2**bits - 1


def grad_scale_factor(numel: int, bits: int, kind: Kind) -> float:
    """``1 / sqrt(numel * Qp)``; ``Qp = max(2**(b-1) - 1, 1)`` for weights, ``2**b - 1`` otherwise."""
    return 1.0 / math.sqrt(max(int(numel), 1) * _qp(bits, kind))


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


def lsq_init_step(mean_abs: Tensor | float, bits: int, kind: Kind) -> Tensor | float:
    """LSQ's heuristic initial step ``2 E|x| / sqrt(Qp)``."""
    return 2.0 * mean_abs / math.sqrt(_qp(bits, kind))


# MSE-optimal unit step sizes (Section 4.2, Table 1), solved numerically


def _pdf(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi) if math.isfinite(x) else 0.0


def _cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0))) if math.isfinite(x) else float(x > 0)


def _cell_mse(a: float, b: float, r: float) -> float:
    """``int_a^b (x - r)^2 phi(x) dx`` for the standard normal density ``phi``."""
    mass = _cdf(b) - _cdf(a)
    first = _pdf(a) - _pdf(b)  # int x phi
    second = mass + (a * _pdf(a) if math.isfinite(a) else 0.0) - (b * _pdf(b) if math.isfinite(b) else 0.0)
    return second - 2.0 * r * first + r * r * mass


def _mse(step: float, bits: int, kind: Kind) -> float:
    """Quantization MSE of a unit Gaussian (weights) or of ReLU of one (activations)."""
    n = 2**bits
    if kind == "weight":  # cells of width step centred on the levels; the outer ones reach +-inf
        bounds = [-math.inf, *[(k - n / 2) * step for k in range(1, n)], math.inf]
        levels = [(k - (n - 1) / 2) * step for k in range(n)]
    else:  # only the positive half: x <= 0 maps to the level 0 without error
        bounds = [0.0, *[(k + 0.5) * step for k in range(n - 1)], math.inf]
        levels = [k * step for k in range(n)]
    return sum(_cell_mse(lo, hi, r) for lo, hi, r in zip(bounds[:-1], bounds[1:], levels))


def _golden_min(f, a: float, b: float, iters: int = 200) -> float:
    g = (math.sqrt(5.0) - 1.0) / 2.0
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
    """MSE-optimal unit step ``D^u`` and its SQNR in dB (Table 1).

    Weights: unit Gaussian input, symmetric quantizer. Activations: ReLU of a unit Gaussian,
    unsigned quantizer; the signal power is its variance ``1/2 - 1/(2 pi)``. A coarse grid
    brackets the minimum, golden-section search refines it.
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
    signal = 1.0 if kind == "weight" else 0.5 - 1.0 / (2.0 * math.pi)
    return step, 10.0 * math.log10(signal / _mse(step, bits, kind))
