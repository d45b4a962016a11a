"""The model zoo: every published UniQ model, its training recipe, the paper's number and ours.

Entries are built from small tables (datasets, architecture families here; the recipes in
:mod:`uniq_hub.catalog.recipe_table`), not written out one by one. ``get_entry(name)`` /
``list_entries()`` return :class:`ZooEntry` objects whose ``measured`` field is filled from results
JSON files, when one exists.

Results JSON schema (what ``uniq-hub evaluate`` writes; one object, or a list of objects, per file)::

    {
      "model_id": "uniq/resnet20-fashion-mnist-w2a2",  # zoo name, Hub repo id or local path
      "zoo_name": "uniq/resnet20-fashion-mnist-w2a2",  # optional: the zoo entry, when model_id is not it
      "dataset": "zalando-datasets/fashion_mnist",     # HF dataset name (or a local source)
      "split": "test",
      "top1": 91.23,                                    # percent, 0..100
      "top5": 99.87,                                    # percent, 0..100, or null
      "num_examples": 10000,
      "command": "uniq-hub evaluate ..."                # how to reproduce the number
    }

Files are read from ``benchmarks/results/`` (recursively) in a source checkout, or from the
directories in ``$UNIQ_HUB_RESULTS`` (``os.pathsep``-separated), or from ``results_dirs``.
JSON objects without ``model_id`` and ``top1`` (other logs) are ignored; a record that has them
but is malformed raises a ``ValueError`` naming the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..model.atomic import read_json
from ..model.constants import FP_BITS
from .recipe_table import recipe_kind, recipe_spec

ORG = "uniq"
RESULTS_ENV = "UNIQ_HUB_RESULTS"
DEFAULT_RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
RESULT_KEYS = ("model_id", "dataset", "split", "top1", "top5", "num_examples", "command")


@dataclass(frozen=True)
class DatasetInfo:
    """An evaluation dataset of the zoo."""

    key: str
    hf_name: str
    pretty_name: str
    num_labels: int
    image_size: int
    num_channels: int
    eval_split: str
    calib_batches: int


@dataclass(frozen=True)
class Recipe:
    """Training hyperparameters of one entry (what ``uniq-hub train --zoo NAME`` uses)."""

    optimizer: str  # "sgd" | "adam"
    lr: float
    epochs: int
    batch_size: int
    weight_decay: float  # never applied to step sizes
    init_from: str | None  # zoo name, "pytorchcv:<model>", or None (from scratch)
    calib_batches: int
    momentum: float | None = None
    warmup_epochs: float = 0
    warmup_lr: float | None = None  # constant lr during the warm-up
    source: str = "paper"  # "paper" or "here" (chosen in this project)
    notes: str = ""
    teacher: str | None = None  # knowledge distillation from this zoo entry (default temperature and weight)
    label_smoothing: float = 0.0
    random_erasing: float = 0.0  # probability of timm's RandomErasing on training images
    max_steps: int | None = None  # stop (and end the cosine schedule) after this many steps: a partial epoch

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def local_sources(self, runs: str | os.PathLike) -> list[str]:
        """``--init-from`` / ``--teacher`` arguments with the zoo entries this recipe starts from and
        distils from as the local run directories ``runs/<short name>`` (a chain trained here)."""
        args: list[str] = []
        for flag, source in (("--init-from", self.init_from), ("--teacher", self.teacher)):
            if source and source.startswith("uniq/"):
                args += [flag, os.path.join(runs, source.split("/", 1)[1])]
        return args


@dataclass(frozen=True)
class Result:
    """One evaluation record (see the module docstring for the JSON schema)."""

    model_id: str
    dataset: str
    split: str
    top1: float
    top5: float | None = None
    num_examples: int | None = None
    command: str | None = None
    zoo_name: str | None = None
    path: str | None = None  # the file it came from

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: what it is, how to train it, what the paper reports and what we measured."""

    name: str
    arch: str
    dataset: DatasetInfo
    w_bits: int  # 32: full precision
    a_bits: int
    recipe: Recipe | None  # None: a model outside the zoo (card-only entry)
    weight_granularity: str | None = None  # None: the architecture's default
    signed_inputs: bool = False  # symmetric quantizer on signed layer inputs (MobileNetV2's bottlenecks)
    paper_top1: float | None = None
    paper_source: str | None = None  # e.g. "Table 2"
    paper_fp_top1: float | None = None  # the paper's full-precision baseline for this architecture
    measured: Result | None = None
    results: tuple[Result, ...] = field(default=())
    goal: float | None = None  # accuracy goal: FP, the top-1 to reach; quantized, the points it may lose to FP

    @property
    def bits(self) -> str:
        return "fp" if self.w_bits == FP_BITS else f"w{self.w_bits}a{self.a_bits}"

    @property
    def full_precision(self) -> bool:
        return self.w_bits == FP_BITS

    @property
    def short_name(self) -> str:
        return self.name.split("/", 1)[1]

    def config_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``UniQConfig`` (labels other than ``num_labels`` excluded)."""
        kwargs: dict[str, Any] = dict(
            arch=self.arch, w_bits=self.w_bits, a_bits=self.a_bits, num_labels=self.dataset.num_labels,
            num_channels=self.dataset.num_channels, image_size=self.dataset.image_size,
        )
        if self.weight_granularity is not None:
            kwargs["weight_granularity"] = self.weight_granularity
        if self.signed_inputs:
            kwargs["signed_inputs"] = True
        return kwargs

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "arch": self.arch, "dataset": self.dataset.hf_name,
            "eval_split": self.dataset.eval_split, "num_labels": self.dataset.num_labels,
            "image_size": self.dataset.image_size, "num_channels": self.dataset.num_channels,
            "bits": self.bits, "w_bits": self.w_bits, "a_bits": self.a_bits,
            "weight_granularity": self.weight_granularity, "signed_inputs": self.signed_inputs,
            "recipe": self.recipe.to_dict() if self.recipe else None,
            "paper_top1": self.paper_top1, "paper_source": self.paper_source,
            "paper_fp_top1": self.paper_fp_top1,
            "measured_top1": self.measured.top1 if self.measured else None,
            "measured": self.measured.to_dict() if self.measured else None,
        }


# ---------------------------------------------------------------------------------------------
# Tables

DATASETS: dict[str, DatasetInfo] = {
    d.key: d
    for d in (
        DatasetInfo("imagenet-1k", "ILSVRC/imagenet-1k", "ImageNet-1k", 1000, 224, 3, "validation", 1000),
        DatasetInfo("cifar100", "uoft-cs/cifar100", "CIFAR-100", 100, 32, 3, "test", 100),
        DatasetInfo("fashion-mnist", "zalando-datasets/fashion_mnist", "Fashion-MNIST", 10, 28, 1, "test", 100),
    )
}


@dataclass(frozen=True)
class _Family:
    """An architecture on a dataset, the bit-widths it is published at, and the paper's numbers."""

    arch: str
    dataset: str
    name_suffix: str  # "" for ImageNet, else "-<dataset>"
    recipes: str  # key of uniq_hub.catalog.recipe_table.RECIPES
    paper: dict[int, float]  # bits -> top-1 reported by the paper; FP_BITS: its FP baseline
    paper_source: str | None
    fp_init: str | None  # where multi-bit training starts; None: the family's own FP entry
    bits: tuple[int, ...] = (4, 3, 2, 1)
    weight_granularity: str | None = None
    signed_inputs: bool = False
    kd_bits: tuple[int, ...] = ()  # bit-widths distilled from the family's FP entry (chosen by measurement)
    binary_source: str | None = None  # where the 1-bit number is reported, when not paper_source
    name_arch: str | None = None  # the architecture's name in the zoo names, when not ``arch``
    progressive: bool = False  # each multi-bit entry starts from the next higher bit-width's (4 -> 3 -> 2)
    goals: dict[int, float] = field(default_factory=dict)  # bits -> ZooEntry.goal


