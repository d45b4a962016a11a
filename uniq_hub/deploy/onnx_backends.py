"""The runtimes that run an exported graph (``BACKENDS``) and what "exact" means between them.

Backends all compute the same exact graph; what each needs to stay exact:

* ``reference``: ``onnx.reference.ReferenceEvaluator`` (numpy): the definition of the graph.
* ``onnxruntime``: its ``WeightBiasQuantization`` rewrite quantizes a float conv bias (BatchNorm
  folded into the conv) to int32 and so changes results; it is disabled through the session's
  ``disabled_optimizers`` (graph optimizations otherwise stay on).
* ``openvino``: ``INFERENCE_PRECISION_HINT=f32`` (its default on CPUs with bf16 computes the
  float parts in bf16); the quantized convolutions still run in int8.

A backend counts as exact for a model when :func:`compare_logits` against the reference is within
:data:`EXACT_BOUNDS` (only one-level flips at rounding boundaries differ); ``export_onnx`` records
the backends it verified in the file's metadata (:func:`exact_backends_of`), and the classifier
defaults to the fastest of them. Torch-free.
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any, Callable

import numpy as np

from .onnx_graph import INPUT_NAME, META_EXACT_BACKENDS

__all__ = [
    "BACKENDS",
    "EXACT_BOUNDS",
    "FASTEST_FIRST",
    "available_backends",
    "compare_logits",
    "exact_backends_of",
    "load_backend",
    "openvino_model",
    "ort_session",
    "within_bounds",
]

# Measured here (docs/deploy.md): OpenVINO runs the exact graph's int8 convolutions, ONNX Runtime
# dequantizes and runs them in float.
FASTEST_FIRST = ("openvino", "onnxruntime", "reference")
# The bounds for "exact": argmax agreement, median over images of max |difference| / max |logit|.
EXACT_BOUNDS = {"argmax_agreement": 0.999, "median_rel_max_diff": 1e-3}


# ---------------------------------------------------------------------------------------------
# Backends: path -> callable(batch float32 NCHW) -> logits
# ---------------------------------------------------------------------------------------------


def _reference(path: str, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(path)
    return lambda x: np.asarray(evaluator.run(None, {INPUT_NAME: x})[0])


def ort_session(
    path: str, threads: int = 2, optimized_model_filepath: str | None = None, optimize: bool = True, spin: bool = True
):
    """An ONNX Runtime CPU session that stays exact (``WeightBiasQuantization`` disabled).

    ``optimize=False``: ``ORT_DISABLE_ALL`` (the graph as written, a second reference).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    if not spin:  # idle worker threads sleep instead of spinning (fairer beside other runtimes in one process)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if optimized_model_filepath:
        options.optimized_model_filepath = optimized_model_filepath
    return ort.InferenceSession(
        path, options, providers=["CPUExecutionProvider"], disabled_optimizers=["WeightBiasQuantization"]
    )


def _onnxruntime(path: str, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    session = ort_session(path, threads)
    return lambda x: session.run(None, {INPUT_NAME: x})[0]


def openvino_model(path: str, threads: int = 2, precision: str | None = "f32"):
    """An OpenVINO CPU compiled model; ``precision=None`` keeps OpenVINO's default (bf16 here)."""
    import openvino as ov

    config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    return ov.Core().compile_model(path, "CPU", config)


def _openvino(path: str, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    request = openvino_model(path, threads).create_infer_request()
    return lambda x: np.array(request.infer({0: x})[0])


BACKENDS: dict[str, Callable[[str, int], Callable[[np.ndarray], np.ndarray]]] = {
    "reference": _reference,
    "onnxruntime": _onnxruntime,
    "openvino": _openvino,
}
_MODULES = {"reference": "onnx", "onnxruntime": "onnxruntime", "openvino": "openvino"}


def available_backends() -> list[str]:
    """Backends whose package is installed, fastest first."""
    return [b for b in FASTEST_FIRST if importlib.util.find_spec(_MODULES[b]) is not None]


def load_backend(path: str | os.PathLike, backend: str, threads: int = 2) -> Callable[[np.ndarray], np.ndarray]:
    """``fn(x) -> logits`` running the ONNX file at ``path`` on ``backend``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown ONNX backend {backend!r}; expected one of {sorted(BACKENDS)}")
    if backend not in available_backends():
        raise ImportError(
            f"backend {backend!r} needs the {_MODULES[backend]!r} package: pip install 'uniq_hub[onnx]'"
            + (" 'uniq_hub[openvino]'" if backend == "openvino" else "")
        )
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such ONNX file")
    try:
        return BACKENDS[backend](path, threads)
    except Exception as err:  # each runtime raises its own error types for an unreadable graph
        raise ValueError(
            f"{path}: {backend} cannot load this ONNX file (corrupted or not an ONNX model?): {err}"
        ) from err


# ---------------------------------------------------------------------------------------------
# Exactness: one-level flips only
# ---------------------------------------------------------------------------------------------


def compare_logits(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Argmax agreement and the median / worst over images of ``max |difference| / max |logit|``."""
    reference, other = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    if reference.shape != other.shape or reference.ndim != 2:
        raise ValueError(
            f"logits must be two arrays of the same (batch, classes) shape, got {reference.shape} and {other.shape}"
        )
    scale = np.maximum(np.abs(reference).max(axis=1), np.finfo(np.float32).tiny)
    rel = np.abs(reference - other).max(axis=1) / scale
    return {
        "argmax_agreement": float((reference.argmax(1) == other.argmax(1)).mean()),
        "median_rel_max_diff": float(np.median(rel)),
        "worst_rel_max_diff": float(rel.max()),
        "max_abs_diff": float(np.abs(reference - other).max()),
        "num_images": int(reference.shape[0]),
    }


def within_bounds(stats: dict[str, float]) -> bool:
    """Whether :func:`compare_logits` statistics meet :data:`EXACT_BOUNDS`."""
    return (
        stats["argmax_agreement"] >= EXACT_BOUNDS["argmax_agreement"]
        and stats["median_rel_max_diff"] <= EXACT_BOUNDS["median_rel_max_diff"]
    )


def exact_backends_of(path: Any) -> list[str]:
    """Backends ``export_onnx`` verified exact for this file (its metadata), fastest first;
    ``path``: the file or its loaded ``onnx.ModelProto``."""
    import onnx

    model = path if isinstance(path, onnx.ModelProto) else onnx.load(os.fspath(path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    verified = json.loads(meta.get(META_EXACT_BACKENDS, "[]"))
    return [b for b in FASTEST_FIRST if b in verified]

