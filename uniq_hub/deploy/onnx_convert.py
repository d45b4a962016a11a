"""The exact integer ONNX graph of a UniQ model: one converter per layer type and function.

``build_graph`` turns a model into the graph :func:`uniq_hub.deploy.onnx_export.export_onnx` writes
(``onnx/model.onnx``). UniQ's levels are exact in int8 (docs/deploy.md, the table at its top), so the
graph needs no calibration and computes what the PyTorch model computes:

* a weight with codes ``c`` (the packed release codes, ``packing.pack_state_dict``) becomes an
  int8 initializer of the integer levels ``(c + lo - o) * m`` (``m = 2`` when the offset ``o`` is
  a half integer: UniQ's odd levels ``2c - (N-1)``) and ``DequantizeLinear`` with scale ``D / m``
  (per output channel when kernel-wise) and zero point 0;
* an unsigned input quantizer becomes ``Clip(max=(2^b-1) D)`` (``QuantizeLinear`` only saturates
  at 255), ``QuantizeLinear`` to uint8 with scale ``D`` and ``DequantizeLinear``; a symmetric one
  (the first conv's signed image) computes its codes in float, exactly as ``quant.quantize_dequantize``
  (Div, Add, Clip, Round, Sub, Mul), followed by an int8 Q/DQ with scale ``D / 2`` when its
  levels fit int8 (they are then reproduced exactly);
* levels that do not fit 8 bits (UniQ's 8-bit symmetric first conv and classifier: the odd
  integers -255..255) stay exact in float;
* BatchNorm is ``x * alpha + beta`` with alpha / beta computed as PyTorch's CPU kernel does, and
  every bias is an ``Add`` after its conv / matmul (never inside a quantized Conv).

The graph is built with ``onnx.helper`` from a ``torch.fx`` trace of the architecture; each layer
type and function has one converter in a registry, and anything else is refused by name.

A UniQ classifier is recognised by its config (model_type "uniq", ``config.arch`` a registered
architecture: :func:`uniq_hub.model.registry.model_info`), not by its class, so that a model loaded
as remote code (its classes from the ``transformers_modules`` copy of the shipped code) exports too:
its architecture is rebuilt from the registry with uniq_hub's layer classes, which the converters
know, and given the model's state dict (:func:`exportable_architecture`).
"""

from __future__ import annotations

import operator
from typing import Any, Callable

import numpy as np
import onnx
import torch
import torch.fx
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor, nn

from ..model.configuration_uniq import UniQConfig
from ..model.modeling_uniq import build_architecture
from ..model.modules import MIN_STEP, QConv2d, QLinear, UniQQuantizer
from ..model.packing import PACKED_SUFFIX, pack_state_dict, quantized_layers, unpack_bits
from ..model.registry import model_info
from .onnx_graph import INPUT_NAME, OUTPUT_NAME

__all__ = [
    "OPSET",
    "OnnxExportError",
    "bare_architecture",
    "build_graph",
    "exportable_architecture",
    "quantizer_levels",
    "quantizer_step",
]

OPSET = 21
_INT_TYPES = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127)}
_PACKAGE = __name__.split(".")[0]  # uniq_hub


class OnnxExportError(ValueError):
    """The model (or an ONNX file) cannot be exported / used; the message names the layer or file."""


# ---------------------------------------------------------------------------------------------
# Graph building
# ---------------------------------------------------------------------------------------------


class _Graph:
    """Nodes and initializers with unique names derived from the layer names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._used: set[str] = set()

    def name(self, hint: str) -> str:
        name, i = hint, 1
        while name in self._used:
            name, i = f"{hint}_{i}", i + 1
        self._used.add(name)
        return name

    def const(self, hint: str, array: np.ndarray) -> str:
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, **attrs: Any) -> str:
        out = self.name(hint)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def _f32(value: Any) -> np.ndarray:
    return np.asarray(value, dtype=np.float32)


def quantizer_step(q: UniQQuantizer) -> np.ndarray:
    """The step the quantizer's forward uses (kept positive), float32."""
    return q.step.detach().float().clamp_min(MIN_STEP).cpu().numpy()


