"""One released zoo folder, pushed to a Hub, through three runtimes on the Fashion-MNIST test images:
timm (``timm.create_model("hf-hub:...")`` with timm's own transforms), transformers
(``AutoModelForImageClassification`` with our image processor) and ``OnnxImageClassifier`` (the exact
integer graph). Reports each top-1 and how many predictions differ.

    .venv/bin/python benchmarks/three_runtimes.py [--folder zoo/resnet20-fashion-mnist-w2a2] [--limit N]
        [--out benchmarks/results/three-runtimes.json]

The folder is served as uniq/<name> by the loopback Hub of the tests (tests/hub_server.py), offline.
A folder saved before config.json carried timm's keys is re-saved first (its tensors unchanged), and an
ONNX graph exported before its checksum existed is exported again (the same weights); the record says so.
tests/test_timm.py runs the same code on 1000 of the test images.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def prepare_folder(source: str | os.PathLike, target: str | os.PathLike) -> tuple[Path, list[str]]:
    """A copy of a release folder that this version loads in every runtime; returns it and what was redone."""
    from uniq_hub import UniQForImageClassification
    from uniq_hub.deploy.onnx_export import export_onnx
    from uniq_hub.deploy.onnx_graph import GraphError, check_graph
    from uniq_hub.hub.zoo_release import resave_release

    folder, redone = Path(shutil.copytree(source, target)), []
    if "architecture" not in json.loads((folder / "config.json").read_text()):
        resave_release(folder)
        redone.append("config.json and code re-saved with this version (timm's keys; tensors unchanged)")
    if (folder / "onnx" / "model.onnx").is_file():
        try:
            check_graph(folder)
        except GraphError:
            export_onnx(UniQForImageClassification.from_pretrained(folder).eval(), folder / "onnx" / "model.onnx")
            redone.append("onnx/model.onnx exported again by this version (no graph checksum)")
    return folder, redone


def three_runtimes(repo_id: str, limit: int | None = None, batch_size: int = 1000) -> dict[str, Any]:
    """Top-1 of ``repo_id`` on the Fashion-MNIST test split (``limit``: class-balanced first N) in timm,
    transformers and the ONNX classifier, each with its own preprocessing, and the prediction differences."""
    import numpy as np
    import timm
    import torch
    from timm.data import create_transform, resolve_data_config
    from transformers import AutoModelForImageClassification

    from uniq_hub import UniQImageProcessor
    from uniq_hub.deploy.onnx_runtime import OnnxImageClassifier
    from uniq_hub.training.data.sources import load_image_dataset

    ds = load_image_dataset("fashion_mnist", "test", limit=limit)
    images, labels = list(ds["image"]), np.asarray(ds["label"])
    model = timm.create_model(f"hf-hub:{repo_id}", pretrained=True).eval()
    transform = create_transform(**resolve_data_config(model=model))
    reference = AutoModelForImageClassification.from_pretrained(repo_id).eval()
    processor = UniQImageProcessor.from_pretrained(repo_id)
    onnx = OnnxImageClassifier.from_pretrained(repo_id)
    names = [reference.config.id2label[i] for i in range(reference.config.num_labels)]
    truth = np.asarray([names.index(n) for n in np.asarray(ds.features["label"].names)[labels]])
    preds: dict[str, list] = {"timm": [], "transformers": []}
    seconds = {"timm": 0.0, "transformers": 0.0, "onnx": 0.0}
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            batch = images[i:i + batch_size]
            start = time.perf_counter()
            preds["timm"].append(model(torch.stack([transform(im) for im in batch])).argmax(1).numpy())
            seconds["timm"] += time.perf_counter() - start
            start = time.perf_counter()
            preds["transformers"].append(reference(processor(batch, return_tensors="pt").pixel_values).logits.argmax(1))
            seconds["transformers"] += time.perf_counter() - start
    out = {k: np.concatenate(v) for k, v in preds.items()}
    start = time.perf_counter()
    out["onnx"] = onnx.logits(images, batch_size=batch_size).argmax(1)
    seconds["onnx"] = time.perf_counter() - start
    return {
        "repo_id": repo_id, "num_examples": len(labels), "onnx_backend": onnx.backend,
        "top1": {k: round(100.0 * float((v == truth).mean()), 2) for k, v in out.items()},
        "predictions_differing_from_transformers": {k: int((v != out["transformers"]).sum()) for k, v in out.items()
                                                    if k != "transformers"},
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", default=str(REPO / "zoo" / "resnet20-fashion-mnist-w2a2"))
    parser.add_argument("--limit", type=int, help="class-balanced first N test images (default: all 10k)")
    parser.add_argument("--out", help="write the record here (JSON)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from hub_server import HubServer

    with HubServer() as hub, tempfile.TemporaryDirectory() as tmp:
        os.environ.update(HF_ENDPOINT=hub.url, HF_HOME=os.path.join(tmp, "hf"), HF_HUB_DISABLE_XET="1",
                          HF_HUB_DISABLE_TELEMETRY="1")
        from huggingface_hub import HfApi

        from uniq_hub.machine import cpu_model

        source = Path(args.folder)
        folder, redone = prepare_folder(source, Path(tmp) / source.name)
        repo_id = f"uniq/{source.name}"
        api = HfApi(token=hub.token)
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=folder)
        record = {**three_runtimes(repo_id, args.limit), "folder": str(source.relative_to(REPO) if
                                                                          source.is_relative_to(REPO) else source),
                  "redone_before_upload": redone, "cpu": cpu_model(),
                  "threads": int(os.environ.get("OMP_NUM_THREADS", "0")) or None,
                  "command": "python benchmarks/three_runtimes.py " + " ".join(sys.argv[1:])}
    print(json.dumps(record, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
