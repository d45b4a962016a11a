"""Model cards: a Hub ``README.md`` (YAML metadata + body) rendered from a zoo entry.

The metadata's ``model-index`` holds only numbers measured in this project (results JSON, see
:mod:`uniq_hub.catalog.zoo`); the paper's number appears in the body, labelled as reported by the paper.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..model.constants import KD_TEMPERATURE, KD_WEIGHT
from ..model.packing import expected_layout
from ..model.quantize import QuantConfig, layer_bits, quantize_
from ..model.registry import create_model, model_info
from .zoo import FP_BITS, ORG, DatasetInfo, Result, ZooEntry, parse_result

LICENSE = "apache-2.0"
PAPER_TITLE = "Training Multi-bit Quantized and Binarized Networks with A Learnable Symmetric Quantizer"
PAPER_CITATION = """@article{pham2021uniq,
  title   = {Training Multi-bit Quantized and Binarized Networks with a Learnable Symmetric Quantizer},
  author  = {Pham, Phuoc and Abraham, Jacob A. and Chung, Jaeyong},
  journal = {IEEE Access},
  year    = {2021}
}"""
EDGE_POLICY = {
    "multi": "the first convolution and the last classifier at 8 bits (the first convolution's input, "
             "the normalised image, through the symmetric quantizer)",
    "binary": "the first convolution and the last classifier stay in full precision",
    "binary+shortcuts": "the first convolution, the last classifier and the downsampling shortcut "
                        "convolutions stay in full precision",
}
TEMPLATE = Path(__file__).with_name("model_card_template.md")
OPTIMIZER_NAMES = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}
# How each dataset's entries are trained on several GPUs (ImageNet) or one device (small images).
LAUNCH = {
    "imagenet-1k": "accelerate launch --multi_gpu --num_processes 8 -m uniq_hub.training.train",
    "cifar100": "accelerate launch -m uniq_hub.training.train",
    "fashion-mnist": "accelerate launch -m uniq_hub.training.train",
}


# ---------------------------------------------------------------------------------------------
# Sizes


@lru_cache(maxsize=None)
def _sizes(arch: str, num_labels: int, num_channels: int, w_bits: int, a_bits: int, granularity: str | None
           ) -> tuple[int, int, dict[str, int]]:
    """(low-bit bytes, FP32 bytes, {"2-bit": layers, "8-bit": ..., "full precision": ...}); the
    model is built on the meta device (shapes and dtypes only, no memory, no init)."""
    with torch.device("meta"):
        model = create_model(arch, num_classes=num_labels, num_channels=num_channels)
    fp32 = sum(t.numel() * 4 for t in model.state_dict().values() if t.is_floating_point())
    if w_bits == FP_BITS:
        return fp32, fp32, {}
    config = QuantConfig(w_bits=w_bits, a_bits=a_bits, weight_granularity=granularity)
    layers: dict[str, int] = {}
    for w, _ in layer_bits(model, config).values():
        label = f"{w}-bit" if w != FP_BITS else "full precision"
        layers[label] = layers.get(label, 0) + 1
    with torch.device("meta"):
        quantize_(model, config)
    # the release layout (packing's own): packed codes as uint8 bytes, every other tensor at its dtype
    total = sum(math.prod(shape) * dtype.itemsize for shape, dtype in expected_layout(model, packed=True).values())
    return total, fp32, layers


def checkpoint_size(entry: ZooEntry) -> tuple[int, int]:
    """``(low-bit bytes, FP32 bytes)``: tensor data of the packed checkpoint (quantized weights at
    their bits, everything else at its dtype: steps, BatchNorm, biases, full-precision layers)
    and of the float model; without the safetensors header."""
    total, fp32, _ = _sizes(entry.arch, entry.dataset.num_labels, entry.dataset.num_channels,
                            entry.w_bits, entry.a_bits, entry.weight_granularity)
    return total, fp32


def _bits(bits: int) -> str:
    return f"{bits} bit" + ("s" if bits != 1 else "")


def _mb(num_bytes: float) -> str:
    return f"{num_bytes / 1e6:.2f} MB"


# ---------------------------------------------------------------------------------------------
# Entries for models outside the zoo


def entry_from_config(config: Mapping[str, Any], name: str, dataset: str | None = None) -> ZooEntry:
    """A card-only entry (no recipe, no paper number) for a model that is not in the zoo,
    from its ``config.json`` dictionary."""
    missing = [k for k in ("arch", "w_bits", "a_bits") if k not in config]
    if missing:
        raise ValueError(f"config.json lacks {missing}; expected a UniQConfig (model_type 'uniq')")
    num_labels = int(config.get("num_labels") or len(config.get("id2label") or {}) or 0)
    if num_labels <= 0:
        raise ValueError("config.json has neither num_labels nor id2label")
    info = DatasetInfo(
        key="custom", hf_name=dataset or str(config.get("dataset") or "") or "custom",
        pretty_name=dataset or str(config.get("dataset") or "") or "a custom dataset",
        num_labels=num_labels, image_size=int(config.get("image_size") or 224),
        num_channels=int(config.get("num_channels") or 3), eval_split="test", calib_batches=0,
    )
    return ZooEntry(name=name, arch=str(config["arch"]), dataset=info, w_bits=int(config["w_bits"]),
                    a_bits=int(config["a_bits"]), recipe=None,
                    weight_granularity=config.get("weight_granularity"))


# ---------------------------------------------------------------------------------------------
# Rendering


def _as_result(result: Result | Mapping[str, Any] | None, entry: ZooEntry) -> Result | None:
    if result is None:
        return entry.measured
    return result if isinstance(result, Result) else parse_result(dict(result))


def tags(entry: ZooEntry) -> list[str]:
    out = ["uniq", "image-classification", entry.arch]
    if entry.full_precision:
        out += ["full-precision", "fp32"]
    else:
        out += ["quantization", "low-bit", "quantization-aware-training", entry.bits, f"{entry.w_bits}-bit"]
        if entry.w_bits == 1:
            out.append("binary")
    return out


def base_model(entry: ZooEntry) -> str | None:
    """The zoo model this one was initialised from (a Hub id), when there is one."""
    src = entry.recipe.init_from if entry.recipe else None
    return src if src and src.startswith(f"{ORG}/") else None


def card_data(entry: ZooEntry, result: Result | None) -> ModelCardData:
    """The YAML metadata; ``model-index`` only when ``result`` (a measured number) is given."""
    evals = None
    if result is not None:
        # "fashion_mnist" (a short name uniq-hub evaluate accepts) is the entry's dataset too
        ours = result.dataset in (entry.dataset.hf_name, entry.dataset.hf_name.rsplit("/", 1)[-1])
        common = dict(task_type="image-classification",
                      dataset_type=entry.dataset.hf_name if ours else result.dataset,
                      dataset_name=entry.dataset.pretty_name if ours else result.dataset, dataset_split=result.split)
        evals = [EvalResult(metric_type="accuracy", metric_value=result.top1, metric_name="Top-1 accuracy (%)",
                            **common)]
        if result.top5 is not None:
            evals.append(EvalResult(metric_type="top-5-accuracy", metric_value=result.top5,
                                    metric_name="Top-5 accuracy (%)", **common))
    base = base_model(entry)
    extra: dict[str, Any] = {"base_model_relation": "quantized"} if base and not entry.full_precision else {}
    return ModelCardData(
        library_name="transformers", pipeline_tag="image-classification", license=LICENSE,
        datasets=[entry.dataset.hf_name] if entry.dataset.key != "custom" or "/" in entry.dataset.hf_name else None,
        tags=tags(entry), base_model=base, model_name=entry.name if evals else None, eval_results=evals,
        **extra,
    )


def _policy(entry: ZooEntry) -> str:
    if entry.full_precision:
        return "Full precision (float32): the initialisation of the quantized models of this family."
    _, _, layers = _sizes(entry.arch, entry.dataset.num_labels, entry.dataset.num_channels,
                          entry.w_bits, entry.a_bits, entry.weight_granularity)
    granularity = entry.weight_granularity or model_info(entry.arch).weight_granularity
    edges = EDGE_POLICY[
        "multi" if entry.w_bits > 1 else "binary+shortcuts" if layers.get("full precision", 0) > 2 else "binary"
    ]
    counts = ", ".join(f"{n} at {label}" for label, n in layers.items())
    return (
        f"Weights at {_bits(entry.w_bits)} and activations at {_bits(entry.a_bits)} "
        "(UniQ's symmetric weight quantizer, "
        + ("unsigned activation quantizer, the symmetric one on layers that read a linear bottleneck (signed "
           "inputs, not the paper's choice)" if entry.signed_inputs else "unsigned activation quantizer")
        + f", learnable step sizes); {edges}. Weight step sizes per "
        f"{'output channel' if granularity == 'channel' else 'layer'}, activation step sizes per layer. "
        f"Convolution / linear layers: {counts}."
    )


def _recipe_lines(entry: ZooEntry) -> list[str]:
    r = entry.recipe
    if r is None:
        return []
    sched = f"cosine (no restarts) over {r.epochs} epochs"
    if r.warmup_epochs:
        sched = f"{r.warmup_epochs:g} warm-up epochs at a constant lr {r.warmup_lr:g}, then lr {r.lr:g} with " + sched
    momentum = f" (momentum {r.momentum:g})" if r.momentum else ""
    opt = OPTIMIZER_NAMES.get(r.optimizer, r.optimizer) + momentum + f", lr {r.lr:g}"
    init = {None: "from scratch"}.get(r.init_from, f"from `{r.init_from}`")
    lines = [
        f"| optimizer | {opt} |", f"| schedule | {sched} |", f"| batch size | {r.batch_size} |",
        f"| weight decay | {r.weight_decay:g} (none on step sizes) |", f"| initialisation | {init} |",
    ]
    if r.teacher:
        lines.append(f"| knowledge distillation | from `{r.teacher}` (temperature {KD_TEMPERATURE:g}, "
                     f"weight {KD_WEIGHT:g}) |")
    if r.calib_batches:
        lines.append(f"| step-size calibration | first {r.calib_batches} training batches (MSE-optimal init) |")
    source = "the paper (Section 5)" if r.source == "paper" else "this project (not from the paper)"
    lines.append(f"| source | {source}{'; ' + r.notes if r.notes else ''} |")
    return ["| hyperparameter | value |", "|---|---|", *lines]


def render_card(
    entry: ZooEntry,
    result: Result | Mapping[str, Any] | None = None,
    repo_id: str | None = None,
    folder: str | os.PathLike | None = None,
) -> str:
    """``README.md`` text for ``entry``: ``ModelCard.from_template`` with ``model_card_template.md``.

    ``result``: a measured results record (default: ``entry.measured``); a record mapping may carry
    ``training`` (:func:`uniq_hub.hub.zoo_release.training_record`), ``selection`` (the split and step the
    checkpoint was chosen on, as training records it) and ``onnx`` (top-1 / top-5 per runtime).
    ``repo_id``: the Hub id used in the snippets (default: the entry's name); ``folder``: an exported
    model folder whose ``model.safetensors`` size is reported.
    """
    extra = result if isinstance(result, Mapping) else {}
    result = _as_result(result, entry)
    repo_id = repo_id or entry.name
    ds = entry.dataset
    precision = ("full-precision" if entry.full_precision
                 else f"{entry.bits} (weights {entry.w_bits}-bit, activations {entry.a_bits}-bit)")
    low, fp32 = checkpoint_size(entry)
    size_lines = [f"FP32 checkpoint of this architecture: {_mb(fp32)}"]
    if not entry.full_precision:
        size_lines.insert(0, f"Packed checkpoint data ({_bits(entry.w_bits)} per quantized weight, "
                             "the rest as stored): "
                             f"{_mb(low)} ({fp32 / low:.1f}x smaller than FP32)")
    weights = Path(folder) / "model.safetensors" if folder else None
    if weights is not None and weights.is_file():
        size_lines.append(f"`model.safetensors` in this repository: {_mb(weights.stat().st_size)}")
    summary = (
        f"A {precision} {model_info(entry.arch).display_name} image classifier for {ds.pretty_name} "
        f"({ds.num_labels} classes, {ds.image_size}x{ds.image_size} "
        f"{'grayscale' if ds.num_channels == 1 else 'RGB'} input), "
        + ("the float baseline that the quantized models of this family start from; they are trained with "
           if entry.full_precision else "trained with ")
        + f"**UniQ**, the learnable symmetric quantizer of *{PAPER_TITLE}* (Pham, Abraham, Chung)."
    )
    paper_line = None
    if entry.paper_top1 is not None:
        has_fp = entry.paper_fp_top1 and not entry.full_precision
        fp = f" (its full-precision baseline: {entry.paper_fp_top1:g}%)" if has_fp else ""
        paper_line = (f"Reported by the paper (not measured here): top-1 {entry.paper_top1:g}% on {ds.pretty_name} "
                      f"({entry.paper_source}){fp}.")
    run_dir = f"runs/{entry.short_name}" if entry.recipe is not None else ""
    train_commands = [
        f"uniq-hub train --zoo {entry.name} --output-dir {run_dir}",
        "# or on several GPUs / machines:",
        f"{LAUNCH[ds.key]} --zoo {entry.name} --output-dir {run_dir}",
        f"uniq-hub evaluate {run_dir}/export --dataset {ds.hf_name} --split {ds.eval_split}",
        f"uniq-hub publish {run_dir}/export --repo-id {repo_id}",
    ] if entry.recipe is not None else []
    card = ModelCard.from_template(
        card_data(entry, result), template_path=str(TEMPLATE), repo_id=repo_id, summary=summary,
        policy=_policy(entry), size_lines=size_lines, measured=result, onnx=extra.get("onnx"),
        paper_line=paper_line, training=extra.get("training"), selection=extra.get("selection"),
        machine=extra.get("machine"), portability=extra.get("portability"),
        train_commands=train_commands,
        recipe_lines=_recipe_lines(entry), citation=PAPER_CITATION,
    )
    return str(card).rstrip("\n") + "\n"


# ---------------------------------------------------------------------------------------------
# The committed cards (model_cards/)


def card_filename(entry: ZooEntry) -> str:
    return f"{entry.short_name}.md"


def render_index(entries: list[ZooEntry]) -> str:
    """``model_cards/README.md``: one line per card, paper and measured top-1 side by side."""

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:g}"

    lines = [
        "# Model cards",
        "",
        "Generated by `scripts/generate_model_cards.py` from the zoo registry (`uniq_hub/catalog/zoo.py`) and the",
        "results JSON files in `benchmarks/results/`; do not edit by hand. \"Paper\" is the top-1 reported by",
        "the paper (not measured here); \"measured\" is ours, `-` where nothing was measured yet.",
        "",
        "| model | dataset | bits | paper top-1 (%) | measured top-1 (%) | packed size | FP32 size |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        low, fp32 = checkpoint_size(e)
        lines.append(
            f"| [{e.name}]({card_filename(e)}) | {e.dataset.hf_name} | {e.bits} | {pct(e.paper_top1)} | "
            f"{pct(e.measured.top1 if e.measured else None)} | {_mb(low)} | {_mb(fp32)} |"
        )
    return "\n".join(lines) + "\n"


def generate_cards(entries: list[ZooEntry], releases: Mapping[str, str | os.PathLike] | None = None) -> dict[str, str]:
    """``{file name: text}`` for every entry, plus the ``README.md`` index. An entry with a release
    folder (``releases``: zoo name -> folder, see :mod:`uniq_hub.hub.zoo_release`) gets that folder's card."""
    releases = releases or {}
    files = {card_filename(e): (Path(releases[e.name]) / "README.md").read_text() if e.name in releases
             else render_card(e) for e in entries}
    files["README.md"] = render_index(entries)
    return files