def quantizer_levels(q: UniQQuantizer) -> tuple[int, int, int]:
    """``(multiplier, lowest, highest)`` integer level: value = level * step / multiplier."""
    m = 2 if q.offset % 1 else 1
    return m, int(round((q.lo - q.offset) * m)), int(round((q.hi - q.offset) * m))


def _int_type(lo: int, hi: int, unsigned_first: bool) -> np.dtype | None:
    order = (np.uint8, np.int8) if unsigned_first else (np.int8, np.uint8)
    for dtype in map(np.dtype, order):
        tmin, tmax = _INT_TYPES[dtype]
        if tmin <= lo and hi <= tmax:
            return dtype
    return None


def _input_quant(g: _Graph, q: UniQQuantizer, x: str, where: str) -> str:
    """The input quantizer of layer ``where`` applied to tensor ``x``; returns the quantized tensor."""
    if not bool(q.initialized):
        raise OnnxExportError(
            f"{where}.input_quantizer: step size not calibrated (initialized=False); run uniq_hub.calibrate(model, "
            "batches) or load a trained checkpoint before exporting"
        )
    if q.step.numel() != 1:
        raise OnnxExportError(
            f"{where}.input_quantizer: per-channel input steps are not supported (shape {tuple(q.step.shape)})"
        )
    step = quantizer_step(q).reshape(())
    m, lo, hi = quantizer_levels(q)
    dtype = _int_type(lo, hi, unsigned_first=True)
    if m == 1 and dtype is not None:
        tmin, tmax = _INT_TYPES[dtype]
        bounds = [
            g.const(f"{where}.in_min", _f32(lo) * step) if lo > tmin else "",
            g.const(f"{where}.in_max", _f32(hi) * step) if hi < tmax else "",
        ]
        if any(bounds):
            x = g.op("Clip", [x, *bounds], f"{where}.in_clip")
        scale = g.const(f"{where}.in_scale", step)
    else:  # half-integer offset: the codes in float, as quant.quantize_dequantize computes them
        s = g.const(f"{where}.in_step", step)
        y = g.op("Div", [x, s], f"{where}.in_div")
        y = g.op("Add", [y, g.const(f"{where}.in_offset", _f32(q.offset))], f"{where}.in_add")
        y = g.op(
            "Clip",
            [y, g.const(f"{where}.in_lo", _f32(q.lo)), g.const(f"{where}.in_hi", _f32(q.hi))],
            f"{where}.in_clip",
        )
        y = g.op("Round", [y], f"{where}.in_round")
        y = g.op("Sub", [y, g.const(f"{where}.in_offset", _f32(q.offset))], f"{where}.in_sub")
        x = g.op("Mul", [y, s], f"{where}.in_fq")
        dtype = _int_type(lo, hi, unsigned_first=False)
        if dtype is None:
            return x  # 8-bit symmetric: exact in float
        scale = g.const(f"{where}.in_scale", step / _f32(m))  # exact: a power-of-two division
    zero = g.const(f"{where}.in_zero", np.zeros((), dtype))
    qx = g.op("QuantizeLinear", [x, scale, zero], f"{where}.in_q")
    return g.op("DequantizeLinear", [qx, scale, zero], f"{where}.in_dq")