# Tables 2 / 3 (ImageNet; the 1-bit numbers are the same in both) and Table 4 (CIFAR-100 ResNet-32).
FAMILIES: tuple[_Family, ...] = (
    _Family("resnet18", "imagenet-1k", "", "imagenet", {32: 71.57, 4: 71.5, 3: 70.5, 2: 67.8, 1: 60.5},
            "Table 2", "pytorchcv:preresnet18", binary_source="Tables 2 and 3"),
    _Family("resnet34", "imagenet-1k", "", "imagenet", {32: 75.11, 4: 75.0, 3: 74.2, 2: 72.1, 1: 65.8},
            "Table 2", "pytorchcv:preresnet34", binary_source="Tables 2 and 3"),
    _Family("mobilenetv2", "imagenet-1k", "", "imagenet", {32: 71.53, 4: 68.2, 3: 65.0, 2: 50.5, 1: 23.2},
            "Table 2", "pytorchcv:mobilenetv2_w1"),
    _Family("resnet32", "cifar100", "-cifar100", "cifar100", {32: 71.4, 4: 71.6, 3: 71.4, 2: 69.3, 1: 62.4},
            "Table 4", None, bits=(32, 4, 3, 2, 1), weight_granularity="layer"),
    # KD at 2 and 1 bits: +0.09 and +0.34 points over cross-entropy (benchmarks/results/kd-fashion-mnist.json).
    # Progressive bits (4 -> 3 -> 2, then 1 from 2 as the paper does), as APoT trains ResNet-20.
    _Family("resnet20", "fashion-mnist", "-fashion-mnist", "fashion-mnist", {}, None, None,
            bits=(32, 4, 3, 2, 1), kd_bits=(2, 1), progressive=True,
            goals={32: 95.0, 4: 0.2, 3: 0.4, 2: 1.0, 1: 3.0}),
    # The small-image MobileNetV2 (stride 1 at the stem). Signed inputs: with the paper's unsigned quantizer
    # on the linear bottlenecks, the ImageNet MobileNetV2 at 28x28 collapsed to a constant output (10.00% top-1
    # at w4a4, 8.93% at w2a2). Per-channel weight steps (the paper: per layer), for the depthwise convs.
    # KD at 1 bit: +3.84 validation points over cross-entropy on the released one-epoch stage (57.50 -> 61.34).
    _Family("mobilenetv2_small", "fashion-mnist", "-fashion-mnist", "fashion-mnist-mobilenetv2", {}, None, None,
            bits=(32, 4, 3, 2, 1), weight_granularity="channel", signed_inputs=True, progressive=True, kd_bits=(1,),
            name_arch="mobilenetv2", goals={32: 94.5, 4: 0.5, 3: 1.0, 2: 3.0, 1: 10.0}),
)


