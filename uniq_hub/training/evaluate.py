"""Top-1 / top-5 accuracy of a model on a dataset split: ``uniq-hub evaluate MODEL ...``.

Writes the results JSON the zoo and the model cards read (schema in :mod:`uniq_hub.catalog.zoo`)::

    {"model_id", "dataset", "split", "top1", "top5", "num_examples", "command"}

with accuracies in percent. Works on one process or under ``accelerate launch`` (predictions are
gathered across processes, padding dropped).
"""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path
from typing import Any, Iterable

import torch
from accelerate import Accelerator, PartialState
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..catalog.zoo import get_entry
from ..machine import machine_record
from ..model.atomic import write_json_atomic
from ..model.constants import RESULTS_FILE
from ..model.image_processing_uniq import UniQImageProcessor
from ..model.modeling_uniq import UniQForImageClassification
from .data.columns import class_names, label_mapping
from .data.loader import make_dataloader
from .data.sources import load_image_dataset
from .data.transforms import eval_transform

__all__ = ["split_batch", "topk_correct", "evaluate_model", "evaluate", "write_results",
           "add_arguments", "run"]


def split_batch(batch: Any) -> tuple[Tensor, Tensor]:
    """``(pixel_values, labels)`` of a dict batch or an ``(inputs, labels)`` pair."""
    if isinstance(batch, dict):
        return batch["pixel_values"], batch["labels"]
    inputs, labels = batch[0], batch[1]
    return inputs, labels


def _logits(output: Any) -> Tensor:
    return output.logits if hasattr(output, "logits") else output


def topk_correct(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, Tensor]:
    """Per-example correctness (bool) at each ``k`` (``k`` capped at the number of classes)."""
    top = logits.topk(min(max(ks), logits.shape[-1]), dim=-1).indices
    hits = top == labels.unsqueeze(-1)
    return {k: hits[:, :k].any(dim=-1) for k in ks}


@torch.no_grad()
def evaluate_model(model: nn.Module, batches: Iterable, accelerator=None, progress: bool = False,
                   predictions: bool = False) -> dict[str, Any]:
    """``{"top1", "top5", "num_examples"}`` (percent) of ``model`` over ``batches``, and with
    ``predictions`` the per-example top-1 class ids (``"predictions"``, a list in dataset order).

    With an ``accelerator`` the batches are this process's shard (a prepared dataloader) and
    the counts are gathered with ``gather_for_metrics`` (duplicated padding dropped).
    """
    was_training = model.training
    model.eval()
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    correct = {1: 0, 5: 0}
    total = 0
    top1: list[Tensor] = []
    num_classes = None
    try:
        if progress:
            batches = tqdm(batches, desc="eval", leave=False, dynamic_ncols=True)
        for batch in batches:
            inputs, labels = split_batch(batch)
            inputs, labels = inputs.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            logits = _logits(model(inputs))
            num_classes = logits.shape[-1]
            hits = topk_correct(logits.float(), labels)
            stacked = torch.stack([hits[1], hits[5], logits.argmax(-1)], dim=-1)
            if accelerator is not None:
                stacked = accelerator.gather_for_metrics(stacked)
            correct[1] += int(stacked[:, 0].sum())
            correct[5] += int(stacked[:, 1].sum())
            total += stacked.shape[0]
            if predictions:
                top1.append(stacked[:, 2])
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("evaluation got no examples: the split is empty (check --split / --max-samples)")
    return {
        "top1": 100.0 * correct[1] / total,
        "top5": 100.0 * correct[5] / total if num_classes and num_classes > 5 else None,
        "num_examples": total,
        **({"predictions": torch.cat(top1).tolist()} if predictions else {}),
    }