def _weight(g: _Graph, layer: nn.Module, codes: dict[str, Tensor], where: str, transpose: bool = False) -> str:
    """The layer's weight: int8 levels + DequantizeLinear when they fit, exact float otherwise."""
    q = getattr(layer, "weight_quantizer", None)
    weight = layer.weight.detach().float()
    if q is None:
        w = weight.cpu().numpy()
        return g.const(f"{where}.weight", w.T if transpose else w)
    m, lo, hi = quantizer_levels(q)
    c = codes[where].to(torch.int64).cpu().numpy()
    ints = (c + q.lo) * m - int(round(q.offset * m))  # integer levels, exactly
    step = quantizer_step(q)
    dtype = _int_type(lo, hi, unsigned_first=False)
    if dtype is None:  # e.g. 8-bit symmetric: the exact levels in float (same as dequantize_codes)
        w = (ints.astype(np.float32) * (step / _f32(m))).astype(np.float32)
        return g.const(f"{where}.weight", w.T if transpose else w)
    axis = 1 if transpose else 0
    per_channel = step.size > 1
    w_int = ints.astype(dtype)
    scale = (step / _f32(m)).reshape(-1 if per_channel else ()).astype(np.float32)
    w_int = w_int.T if transpose else w_int
    zero = np.zeros(scale.shape, dtype)
    attrs = {"axis": axis} if per_channel else {}
    return g.op(
        "DequantizeLinear",
        [
            g.const(f"{where}.weight_int8", w_int),
            g.const(f"{where}.weight_scale", scale),
            g.const(f"{where}.weight_zero", zero),
        ],
        f"{where}.weight_dq",
        **attrs,
    )


def _layer_input(g: _Graph, layer: nn.Module, x: str, where: str) -> str:
    q = getattr(layer, "input_quantizer", None)
    return x if q is None else _input_quant(g, q, x, where)


def _conv(g: _Graph, m: nn.Conv2d, x: str, where: str, codes: dict[str, Tensor]) -> str:
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise OnnxExportError(
            f"{where}: Conv2d padding {m.padding!r} / padding_mode {m.padding_mode!r} is not supported"
        )
    ph, pw = m.padding
    x = _layer_input(g, m, x, where)
    w = _weight(g, m, codes, where)
    y = g.op(
        "Conv",
        [x, w],
        f"{where}.conv",
        kernel_shape=list(m.kernel_size),
        strides=list(m.stride),
        pads=[ph, pw, ph, pw],
        dilations=list(m.dilation),
        group=m.groups,
    )
    if m.bias is not None:
        y = g.op(
            "Add", [y, g.const(f"{where}.bias", _f32(m.bias.detach().cpu()).reshape(1, -1, 1, 1))], f"{where}.add_bias"
        )
    return y


def _linear(g: _Graph, m: nn.Linear, x: str, where: str, codes: dict[str, Tensor]) -> str:
    x = _layer_input(g, m, x, where)
    y = g.op("MatMul", [x, _weight(g, m, codes, where, transpose=True)], f"{where}.matmul")
    if m.bias is not None:
        y = g.op("Add", [y, g.const(f"{where}.bias", _f32(m.bias.detach().cpu()))], f"{where}.add_bias")
    return y


def _batchnorm(g: _Graph, m: nn.BatchNorm2d, x: str, where: str, codes: dict[str, Tensor]) -> str:
    """Eval-mode BatchNorm as PyTorch's CPU kernel computes it: ``x * alpha + beta`` with
    ``alpha = weight / sqrt(var + eps)``, ``beta = bias - mean * alpha`` in float32. PyTorch
    evaluates ``x * alpha + beta`` as one fused multiply-add, which ONNX cannot express: the
    outputs may differ by one rounding (the one-ulp differences the exactness bounds allow)."""
    if m.running_mean is None or m.running_var is None:
        raise OnnxExportError(f"{where}: BatchNorm2d without running statistics cannot be exported")
    c = m.num_features
    mean, var = _f32(m.running_mean.detach().cpu()), _f32(m.running_var.detach().cpu())
    weight = _f32(m.weight.detach().cpu()) if m.weight is not None else np.ones(c, np.float32)
    bias = _f32(m.bias.detach().cpu()) if m.bias is not None else np.zeros(c, np.float32)
    invstd = np.float32(1.0) / np.sqrt(var + np.float32(m.eps))
    alpha = (invstd * weight).astype(np.float32)
    # PyTorch computes beta with one rounding (fma); float64 holds mean * alpha exactly.
    beta = (bias.astype(np.float64) - mean.astype(np.float64) * alpha).astype(np.float32)
    y = g.op("Mul", [x, g.const(f"{where}.bn_alpha", alpha.reshape(1, c, 1, 1))], f"{where}.bn_mul")
    return g.op("Add", [y, g.const(f"{where}.bn_beta", beta.reshape(1, c, 1, 1))], f"{where}.bn_add")