def _zoo_name(family: _Family, bits: int) -> str:
    tag = "fp" if bits == FP_BITS else f"w{bits}a{bits}"
    return f"{ORG}/{family.name_arch or family.arch}{family.name_suffix}-{tag}"


def _recipe(family: _Family, bits: int) -> Recipe:
    higher = min((b for b in family.bits if b > bits), default=FP_BITS)
    init_from = {
        "fp": None,
        "multi": _zoo_name(family, higher) if family.progressive else family.fp_init or _zoo_name(family, FP_BITS),
        "binary": _zoo_name(family, 2),
    }[recipe_kind(bits, bits)]
    teacher = _zoo_name(family, FP_BITS) if bits in family.kd_bits else None
    spec = recipe_spec(family.recipes, bits, bits, DATASETS[family.dataset].calib_batches)
    return Recipe(init_from=init_from, teacher=teacher, **spec)


def _build_entries() -> dict[str, ZooEntry]:
    entries: dict[str, ZooEntry] = {}
    for family in FAMILIES:
        for bits in family.bits:
            entry = ZooEntry(
                name=_zoo_name(family, bits), arch=family.arch, dataset=DATASETS[family.dataset],
                w_bits=bits, a_bits=bits, recipe=_recipe(family, bits),
                weight_granularity=None if bits == FP_BITS else family.weight_granularity,
                signed_inputs=bits != FP_BITS and family.signed_inputs,
                paper_top1=family.paper.get(bits),
                paper_source=(family.binary_source if bits == 1 else None) or family.paper_source
                if bits in family.paper else None,
                paper_fp_top1=family.paper.get(FP_BITS), goal=family.goals.get(bits),
            )
            entries[entry.name] = entry
    return entries


_ENTRIES: dict[str, ZooEntry] = _build_entries()


# ---------------------------------------------------------------------------------------------
# Measured results


def _results_dirs(results_dirs: Sequence[str | os.PathLike] | None) -> list[Path]:
    if results_dirs is not None:
        return [Path(d) for d in results_dirs]
    env = os.environ.get(RESULTS_ENV)
    if env:
        return [Path(d) for d in env.split(os.pathsep) if d]
    return [DEFAULT_RESULTS_DIR]


