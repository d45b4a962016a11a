"""The flip diagnostic: when an exported graph and its PyTorch model differ, are the differing
quantizer codes one-level flips at rounding boundaries (float-order ties, exact in the sense
docs/deploy.md defines under "Backends and exactness") or real errors? ``export_onnx`` and
``verify_onnx`` consult it when the logits miss the exactness bounds; ``benchmarks/deploy_accuracy.py``
reports it.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper
from torch import nn

from .onnx_convert import bare_architecture, quantizer_levels, quantizer_step
from .onnx_graph import INPUT_NAME

__all__ = ["describe_flips", "flip_diagnostic"]


@torch.no_grad()
def flip_diagnostic(model: nn.Module, path: str | os.PathLike, x: np.ndarray) -> dict[str, Any]:
    """Compare every input quantizer's codes between PyTorch and the reference evaluator.

    At the first layer (in graph order) whose codes differ, recompute each flipped element's
    pre-quantization value ``v = x / D`` on both sides; a flip is benign when the two sides'
    ``v`` lie within float error (``1e-5`` relative) of each other and of the level boundary
    ``k + 1/2`` between their codes. Returns ``{"first_layer", "flips", "max_boundary_distance",
    "max_value_difference", "all_at_boundary", "layers_with_flips"}``.
    """
    from onnx.reference import ReferenceEvaluator

    arch = bare_architecture(model).eval()
    onnx_model = onnx.load(os.fspath(path))
    quantizers = {n.name[: -len(".in_q")]: n for n in onnx_model.graph.node if n.name.endswith(".in_q")}
    modules = dict(arch.named_modules())
    pre: dict[str, np.ndarray] = {}
    hooks = [
        modules[name].input_quantizer.register_forward_pre_hook(
            lambda m, a, name=name: pre.__setitem__(name, a[0].numpy().copy())
        )
        for name in quantizers
    ]
    try:
        arch(torch.from_numpy(x))
    finally:
        for h in hooks:
            h.remove()
    names = [t for n in quantizers for t in (quantizers[n].input[0], quantizers[n].output[0])]
    extra = onnx.ModelProto()
    extra.CopyFrom(onnx_model)
    extra.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    outputs = ReferenceEvaluator(extra).run(names, {INPUT_NAME: x})
    result: dict[str, Any] = {
        "first_layer": None,
        "flips": 0,
        "max_boundary_distance": 0.0,
        "max_value_difference": 0.0,
        "all_at_boundary": True,
        "layers_with_flips": [],
    }
    for i, name in enumerate(quantizers):
        q = modules[name].input_quantizer
        step = quantizer_step(q).reshape(())
        m = quantizer_levels(q)[0]
        # PyTorch's codes (its arithmetic: x / D, + offset, clamp, round) and the graph's own
        # QuantizeLinear output mapped to the same code numbering.
        v_t, v_o = pre[name] / step, np.asarray(outputs[2 * i]) / step
        c_t = np.round(np.clip(v_t + np.float32(q.offset), q.lo, q.hi))
        c_o = np.asarray(outputs[2 * i + 1]).astype(np.float64) / m + q.offset
        diff = c_t != c_o
        if not diff.any():
            continue
        result["layers_with_flips"].append(name)
        if result["first_layer"] is not None:
            continue
        boundary = (np.minimum(c_t, c_o) + 0.5 - q.offset)[diff]
        a, b = v_t[diff].astype(np.float64), v_o[diff].astype(np.float64)
        tol = 1e-5 * np.maximum(np.abs(boundary), 1.0)
        dist = np.maximum(np.abs(a - boundary), np.abs(b - boundary))
        result.update(
            first_layer=name,
            flips=int(diff.sum()),
            max_boundary_distance=float(dist.max()),
            max_value_difference=float(np.abs(a - b).max()),
            all_at_boundary=bool((dist <= tol).all()),
        )
    return result



def describe_flips(d: dict[str, Any]) -> str:
    """:func:`flip_diagnostic`'s result in one sentence (what a verification failure looks like inside)."""
    if d["first_layer"] is None:
        return "no quantizer code differs: the difference is in float arithmetic after the last quantizer"
    where = "all at rounding boundaries (float-order ties)" if d["all_at_boundary"] else "NOT all at boundaries"
    return (f"flip diagnostic: {d['flips']} codes differ first at {d['first_layer']}, {where}, max distance to the "
            f"boundary {d['max_boundary_distance']:.3g}; layers with flips: {len(d['layers_with_flips'])}")

