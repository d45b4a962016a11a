"""The fast paths of the quantizer math in :mod:`.quant`: same values, same gradients, less time and memory.

* :func:`fake_quant_learnable`: one autograd node for ``Q(x)`` with a learnable step, its
  positivity clamp and the LSQ gradient scale folded in; forward and backward each one pass.
  In training on CPU, large float tensors run kernels compiled with ``torch.compile`` once
  :func:`set_compile` turns them on (the trainer does; ``UNIQ_COMPILE`` overrides); a failed compile
  warns once, naming the error, and the process runs eager from then on. Inference always runs the
  eager math.
* :func:`recompute_fake_quant_saves`: saved-tensor hooks under which a conv / linear keeps a
  recipe for its fake-quantized input instead of the tensor (``UNIQ_RECOMPUTE=0`` turns it off).
* :class:`WeightCache`: the eval-mode quantized weight, kept until the weight or step changes.

The kernels call the math functions of :mod:`.quant` with ``[lo, hi, offset]`` as a tensor;
``tests/test_speed_paths.py`` checks them against the eager reference.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Callable

import torch
from torch import Tensor

from .quant import eq6, fake_quant_backward, inside, quantize_dequantize

__all__ = [
    "set_compile", "set_recompute", "fake_quant_learnable", "fake_quant_step_derivative",
    "recompute_fake_quant_saves", "WeightCache",
]

_FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# CPU only. On CUDA (H200, bf16, benchmarks/results/speed-cuda.json) per-quantizer compiled kernels
# were slower than the eager ones in training (ResNet-18 2.80x vs 2.62x FP, ResNet-20 4.6x vs 3.4x:
# per-call overhead, and Inductor's dynamic-shape full reductions ran on few thread blocks); there
# the fast path is compiling the whole model (1.41x), which traces these functions into its graph.
_FUSED_DEVICES = ("cpu",)
_MIN_FUSED_NUMEL = 4096  # below this, guard checks and launches cost more than the passes saved


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    return default if not value else value not in ("0", "false", "off", "no")


_state = {
    "compile": False,  # eager until asked: set_compile(True) (the trainer does, --compile-kernels)
    "recompute": _env_flag("UNIQ_RECOMPUTE", True),
}
_compiled: dict[str, Callable] = {}


def set_compile(enabled: bool) -> bool:
    """Run the training-time quantizer kernels compiled with ``torch.compile`` (CPU), or eager. The
    library default is eager; ``uniq-hub train`` turns it on (``--no-compile-kernels`` keeps it off).
    The environment variable ``UNIQ_COMPILE`` (0 / 1), when set, overrides ``enabled``. Returns the
    previous setting. Inference always runs eager (see :func:`fake_quant_learnable`)."""
    previous = _state["compile"]
    _state["compile"] = _env_flag("UNIQ_COMPILE", bool(enabled))
    return previous


def set_recompute(enabled: bool) -> bool:
    """Rebuild fake-quantized conv / linear inputs in backward instead of keeping them (default on;
    ``UNIQ_RECOMPUTE=0`` keeps them: one pass less per layer, about 1.5x the activation memory);
    returns the previous setting."""
    previous = _state["recompute"]
    _state["recompute"] = bool(enabled)
    return previous


# One function per kernel: torch.compile caches (and limits recompiles) per code object.
# ``bounds`` is ``[lo, hi, offset]``: x is ``(N,)`` with a ``()`` step (layer) or ``(C, K)`` with ``(C, 1)``.
def _k_forward_layer(x: Tensor, step: Tensor, bounds: Tensor) -> Tensor:
    return quantize_dequantize(x, step, bounds[0], bounds[1], bounds[2]).to(x.dtype)


def _k_forward_channel(x: Tensor, step: Tensor, bounds: Tensor) -> Tensor:
    return quantize_dequantize(x, step, bounds[0], bounds[1], bounds[2]).to(x.dtype)


def _k_grads(grad: Tensor, x: Tensor, step: Tensor, bounds: Tensor) -> tuple[Tensor, Tensor]:
    mask = inside(x, step, bounds[0], bounds[1], bounds[2])
    return grad * mask, eq6(x, step, bounds[0], bounds[1], bounds[2], mask).mul_(grad)


def _k_backward_layer(grad: Tensor, x: Tensor, step: Tensor, bounds: Tensor) -> tuple[Tensor, Tensor]:
    grad_x, g = _k_grads(grad, x, step, bounds)
    return grad_x.to(grad.dtype), (g.sum(dtype=torch.float32) / step.to(x.dtype)).to(step.dtype)


def _k_backward_channel(grad: Tensor, x: Tensor, step: Tensor, bounds: Tensor) -> tuple[Tensor, Tensor]:
    grad_x, g = _k_grads(grad, x, step, bounds)
    return grad_x.to(grad.dtype), (g.sum(dim=1, keepdim=True, dtype=torch.float32) / step.to(x.dtype)).to(step.dtype)


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
    if _state["compile"]:
        fn = _compiled.get(name)
        if fn is None:
            fn = _compiled[name] = torch.compile(_KERNELS[name], dynamic=True, fullgraph=True)
        try:
            return fn(*args)
        except Exception as err:  # noqa: BLE001 - any compile failure means: use the eager kernel
            out = _KERNELS[name](*args)  # re-raises if the inputs, not the compiler, are at fault
            _state["compile"] = False
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
        not _state["compile"]
        or x.dtype not in _FUSED_DTYPES
        or x.numel() < _MIN_FUSED_NUMEL
        or x.device.type not in _FUSED_DEVICES
        or step.device != x.device
    ):
        return None
    layout = _layout(x)
    if layout is None:
        return None
    if step.numel() == 1:
        return "layer", layout
    if step.dim() == x.dim() and step.numel() == step.shape[0] == x.shape[0]:
        return "channel", layout
    return None


def _quantize(x: Tensor, step: Tensor, spec: tuple) -> Tensor:
    """Forward values of :class:`_FusedFakeQuant` (no autograd); ``spec`` as stored on its ctx."""
    lo, hi, offset, mode = spec
    if mode is None:
        return quantize_dequantize(x, step, lo, hi, offset)
    kind, layout = mode
    rows = x.shape[0] if kind == "channel" else None
    q = _run_kernel("forward_" + kind, _flat(x, layout, rows), _kernel_step(step, rows),
                    _bounds(lo, hi, offset, x.device))
    return _unflat(q, x, layout)


def _clamped(step: Tensor, min_step: float | None) -> Tensor:
    return step if min_step is None else step.clamp_min(min_step)


class _FusedFakeQuant(torch.autograd.Function):
    """Fused fake quantization: one pass forward, one pass backward (input and step gradients).

    Saves only the input and the step (the input is usually kept alive by the ReLU / previous
    op anyway); backward recomputes ``Q(x)`` inside its single pass instead of keeping it.
    Folds in the step's positivity clamp (``clamp_min(step, min_step)``) and the LSQ gradient
    scale, with exactly the gradients of those two ops applied separately.
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
            grad_x, grad_step = fake_quant_backward(grad, x, step, lo, hi, offset, need_step)
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