def _relu(g: _Graph, m: Any, x: str, where: str, codes: Any = None) -> str:
    return g.op("Relu", [x], f"{where}.relu")


def _relu6(g: _Graph, m: Any, x: str, where: str, codes: Any = None) -> str:
    return g.op("Clip", [x, g.const(f"{where}.zero", _f32(0)), g.const(f"{where}.six", _f32(6))], f"{where}.relu6")


def _maxpool(g: _Graph, m: nn.MaxPool2d, x: str, where: str, codes: Any = None) -> str:
    pair = lambda v: [v, v] if isinstance(v, int) else list(v)  # noqa: E731
    k, s, p, d = pair(m.kernel_size), pair(m.stride or m.kernel_size), pair(m.padding), pair(m.dilation)
    return g.op(
        "MaxPool",
        [x],
        f"{where}.maxpool",
        kernel_shape=k,
        strides=s,
        pads=p + p,
        dilations=d,
        ceil_mode=int(m.ceil_mode),
    )


# Layer type -> converter(graph, module, input, layer name, weight codes) -> output.
_MODULES: dict[type, Callable[..., str]] = {
    nn.Conv2d: _conv,
    QConv2d: _conv,
    nn.Linear: _linear,
    QLinear: _linear,
    nn.BatchNorm2d: _batchnorm,
    nn.ReLU: _relu,
    nn.ReLU6: _relu6,
    nn.MaxPool2d: _maxpool,
}


def _f_relu(g: _Graph, where: str, x: str, inplace: bool = False) -> str:
    return g.op("Relu", [x], f"{where}")


def _f_add(g: _Graph, where: str, a: str, b: str) -> str:
    return g.op("Add", [a, b], where)


def _f_global_pool(g: _Graph, where: str, x: str, output_size: Any) -> str:
    if output_size not in (1, (1, 1), [1, 1]):
        raise OnnxExportError(f"{where}: adaptive_avg_pool2d to {output_size!r} is not supported (only 1)")
    return g.op("GlobalAveragePool", [x], where)


def _m_flatten(g: _Graph, where: str, x: str, start_dim: int = 0, end_dim: int = -1) -> str:
    if start_dim != 1 or end_dim != -1:
        raise OnnxExportError(f"{where}: flatten({start_dim}, {end_dim}) is not supported (only flatten(1))")
    return g.op("Flatten", [x], where, axis=1)


# call_function targets / call_method names -> converter(graph, node name, *args).
_FUNCTIONS: dict[Any, Callable[..., str]] = {
    F.relu: _f_relu,
    torch.relu: _f_relu,
    operator.add: _f_add,
    torch.add: _f_add,
    F.adaptive_avg_pool2d: _f_global_pool,
    torch.flatten: _m_flatten,
}
_METHODS: dict[str, Callable[..., str]] = {"flatten": _m_flatten, "add": _f_add, "relu": _f_relu}


class _Tracer(torch.fx.Tracer):
    """Stops at every layer with a converter (QConv2d / QLinear are not traced into)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return type(m) in _MODULES or super().is_leaf_module(m, qualname)


def bare_architecture(model: nn.Module) -> nn.Module:
    """The registered architecture a UniQ model wraps (``model.model``), or ``model`` itself.

    A UniQ model is recognised by its config (``model_type`` "uniq", ``config.arch`` registered:
    an unknown one is a ``ValueError`` naming the known ones), whichever code defined its class."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) != UniQConfig.model_type:
        return model
    model_info(config.arch)
    return model.model