def write_results(path: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write one results record (atomically) and return its path."""
    return write_json_atomic(path, record)


def evaluate(
    model_id: str,
    dataset: str,
    split: str = "test",
    batch_size: int = 256,
    max_samples: int | None = None,
    num_workers: int = 2,
    image_column: str | None = None,
    label_column: str | None = None,
    streaming: bool = False,
    command: str | None = None,
    progress: bool = False,
    runtime: str = "torch",
    predictions: bool = False,
) -> dict[str, Any]:
    """Evaluate ``model_id`` (a folder or Hub id) on ``dataset``/``split`` with its own image
    processor, exactly the preprocessing ``pipeline("image-classification")`` applies; returns
    the results record. Dataset labels are matched to the model's ``id2label`` by class name (a
    class the model does not know is an error). ``runtime``: "torch", or an ONNX backend
    ("onnxruntime", "openvino") running the model's ``onnx/model.onnx`` on the same inputs.
    ``predictions``: see :func:`evaluate_model`."""
    accelerator = Accelerator()
    model = UniQForImageClassification.from_pretrained(model_id)
    processor = UniQImageProcessor.from_pretrained(model_id)
    ds = load_image_dataset(dataset, split, streaming=streaming, image_column=image_column,
                            label_column=label_column, limit=max_samples)
    label_map = label_mapping(class_names(ds), model.config.id2label, source=dataset)
    if runtime != "torch":
        from ..deploy.onnx_export import OnnxModule

        model = OnnxModule(model_id, runtime)
    loader = make_dataloader(ds, eval_transform(processor), batch_size=batch_size, shuffle=False,
                             num_workers=num_workers, label_map=label_map, source=dataset)
    model, loader = accelerator.prepare(model, loader)
    metrics = evaluate_model(model, loader, accelerator, progress=progress and accelerator.is_local_main_process,
                             predictions=predictions)
    return {
        "model_id": model_id, "dataset": dataset, "split": split, **metrics,
        "command": command or "uniq-hub evaluate " + shlex.join([model_id, "--dataset", dataset, "--split", split]),
        "machine": machine_record(),
        **({} if runtime == "torch" else {"runtime": runtime}),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model folder (an export) or Hub repo id")
    parser.add_argument("--dataset", required=True,
                        help="HF dataset name, imagefolder / save_to_disk dir, fashion_mnist")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-samples", type=int, help="only the first N examples")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--image-column", help="image column (default: detected)")
    parser.add_argument("--label-column", help="label column (default: detected)")
    parser.add_argument("--streaming", action="store_true", help="stream the split")
    parser.add_argument("--runtime", choices=("torch", "onnxruntime", "openvino"), default="torch",
                        help="run the PyTorch model (default) or its onnx/model.onnx on an ONNX backend")
    parser.add_argument("--output", "-o", help="results JSON to write (default: <model folder>/eval_results.json "
                        "for a local folder that has none yet and a whole split, else print only)")
    parser.add_argument("--replace-results", action="store_true", help="without --output: replace the folder's "
                        "existing eval_results.json (its selection, training and ONNX records are lost)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--zoo-name", help="the zoo entry this model is (recorded, so `uniq-hub zoo` and the "
                        "cards show the result when the JSON goes to benchmarks/results/)")


def _command(args: argparse.Namespace) -> str:
    parts = [args.model, "--dataset", args.dataset, "--split", args.split]
    if args.max_samples:
        parts += ["--max-samples", str(args.max_samples)]
    for flag, value in (("--image-column", args.image_column), ("--label-column", args.label_column)):
        if value:
            parts += [flag, value]
    if args.zoo_name:
        parts += ["--zoo-name", args.zoo_name]
    if args.runtime != "torch":
        parts += ["--runtime", args.runtime]
    return "uniq-hub evaluate " + shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    if args.zoo_name:
        try:
            args.zoo_name = get_entry(args.zoo_name).name
        except KeyError as err:
            raise SystemExit(f"uniq-hub evaluate: --zoo-name: {err.args[0]}") from None
    command = _command(args)
    try:
        record = evaluate(
            args.model, args.dataset, args.split, args.batch_size, args.max_samples, args.num_workers,
            args.image_column, args.label_column, args.streaming, command=command, progress=args.progress,
            runtime=args.runtime,
        )
    except (ValueError, OSError) as err:  # unknown classes, unreadable images, missing data: one line
        raise SystemExit(f"uniq-hub evaluate: {err}") from err
    if args.zoo_name:
        record["zoo_name"] = args.zoo_name
    output, kept = _default_output(args) if not args.output else (args.output, None)
    if PartialState().is_main_process:
        top5 = "n/a" if record["top5"] is None else f"{record['top5']:.2f}%"
        print(f"{args.model} on {args.dataset}/{args.split}: top-1 {record['top1']:.2f}%  top-5 {top5}  "
              f"({record['num_examples']} examples)")
        if output:
            print(f"results: {write_results(output, record)}")
        elif kept:
            print(f"results not written: {kept}")
    return 0


def _default_output(args: argparse.Namespace) -> tuple[Path | None, str | None]:
    """Where results go without ``--output``: the folder's results file, unless that would replace a record
    the folder already has (without ``--replace-results``) or hold a partial evaluation (``--max-samples``).
    Returns ``(path or None, why nothing is written)``."""
    if not Path(args.model).is_dir():
        return None, None
    results_file = RESULTS_FILE if args.runtime == "torch" else f"{Path(RESULTS_FILE).stem}_{args.runtime}.json"
    path = Path(args.model) / results_file
    if args.max_samples:
        return None, (f"--max-samples {args.max_samples} is a partial evaluation and never goes to {path} "
                      "(pass -o FILE to keep it)")
    if path.exists() and not args.replace_results:
        return None, f"{path} exists and is kept (pass -o FILE, or --replace-results to replace it)"
    return path, None
