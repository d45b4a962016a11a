"""The quickstart (README command 1), as a function a test can run at toy size.

Fashion-MNIST (the Hub, else the Debian ``dataset-fashion-mnist`` files): train a pre-activation
ResNet-20 in full precision, then UniQ w2a2 initialised from it (calibration, then training),
evaluate the exported model through ``uniq-hub evaluate``'s code path, classify a few test images
with ``pipeline("image-classification")``, and publish the folder with ``uniq-hub publish``'s code
(a dry run that validates it and lists what would go up, unless a repo id is given). Prints the
measured numbers and where the Hub-ready folder is.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from transformers import pipeline

from . import register_auto_classes
from .hub.publish import publish
from .model.atomic import write_json_atomic
from .model.constants import RESULTS_FILE
from .training.data.columns import class_names
from .training.data.sources import load_image_dataset
from .training.evaluate import evaluate
from .training.train import train
from .training.train_config import resolve_config

__all__ = ["run_quickstart", "main"]


def _say(message: str) -> None:
    print(f"[quickstart] {message}", flush=True)


def run_quickstart(
    workdir: str | Path = "runs/quickstart",
    dataset: str = "zalando-datasets/fashion_mnist",
    bits: int = 2,
    train_samples: int | None = None,
    eval_samples: int | None = None,
    fp_epochs: int = 2,
    q_epochs: int = 1,
    batch_size: int = 128,
    num_workers: int = 1,
    num_examples: int = 4,
    progress: bool = True,
    repo_id: str | None = None,
    token: str | None = None,
    **train_options: Any,
) -> dict[str, Any]:
    """Train FP then w{bits}a{bits}, evaluate, export, classify; returns the measured numbers.

    ``repo_id``: publish there (with ``token``, else the stored login); without it, a dry run.
    ``train_options``: more training options for both stages (e.g. ``log_every=1``)."""
    workdir = Path(workdir)
    start = time.perf_counter()
    common = dict(dataset=dataset, arch="resnet20", batch_size=batch_size, num_workers=num_workers,
                  max_train_samples=train_samples, max_eval_samples=eval_samples, progress=progress,
                  save_every=0, keep_checkpoints=1, log_with="tensorboard", overwrite=True,  # a rerun starts over
                  eval_every=max(fp_epochs, q_epochs))  # evaluate after the last epoch of each stage
    common.update(train_options)
    subset = f"{train_samples} training images" if train_samples else "the full training split"
    _say(f"1/5 full-precision ResNet-20 on {dataset}: {fp_epochs} epoch(s) on {subset}")
    fp = train(resolve_config(common, bits=32, epochs=fp_epochs, output_dir=str(workdir / "fp"),
                              run_name="quickstart-resnet20-fp"))
    _say(f"2/5 UniQ w{bits}a{bits} initialised from it: calibration, then {q_epochs} epoch(s)")
    q = train(resolve_config(common, bits=bits, epochs=q_epochs, init_from=str(workdir / "fp"),
                             output_dir=str(workdir / f"w{bits}a{bits}"),
                             run_name=f"quickstart-resnet20-w{bits}a{bits}"))
    export = Path(q["export_dir"])
    _say(f"3/5 evaluating the exported folder {export} as `uniq-hub evaluate` does")
    record = evaluate(str(export), dataset, "test", batch_size=256, max_samples=eval_samples, num_workers=num_workers)
    record["selection"] = q["selection"]  # which split chose the checkpoint (the held-out validation images)
    write_json_atomic(export / RESULTS_FILE, record)
    _say(f"4/5 pipeline('image-classification') on {num_examples} test images")
    predictions = _classify(export, dataset, num_examples)
    target = repo_id or f"YOUR_NAME/resnet20-fashion-mnist-w{bits}a{bits}"
    _say(f"5/5 publishing to {target}" + ("" if repo_id else " (dry run: no --repo-id given, nothing is sent)"))
    published = publish(export, target, token=token, dry_run=repo_id is None)
    fp_size = (Path(fp["export_dir"]) / "model.safetensors").stat().st_size
    q_size = (export / "model.safetensors").stat().st_size
    result = {
        "fp_top1": fp["test"]["top1"], "q_top1": q["test"]["top1"], "evaluate": record, "predictions": predictions,
        "export_dir": str(export), "repo_id": repo_id,
        "published": published.commit_url if repo_id else published.describe(),
        "fp_bytes": fp_size, "q_bytes": q_size, "seconds": time.perf_counter() - start,
    }
    _report(result, bits)
    return result


def _classify(export: Path, dataset: str, count: int) -> list[dict[str, Any]]:
    ds = load_image_dataset(dataset, "test", limit=count)
    names = class_names(ds)
    register_auto_classes()  # model_type "uniq" -> uniq_hub's classes, no remote code
    classifier = pipeline("image-classification", model=str(export), trust_remote_code=False)  # uniq_hub's classes
    out = []
    for row in ds:
        top = classifier(row["image"], top_k=1)[0]
        out.append({"true": names[row["label"]] if names else row["label"], "predicted": top["label"],
                    "score": round(float(top["score"]), 4)})
    return out


def _report(result: dict[str, Any], bits: int) -> None:
    record = result["evaluate"]
    top5 = "n/a" if record["top5"] is None else f"{record['top5']:.2f}%"
    print()
    print(f"  full precision          top-1 {result['fp_top1']:.2f}%   weights {result['fp_bytes'] / 1e6:.3f} MB")
    print(f"  UniQ w{bits}a{bits} (training)   top-1 {result['q_top1']:.2f}%")
    print(f"  UniQ w{bits}a{bits} (evaluate)   top-1 {record['top1']:.2f}%   top-5 {top5}   "
          f"on {record['num_examples']} test images   weights {result['q_bytes'] / 1e6:.3f} MB (packed)")
    for p in result["predictions"]:
        mark = "ok " if p["true"] == p["predicted"] else "err"
        print(f"  pipeline: {mark} true={p['true']!r:<14} predicted={p['predicted']!r:<14} score={p['score']:.3f}")
    print(f"\n  Hub-ready folder: {result['export_dir']}")
    if result["repo_id"]:
        print(f"  published: {result['published']}")
    else:
        print("  publish dry run, would upload:\n    " + result["published"].replace("\n", "\n    "))
        print(f"  publish it with:  uniq-hub publish {result['export_dir']} "
              f"--repo-id YOUR_NAME/resnet20-fashion-mnist-w{bits}a{bits}   (or rerun with --repo-id)")
    print(f"  total time: {result['seconds'] / 60:.1f} min")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="uniq_hub.quickstart", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="runs/quickstart")
    parser.add_argument("--dataset", default="zalando-datasets/fashion_mnist",
                        help="Hub name (offline: the Debian dataset-fashion-mnist files), or any other dataset")
    parser.add_argument("--bits", type=int, default=2)
    parser.add_argument("--train-samples", type=int, default=0, help="training subset (0: all 60k)")
    parser.add_argument("--eval-samples", type=int, default=0, help="test subset (0: all 10k)")
    parser.add_argument("--fp-epochs", type=int, default=2)
    parser.add_argument("--q-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--repo-id", help="publish the w2a2 folder to this Hub repo (default: a dry run)")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or the stored login)")
    args = parser.parse_args(argv)
    run_quickstart(args.workdir, args.dataset, args.bits, args.train_samples or None, args.eval_samples or None,
                   args.fp_epochs, args.q_epochs, args.batch_size, args.num_workers, progress=args.progress,
                   repo_id=args.repo_id, token=args.token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