def fake_quant_learnable(
    x: Tensor, step: Tensor, lo: int, hi: int, offset: float, grad_scale: float = 1.0, min_step: float | None = None
) -> Tensor:
    """``fake_quant(x, scale_grad(step.clamp_min(min_step), grad_scale), ...)`` as one autograd node:
    the same values and gradients as the three ops chained; what :class:`UniQQuantizer` calls.
    Inference (grad disabled) runs the eager math: the compiled kernels save training passes only, and
    evaluation then gives the same numbers wherever it runs (docs/portability.md)."""
    if not torch.is_grad_enabled():
        return quantize_dequantize(x, _clamped(step, min_step), lo, hi, offset)
    return _FusedFakeQuant.apply(x, step, lo, hi, offset, grad_scale, min_step)


def fake_quant_step_derivative(
    x: Tensor, step: Tensor, lo: int, hi: int, offset: float, grad_scale: float = 1.0, min_step: float | None = None
) -> Tensor:
    """Elementwise ``dQ/dD`` of :func:`fake_quant_learnable` (Eq. 6 with the clamp and grad scale):
    the step's gradient is ``sum(grad_Q * this)``, reduced to the step's shape."""
    step_c = _clamped(step, min_step).to(x.dtype)
    d = eq6(x, step_c, lo, hi, offset).div_(step_c)
    if grad_scale != 1.0:
        d.mul_(grad_scale)
    if min_step is not None:
        d.mul_((step > min_step).to(d.dtype))
    return d


# Recompute: a conv saves its fake-quantized input for the weight gradient; under these hooks it
# keeps the quantizer's autograd node instead, whose saved input and step rebuild the same tensor.


def _pack_saved(t: Tensor):
    fn = t.grad_fn
    if isinstance(fn, _FusedFakeQuant._backward_cls) and t._version == fn.out_version:
        return fn  # the node keeps x and step, enough to rebuild t bit for bit
    return t


def _saved_inputs(node) -> tuple[Tensor, Tensor]:
    """The node's saved ``(x, step)``, unpacked once per backward (activation checkpointing
    allows a single unpack), whether the recompute or the node's backward asks first."""
    unpacked = getattr(node, "unpacked", None)
    if unpacked is None:
        unpacked = node.unpacked = node.saved_tensors
    return unpacked


def _unpack_saved(saved):
    if isinstance(saved, _FusedFakeQuant._backward_cls):
        x, step = _saved_inputs(saved)
        with torch.no_grad():
            return _quantize(x, _clamped(step, saved.fold[1]), saved.spec)
    return saved


def recompute_fake_quant_saves() -> contextlib.AbstractContextManager:
    """Context in which ops save fake-quantized tensors as a recipe, rebuilt in backward: training
    memory stays near full precision. A no-op when :func:`set_recompute` turned it off."""
    if not _state["recompute"] or torch.compiler.is_compiling():
        return contextlib.nullcontext()
    return torch.autograd.graph.saved_tensors_hooks(_pack_saved, _unpack_saved)


class WeightCache:
    """An eval-mode quantized weight, reused until the weight or the step changes.

    The key is the tensors themselves (identity), their storage and version counters: any in-place
    update (optimizer, ``load_state_dict``, ``copy_``), a swapped Parameter or a moved / cast module
    changes it. Inference-mode results are kept apart from ordinary ones.
    """

    def __init__(self) -> None:
        self._entry: tuple[Tensor, Tensor, tuple, Tensor] | None = None

    def clear(self) -> None:
        self._entry = None

    def get(self, weight: Tensor, step: Tensor, compute: Callable[[], Tensor]) -> Tensor:
        key = (weight.data_ptr(), weight._version, step.data_ptr(), step._version, torch.is_inference_mode_enabled())
        entry = self._entry
        if entry is None or entry[0] is not weight or entry[1] is not step or entry[2] != key:
            entry = self._entry = (weight, step, key, compute().detach())
        return entry[3]
