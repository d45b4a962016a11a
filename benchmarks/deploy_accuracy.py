"""Exactness of the ONNX export on trained models: PyTorch vs the exact graph on every backend,
on a whole test split (Fashion-MNIST's 10k images by default), with the boundary-flip diagnostic.

For each model folder (an export of ``uniq-hub train``), the folder is copied to a temp dir, its
``onnx/model.onnx`` is written with ``export_onnx``, every image goes through the model's image
processor once (the same pixel values for every runtime), and the script reports per runtime:
top-1 / top-5, argmax agreement with PyTorch, the median and worst over images of
``max |difference| / max |logit|``; the reference evaluator (numpy, slow) runs on the first
``--reference-images`` images. The 8 images that differ most (argmax flips first) go through
``flip_diagnostic``: is the first code that differs on a rounding boundary?

Usage::

    python benchmarks/deploy_accuracy.py runs/zoo/resnet20-fashion-mnist-w2a2/export ...
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]


def pixel_values(folder: Path, dataset: str, split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """All images of the split through the model's image processor, and their labels (model ids)."""
    import torch

    from uniq_hub import UniQConfig, UniQImageProcessor
    from uniq_hub.training.data.columns import class_names, label_mapping
    from uniq_hub.training.data.loader import make_dataloader
    from uniq_hub.training.data.sources import load_image_dataset
    from uniq_hub.training.data.transforms import eval_transform

    config = UniQConfig.from_pretrained(folder)
    processor = UniQImageProcessor.from_pretrained(folder)
    ds = load_image_dataset(dataset, split, limit=limit)
    label_map = label_mapping(class_names(ds), config.id2label, source=dataset)
    loader = make_dataloader(
        ds,
        eval_transform(processor),
        batch_size=500,
        shuffle=False,
        num_workers=0,
        label_map=label_map,
        source=dataset,
    )
    xs, ys = [], []
    for batch in loader:
        x, y = (batch["pixel_values"], batch["labels"]) if isinstance(batch, dict) else batch[:2]
        xs.append(torch.as_tensor(x).numpy())
        ys.append(torch.as_tensor(y).numpy())
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys)


def topk(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    order = np.argsort(-logits, axis=1)
    return {
        "top1": round(100.0 * float((order[:, 0] == labels).mean()), 2),
        "top5": round(100.0 * float((order[:, :5] == labels[:, None]).any(1).mean()), 2),
    }


def in_batches(fn, x: np.ndarray, size: int = 500) -> np.ndarray:
    return np.concatenate([fn(x[i : i + size]) for i in range(0, len(x), size)])


def check(folder: Path, dataset: str, split: str, limit: int | None, reference_images: int) -> dict:
    import torch

    from uniq_hub import UniQForImageClassification
    from uniq_hub.deploy.onnx_backends import available_backends, compare_logits, load_backend
    from uniq_hub.deploy.onnx_diagnostic import flip_diagnostic
    from uniq_hub.deploy.onnx_export import export_onnx, torch_logits

    x, labels = pixel_values(folder, dataset, split, limit)
    with tempfile.TemporaryDirectory(prefix="uniq_deploy_acc_") as tmp:
        work = Path(tmp) / folder.name
        shutil.copytree(folder, work, ignore=shutil.ignore_patterns("onnx"))
        model = UniQForImageClassification.from_pretrained(work).eval()
        path = export_onnx(model, work / "onnx" / "model.onnx")
        with torch.inference_mode():
            ref_logits = in_batches(lambda b: torch_logits(model, b), x)
        result = {
            "model": str(folder),
            "num_examples": int(len(x)),
            "onnx_bytes": path.stat().st_size,
            "runtimes": {"torch": topk(ref_logits, labels)},
        }
        for backend in available_backends():
            n = min(reference_images, len(x)) if backend == "reference" else len(x)
            logits = in_batches(load_backend(path, backend), x[:n])
            stats = compare_logits(ref_logits[:n], logits)
            entry = {**topk(logits, labels[:n]), **stats}
            if backend == "reference":
                entry["torch_top1_same_images"] = topk(ref_logits[:n], labels[:n])["top1"]
            else:
                entry["top1_minus_torch"] = round(entry["top1"] - result["runtimes"]["torch"]["top1"], 4)
            # the images that differ most (argmax flips first): are their first code flips on boundaries?
            rel = np.abs(ref_logits[:n] - logits).max(1) / np.abs(ref_logits[:n]).max(1)
            rel[ref_logits[:n].argmax(1) != logits.argmax(1)] = np.inf
            worst = [i for i in np.argsort(-rel)[:8] if rel[i] > 1e-5]
            entry["images_beyond_1e-5"] = int((rel > 1e-5).sum())
            if worst:
                entry["flip_diagnostic_worst_images"] = flip_diagnostic(model, path, x[worst])
            result["runtimes"][backend] = entry
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--split", default="test")
    p.add_argument("--max-samples", type=int)
    p.add_argument("--reference-images", type=int, default=500)
    p.add_argument("--output", default=str(ROOT / "benchmarks/results/deploy-fashion-mnist.json"))
    args = p.parse_args(argv)
    from uniq_hub.model.quant_kernels import set_compile

    set_compile(False)  # eager quantizer kernels: no compile warm-up inside the measured loop
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/deploy_accuracy.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "results": [],
    }
    for folder in args.folders:  # the JSON is rewritten after each model
        report["results"].append(check(folder, args.dataset, args.split, args.max_samples, args.reference_images))
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