def exportable_architecture(model: nn.Module) -> nn.Module:
    """:func:`bare_architecture` built from uniq_hub's own layer classes, the ones the converters know.

    The architecture of a UniQ model loaded as remote code comes from another copy of the shipped
    code (``transformers_modules``); it is rebuilt from the registry (``build_architecture`` of the
    model's config) and loaded with the model's state dict, strictly. The global RNG is left as it was."""
    arch = bare_architecture(model)
    if arch is model or type(arch).__module__.split(".")[0] == _PACKAGE:
        return arch
    with torch.random.fork_rng(devices=[]):
        rebuilt = build_architecture(UniQConfig.from_dict(model.config.to_dict()))
    rebuilt.load_state_dict(arch.state_dict())
    return rebuilt.train(arch.training)


def _weight_codes(arch: nn.Module, packed: dict[str, Tensor]) -> dict[str, Tensor]:
    """``{layer: codes}`` of every quantized weight: the release format's packed codes
    (``packed = pack_state_dict(arch)``), unpacked."""
    return {
        name: unpack_bits(packed[name + PACKED_SUFFIX], wq.bits, layer.weight.numel()).view(layer.weight.shape)
        for name, (layer, wq) in quantized_layers(arch).items()
    }


def build_graph(
    model: nn.Module, input_shape: tuple[int, int, int], packed: dict[str, Tensor] | None = None, name: str = "uniq"
) -> onnx.ModelProto:
    """The exact ONNX graph of ``model`` (eval mode) for inputs ``(batch, *input_shape)``;
    ``packed``: ``pack_state_dict`` of its architecture, when already computed."""
    arch = exportable_architecture(model)
    try:
        traced = _Tracer().trace(arch)
    except Exception as err:  # fx raises several error types for untraceable code
        raise OnnxExportError(f"{type(arch).__name__}: cannot trace the architecture for export: {err}") from err
    modules = dict(arch.named_modules())
    codes = _weight_codes(arch, pack_state_dict(arch) if packed is None else packed)
    g, env = _Graph(), {}
    g._used.update({INPUT_NAME, OUTPUT_NAME})
    result = None

    def arg(a: Any) -> Any:
        return env[a.name] if isinstance(a, torch.fx.Node) else a

    for node in traced.nodes:
        if node.op == "placeholder":
            if env:
                raise OnnxExportError(f"{type(arch).__name__}: only single-input models can be exported")
            env[node.name] = INPUT_NAME
        elif node.op == "call_module":
            module = modules[node.target]
            convert = _MODULES.get(type(module))
            if convert is None:
                raise OnnxExportError(
                    f"layer {node.target!r} ({type(module).__name__}) is not known to the ONNX exporter; "
                    f"known layers: {sorted(t.__name__ for t in _MODULES)}"
                )
            env[node.name] = convert(g, module, arg(node.args[0]), node.target, codes)
        elif node.op in ("call_function", "call_method"):
            table, key = (_FUNCTIONS, node.target) if node.op == "call_function" else (_METHODS, node.target)
            convert = table.get(key)
            if convert is None:
                label = getattr(node.target, "__name__", str(node.target))
                raise OnnxExportError(f"operation {label!r} (at {node.name!r}) is not known to the ONNX exporter")
            args = [arg(a) for a in node.args]
            env[node.name] = convert(g, node.name, *args, **{k: arg(v) for k, v in node.kwargs.items()})
        elif node.op == "output":
            result = arg(node.args[0])
        else:
            raise OnnxExportError(f"{node.op} {node.target!r} is not supported by the ONNX exporter")
    if not isinstance(result, str):
        raise OnnxExportError(f"{type(arch).__name__}: the model must return one tensor (logits)")
    g.nodes.append(helper.make_node("Identity", [result], [OUTPUT_NAME], name=OUTPUT_NAME))
    num_classes = getattr(arch, "num_classes", None) or "classes"
    graph = helper.make_graph(
        g.nodes,
        name,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", *input_shape])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", num_classes])],
        g.initializers,
    )
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="uniq_hub")
    onnx_model.ir_version = 10
    return onnx_model