def parse_result(record: dict[str, Any], path: str | os.PathLike | None = None) -> Result:
    """Validate one results record (module docstring schema) into a :class:`Result`."""
    where = f"results file {path}" if path else "results record"
    missing = [k for k in ("model_id", "dataset", "split", "top1") if record.get(k) is None]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}; expected keys {list(RESULT_KEYS)}")
    for key in ("top1", "top5"):
        value = record.get(key)
        if value is None and key == "top5":
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 100.0:
            raise ValueError(f"{where}: {key!r} must be a percentage in [0, 100], got {value!r}")
    num = record.get("num_examples")
    if num is not None and (not isinstance(num, int) or isinstance(num, bool) or num <= 0):
        raise ValueError(f"{where}: 'num_examples' must be a positive int, got {num!r}")
    return Result(
        model_id=str(record["model_id"]), dataset=str(record["dataset"]), split=str(record["split"]),
        top1=float(record["top1"]), top5=None if record.get("top5") is None else float(record["top5"]),
        num_examples=num, command=record.get("command"), zoo_name=record.get("zoo_name"),
        path=None if path is None else str(path),
    )


def load_results(results_dirs: Sequence[str | os.PathLike] | None = None) -> list[Result]:
    """Every results record under the results directories (missing directories are skipped)."""
    results: list[Result] = []
    for directory in _results_dirs(results_dirs):
        for path in sorted(directory.rglob("*.json")) if directory.is_dir() else []:
            data = read_json(path, object_only=False)
            records = data if isinstance(data, list) else [data]
            for record in records:
                if isinstance(record, dict) and "model_id" in record and "top1" in record:
                    results.append(parse_result(record, path))
    return results


def _pick_measured(entry: ZooEntry, results: Iterable[Result]) -> tuple[Result | None, tuple[Result, ...]]:
    """The entry's records and the one reported: its eval split first, then the most examples,
    then the last file name (records are not ranked by accuracy)."""
    mine = tuple(r for r in results if (r.zoo_name or r.model_id) == entry.name)
    if not mine:
        return None, mine
    ranked = sorted(
        enumerate(mine),
        key=lambda ir: (ir[1].split == entry.dataset.eval_split, ir[1].num_examples or 0, ir[1].path or "", ir[0]),
    )
    return ranked[-1][1], mine


def _with_results(entry: ZooEntry, results: list[Result]) -> ZooEntry:
    measured, mine = _pick_measured(entry, results)
    return dataclasses.replace(entry, measured=measured, results=mine)


def _canonical(name: str) -> str:
    return name if "/" in name else f"{ORG}/{name}"


def get_entry(name: str, results_dirs: Sequence[str | os.PathLike] | None = None) -> ZooEntry:
    """The zoo entry ``name`` (``uniq/resnet18-w2a2`` or ``resnet18-w2a2``), measured result included."""
    key = _canonical(name)
    if key not in _ENTRIES:
        raise KeyError(f"unknown zoo entry {name!r}; `uniq-hub zoo` lists them, e.g. {list(_ENTRIES)[:3]}")
    return _with_results(_ENTRIES[key], load_results(results_dirs))


def list_entries(results_dirs: Sequence[str | os.PathLike] | None = None) -> list[ZooEntry]:
    """All zoo entries in table order, measured results included."""
    results = load_results(results_dirs)
    return [_with_results(e, results) for e in _ENTRIES.values()]


# ---------------------------------------------------------------------------------------------
# `uniq-hub zoo`


def _fmt(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def format_table(entries: Sequence[ZooEntry]) -> str:
    header = ("name", "arch", "dataset", "bits", "paper top-1", "measured top-1")
    rows = [header] + [
        (e.name, e.arch, e.dataset.hf_name, e.bits, _fmt(e.paper_top1), _fmt(e.measured.top1 if e.measured else None))
        for e in entries
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the entries (recipes included) as JSON")
    parser.add_argument("--arch", help="only this architecture (e.g. resnet18)")
    parser.add_argument("--dataset", help="only this dataset (HF name or key, e.g. ILSVRC/imagenet-1k, cifar100)")
    parser.add_argument("--results", action="append", metavar="DIR",
                        help=f"results JSON directory (repeatable; default ${RESULTS_ENV} or benchmarks/results)")


def run(args: argparse.Namespace) -> int:
    entries = list_entries(args.results)
    if args.arch:
        entries = [e for e in entries if e.arch == args.arch]
    if args.dataset:
        entries = [e for e in entries if args.dataset in (e.dataset.hf_name, e.dataset.key)]
    if not entries:
        raise SystemExit(f"no zoo entry matches arch={args.arch!r} dataset={args.dataset!r}")
    print(json.dumps([e.to_dict() for e in entries], indent=2) if args.json else format_table(entries))
    return 0
