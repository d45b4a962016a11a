"""``uniq-hub predict IMAGE... --model M [--runtime torch|onnxruntime|openvino] [--top-k K]``.

Prints the top classes of each image. ``torch`` runs ``UniQForImageClassification`` with its
image processor; ``onnxruntime`` / ``openvino`` run the model's exact ``onnx/model.onnx`` through
:class:`uniq_hub.OnnxImageClassifier` (numpy preprocessing, no torch imported).
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["RUNTIMES", "predict", "add_arguments", "run"]


def _torch_predictor(model: str) -> Any:
    import numpy as np
    import torch

    from ..model.image_processing_uniq import UniQImageProcessor
    from ..model.modeling_uniq import UniQForImageClassification

    net = UniQForImageClassification.from_pretrained(model).eval()
    processor = UniQImageProcessor.from_pretrained(model)

    def logits(images: list[Any]) -> np.ndarray:
        with torch.no_grad():
            return net(**processor(images, return_tensors="pt")).logits.float().numpy()

    return logits, [net.config.id2label[i] for i in range(net.config.num_labels)]


def _onnx_predictor(runtime: str) -> Any:
    def make(model: str) -> Any:
        from .onnx_runtime import OnnxImageClassifier

        clf = OnnxImageClassifier.from_pretrained(model, backend=runtime)
        return clf.logits, clf.labels

    return make


# runtime -> factory(model) -> (logits(images) -> array, labels)
RUNTIMES = {
    "torch": _torch_predictor,
    "onnxruntime": _onnx_predictor("onnxruntime"),
    "openvino": _onnx_predictor("openvino"),
}


def predict(images: list[Any], model: str, runtime: str = "torch", top_k: int = 5) -> list[list[dict[str, Any]]]:
    """Pipeline-style ``[[{"label", "score"}, ...] per image]`` from ``runtime``."""
    import numpy as np

    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; expected one of {sorted(RUNTIMES)}")
    logits_fn, labels = RUNTIMES[runtime](model)
    logits = np.asarray(logits_fn(list(images)), dtype=np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    k = max(1, min(top_k, probs.shape[1]))
    return [[{"label": labels[i], "score": float(p[i])} for i in np.argsort(-p, kind="stable")[:k]] for p in probs]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--model", "-m", required=True, help="model folder or Hub repo id")
    parser.add_argument(
        "--runtime",
        choices=sorted(RUNTIMES),
        default="torch",
        help="torch (PyTorch model) or an ONNX backend running onnx/model.onnx (default: torch)",
    )
    parser.add_argument("--top-k", type=int, default=5, help="classes to print per image (default: 5)")


def run(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise SystemExit(f"uniq-hub predict: --top-k must be at least 1, got {args.top_k}")
    for image, top in zip(args.images, predict(args.images, args.model, args.runtime, args.top_k)):
        print(f"{image}: " + ", ".join(f"{r['label']} ({r['score']:.4f})" for r in top))
    return 0
