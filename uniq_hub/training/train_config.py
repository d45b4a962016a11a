"""The training configuration: one dataclass, its command-line flags, and the merge
``defaults < zoo entry < --config file < command line < recipe for what is still unset``.

Every field is a flag (``lr`` -> ``--lr``, ``w_bits`` -> ``--w-bits``) and a key of the config
file (JSON or YAML, keys with ``_`` or ``-``). The quantization fields are
:class:`uniq_hub.QuantConfig`'s schema (names, help, checks), the model fields ``UniQConfig``'s
(``num_channels``, ``image_size``). Recipe fields left ``None`` are filled from the paper's recipe
for the data family and bits (:func:`uniq_hub.training.recipes.recipe_defaults`). The resolved config,
everything concrete, is written into the run directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..catalog.zoo import get_entry
from ..model.constants import FP_BITS, KD_TEMPERATURE, KD_WEIGHT, MAX_IMAGE_SIZE
from ..model.quantize import QUANT_FIELD_HELP, QUANT_FIELDS, QuantConfig, check_quant_fields, rename_legacy
from .data.splits import check_val_split
from .recipes import recipe_defaults, recipe_family

__all__ = ["TrainConfig", "add_config_arguments", "config_from_args", "resolve_config", "load_config_file"]


def _f(default: Any, help: str, **kw) -> Any:
    return field(default=default, metadata={"help": help, **kw})


def _q(name: str, default: Any = None) -> Any:
    """A quantization field: QuantConfig's help and (unless given) its default."""
    return _f(getattr(QuantConfig, name) if default is None else default, QUANT_FIELD_HELP[name])


@dataclass
class TrainConfig:
    """Everything a training run depends on (see ``uniq-hub train --help``)."""

    # --- model
    zoo: str | None = _f(None, "zoo entry to train, e.g. uniq/resnet18-w2a2 (sets arch, dataset, bits, recipe)")
    arch: str = _f("resnet20", "architecture (resnet18, resnet34, resnet20, resnet32, mobilenetv2)")
    w_bits: int = _q("w_bits", FP_BITS)
    a_bits: int = _q("a_bits", FP_BITS)
    first_bits: int = _q("first_bits")
    last_bits: int = _q("last_bits")
    method: str = _q("method")
    weight_granularity: str | None = _q("weight_granularity")
    step_init: str | float = _q("step_init")
    grad_scale: bool = _q("grad_scale")
    binary_fp_layers: bool = _q("binary_fp_layers")
    signed_inputs: bool = _q("signed_inputs")
    overrides: dict | None = _f(None, QUANT_FIELD_HELP["overrides"])
    init_from: str | None = _f(None, "run dir or model folder / Hub id to start from, or pytorchcv:NAME")
    # --- data
    dataset: str = _f("fashion_mnist", "HF dataset name, imagefolder dir, save_to_disk dir, or fashion_mnist")
    train_split: str = _f("train", "training split")
    eval_split: str = _f("test", "test split: evaluated once, on the selected model, for the card")
    val_split: float | None = _f(None, "examples held out of the training split to select the best epoch on: "
                                 "a count (5000), a fraction (0.1), or 0 to select on the test split (not "
                                 "recommended); default: 5000 or a tenth of the split, whichever is smaller")
    image_column: str | None = _f(None, "image column (default: detected)")
    label_column: str | None = _f(None, "label column (default: detected)")
    image_size: int | None = _f(None, "input size (default: 224 for images of 128 px and more, else native)")
    num_channels: int | None = _f(None, "input channels, 1 or 3 (default: from the first image's mode)")
    streaming: bool = _f(False, "stream the training split (ImageNet from the Hub)")
    num_workers: int = _f(2, "dataloader workers per process")
    max_train_samples: int | None = _f(None, "use only the first N training examples")
    max_eval_samples: int | None = _f(None, "use only the first N evaluation examples")
    # --- recipe (None: the paper's recipe for the family and bits)
    recipe: str | None = _f(None, "recipe family: imagenet, cifar100, fashion-mnist (default: from dataset/arch)")
    optimizer: str | None = _f(None, "sgd, adam or adamw")
    lr: float | None = _f(None, "peak learning rate (after warm-up)")
    momentum: float | None = _f(None, "SGD momentum")
    weight_decay: float | None = _f(None, "weight decay (never on step sizes)")
    epochs: int | None = _f(None, "training epochs")
    batch_size: int | None = _f(None, "global batch size (all processes, all accumulation steps)")
    eval_batch_size: int | None = _f(None, "evaluation batch size per process (default: batch size)")
    warmup_epochs: float | None = _f(None, "warm-up epochs")
    warmup_lr: float | None = _f(None, "constant warm-up lr (unset: linear ramp to lr)")
    min_lr: float = _f(0.0, "final lr of the cosine schedule")
    step_lr_scale: float = _f(1.0, "learning rate of the quantizer step sizes as a multiple of lr (the paper: 1)")
    label_smoothing: float | None = _f(None, "cross-entropy label smoothing (default: the recipe's, else 0)")
    random_erasing: float | None = _f(None, "probability of timm's RandomErasing on training images "
                                      "(default: the recipe's, else 0)")
    teacher: str | None = _f(None, "knowledge distillation: teacher model (folder, run dir or Hub id; same labels)")
    teacher_labels: str = _f("same", "how the teacher's classes map to the dataset's: 'same' (its id2label must equal "
                                     "them, names and order) or 'by-name' (its logits reordered by class name)")
    kd_temperature: float = _f(KD_TEMPERATURE, "distillation temperature T (the KL term is scaled by T^2)")
    kd_weight: float = _f(KD_WEIGHT, "distillation weight w: loss = (1 - w) CE + w T^2 KL(teacher || student)")
    calib_batches: int | None = _f(None, "batches for the activation step-size init (0: none)")
    grad_accum: int = _f(1, "gradient accumulation steps")
    max_steps: int | None = _f(None, "stop after this many optimizer steps")
    # --- run
    output_dir: str | None = _f(None, "run directory (default: runs/<run name>)")
    run_name: str | None = _f(None, "run name (default: zoo name or arch-bits)")
    seed: int = _f(0, "random seed")
    mixed_precision: str = _f("no", "no, bf16 or fp16")
    compile: bool = _f(False, "torch.compile the model")
    compile_kernels: bool = _f(True, "torch.compile the quantizer kernels (CPU training: the same values, fewer "
                               "passes; inference is always eager); the environment variable UNIQ_COMPILE=0/1 "
                               "overrides")
    cpu: bool = _f(False, "train on the CPU even when a GPU is there")
    save_every: int = _f(500, "checkpoint every N optimizer steps (0: only at epoch ends)")
    keep_checkpoints: int = _f(2, "checkpoints kept in <run>/checkpoints")
    eval_every: int = _f(1, "evaluate every N epochs (the last epoch always)")
    log_every: int = _f(20, "log training metrics every N optimizer steps")
    dynamics_every: int = _f(50, "log quantizer dynamics every N optimizer steps (0: off)")
    log_with: str = _f("tensorboard", "Accelerate trackers, comma separated (tensorboard, wandb, ...; none)")
    progress: bool = _f(True, "progress bars (main process only)")
    export: bool = _f(True, "export the best model in the release format to <run>/export")
    resume: str | None = _f(None, "resume: 'latest' (or the flag alone) or a checkpoint directory")
    allow_changes: bool = _f(False, "with --resume: accept options that differ from the run's recorded ones where "
                                    "changing them is safe (epochs, max_steps, logging, checkpointing); recorded in "
                                    "the run's history")
    overwrite: bool = _f(False, "delete an existing run in the output directory and start over (else refused "
                               "without --resume)")

    @property
    def quantized(self) -> bool:
        return not (self.w_bits == FP_BITS and self.a_bits == FP_BITS)

    @property
    def run_dir(self) -> Path:
        if self.output_dir is None:
            raise ValueError("TrainConfig.output_dir is unset; call resolve_config() first")
        return Path(self.output_dir)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def quant_options(self) -> dict[str, Any]:
        """The quantization fields, by the schema's names (``UniQConfig(**...)``, ``QuantConfig(**...)``)."""
        return {name: getattr(self, name) for name in QUANT_FIELDS}


_FIELDS = {f.name: f for f in fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)
_RECIPE_FIELDS = ("optimizer", "lr", "momentum", "weight_decay", "epochs", "batch_size", "warmup_epochs",
                  "warmup_lr", "calib_batches", "label_smoothing", "random_erasing", "max_steps")


def _base_type(name: str) -> type:
    hint = _HINTS[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _coerce(name: str, value: Any, where: str) -> Any:
    """``value`` as the field's type; ``None`` only where the field allows it."""
    if name not in _FIELDS:
        raise ValueError(f"{where}: unknown training option {name!r}; known options: {sorted(_FIELDS)}")
    kind = _base_type(name)
    if kind is dict and isinstance(value, str):
        return _parse_overrides(value, where)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and kind is not str):
        if type(None) not in typing.get_args(_HINTS[name]):
            raise ValueError(f"{where}: option {name!r} may not be null")
        return None
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        if kind in (int, float) and isinstance(value, bool):  # {"bits": true} is not 1 bit
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: option {name!r} expects {kind.__name__}, got {value!r}") from None


def _parse_overrides(text: str, where: str) -> dict[str, list[int]]:
    """``"layer1.*=4,4;fc=8,8"`` -> ``{"layer1.*": [4, 4], "fc": [8, 8]}`` (layer names as ``layer_bits`` shows
    them, without a ``model.`` prefix; a pattern that matches no layer is refused when the model is built)."""
    out: dict[str, list[int]] = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        pattern, sep, bits = item.partition("=")
        try:
            pair = [int(b) for b in bits.split(",")]
        except ValueError:
            pair = []
        if not sep or not pattern or len(pair) != 2:
            raise ValueError(f"{where}: option 'overrides' expects 'PATTERN=W,A;...' (e.g. 'stem.*=8,8'), "
                             f"got {item!r}")
        out[pattern.strip()] = pair
    return out


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per field (default: unset, so the merge knows what the command line gave),
    plus ``--config FILE`` and ``--bits N`` (both sides)."""
    parser.add_argument("--config", metavar="FILE", help="JSON or YAML file of training options")
    parser.add_argument("--bits", type=int, help="weight and activation bits (32: full precision)")
    groups = {}
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = _base_type(f.name)
        help_text = f.metadata["help"] + (f" (default: {f.default})" if f.default is not None else "")
        group = groups.setdefault(_group_of(f.name), parser.add_argument_group(_group_of(f.name)))
        if f.name == "resume":
            group.add_argument(flag, nargs="?", const="latest", default=argparse.SUPPRESS, help=f.metadata["help"])
        elif kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        else:
            group.add_argument(flag, type=str, default=argparse.SUPPRESS, metavar=kind.__name__.upper(),
                               help=help_text)


def _group_of(name: str) -> str:
    order = [f.name for f in fields(TrainConfig)]
    for title, first in (("run", "output_dir"), ("recipe", "recipe"), ("data", "dataset"), ("model", "zoo")):
        if order.index(name) >= order.index(first):
            return title
    return "model"


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Options from a JSON or YAML file (a mapping; ``-`` in keys read as ``_``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"config file {path} is not valid JSON ({err}); YAML files need a .yaml suffix") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of options, got {type(data).__name__}")
    return rename_legacy({str(k).replace("-", "_"): v for k, v in data.items()}, f"config file {path}")


def _expand_bits(options: dict[str, Any], where: str) -> dict[str, Any]:
    options = dict(options)
    if options.get("bits") is not None:
        bits = _coerce("w_bits", options.pop("bits"), where)
        options.setdefault("w_bits", bits)
        options.setdefault("a_bits", bits)
    options.pop("bits", None)
    return {k: _coerce(k, v, where) for k, v in options.items()}


def _zoo_options(name: str) -> dict[str, Any]:
    entry = get_entry(name)
    r = entry.recipe
    options = dict(
        zoo=entry.name, arch=entry.arch, dataset=entry.dataset.hf_name, eval_split=entry.dataset.eval_split,
        w_bits=entry.w_bits, a_bits=entry.a_bits, weight_granularity=entry.weight_granularity,
        signed_inputs=entry.signed_inputs,
        optimizer=r.optimizer, lr=r.lr, epochs=r.epochs, batch_size=r.batch_size, weight_decay=r.weight_decay,
        warmup_epochs=r.warmup_epochs, warmup_lr=r.warmup_lr, calib_batches=r.calib_batches,
        label_smoothing=r.label_smoothing, random_erasing=r.random_erasing, max_steps=r.max_steps,
        init_from=r.init_from, run_name=entry.short_name,
    )
    if r.momentum is not None:
        options["momentum"] = r.momentum
    if r.teacher is not None:
        options["teacher"] = r.teacher
    if entry.dataset.image_size >= 128:
        options["image_size"] = entry.dataset.image_size
    return options


def resolve_config(
    cli: dict[str, Any] | None = None, config_file: str | Path | None = None, **overrides: Any
) -> TrainConfig:
    """Merge ``defaults < zoo entry < config file < cli < overrides`` and fill the recipe.

    ``cli`` and ``overrides`` use field names (``bits`` sets both sides).
    """
    file_opts = _expand_bits(load_config_file(config_file), f"config file {config_file}") if config_file else {}
    cli_opts = _expand_bits(cli or {}, "command line")
    over = _expand_bits(overrides, "overrides")
    zoo = over.get("zoo") or cli_opts.get("zoo") or file_opts.get("zoo")
    merged: dict[str, Any] = {}
    if zoo:
        merged.update(_expand_bits(_zoo_options(zoo), f"zoo entry {zoo}"))
    for layer in (file_opts, cli_opts, over):
        merged.update(layer)
    cfg = TrainConfig(**merged)
    return _fill_recipe(cfg)


def _fill_recipe(cfg: TrainConfig) -> TrainConfig:
    for name, value in check_quant_fields(cfg.quant_options(), "option '{}'").items():
        setattr(cfg, name, value)
    if (cfg.w_bits == FP_BITS) != (cfg.a_bits == FP_BITS):
        raise ValueError(f"w_bits={cfg.w_bits}, a_bits={cfg.a_bits}: full precision (32) applies to both sides")
    cfg.recipe = cfg.recipe or recipe_family(cfg.dataset, cfg.arch)
    defaults = recipe_defaults(cfg.recipe, cfg.w_bits, cfg.a_bits)
    for name in _RECIPE_FIELDS:
        if getattr(cfg, name) is None:
            setattr(cfg, name, defaults[name])
    if cfg.eval_batch_size is None:
        cfg.eval_batch_size = cfg.batch_size
    if cfg.run_name is None:
        tag = "fp" if not cfg.quantized else f"w{cfg.w_bits}a{cfg.a_bits}"
        cfg.run_name = f"{cfg.arch}-{tag}"
    if cfg.output_dir is None:
        cfg.output_dir = str(Path("runs") / cfg.run_name)
    _validate(cfg)
    return cfg


_CHOICES = {"mixed_precision": ("no", "bf16", "fp16"), "teacher_labels": ("same", "by-name")}


def _validate(cfg: TrainConfig) -> None:
    for name, choices in _CHOICES.items():
        if getattr(cfg, name) not in choices:
            raise ValueError(f"option {name!r} must be one of {choices}, got {getattr(cfg, name)!r}")
    for name in ("epochs", "batch_size", "grad_accum", "eval_every", "log_every"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"option {name!r} must be >= 1, got {getattr(cfg, name)}")
    for name in ("save_every", "dynamics_every", "calib_batches", "keep_checkpoints"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"option {name!r} must be >= 0, got {getattr(cfg, name)}")
    if cfg.quantized and cfg.calib_batches < 1:
        raise ValueError("option 'calib_batches' must be >= 1 for a quantized run: the activation step sizes are "
                         "initialised from data")
    if cfg.val_split is not None:
        check_val_split(cfg.val_split)
    if not 0.0 <= cfg.random_erasing <= 1.0:
        raise ValueError(f"option 'random_erasing' is a probability in [0, 1], got {cfg.random_erasing}")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise ValueError(f"option 'label_smoothing' must be in [0, 1), got {cfg.label_smoothing}")
    for name in ("lr", "momentum", "weight_decay", "warmup_lr", "min_lr"):
        value = getattr(cfg, name)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"option {name!r} must be a finite number >= 0, got {value}")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise ValueError(f"option 'max_steps' must be >= 1 (or unset), got {cfg.max_steps}")
    if not (math.isfinite(cfg.step_lr_scale) and cfg.step_lr_scale > 0):
        raise ValueError(f"option 'step_lr_scale' must be a finite number > 0, got {cfg.step_lr_scale}")
    if not (math.isfinite(cfg.warmup_epochs) and cfg.warmup_epochs >= 0):
        raise ValueError(f"option 'warmup_epochs' must be a finite number >= 0, got {cfg.warmup_epochs}")
    if cfg.image_size is not None and not 1 <= cfg.image_size <= MAX_IMAGE_SIZE:
        raise ValueError(f"option 'image_size' must be in 1..{MAX_IMAGE_SIZE} pixels, got {cfg.image_size}")
    if cfg.allow_changes and not cfg.resume:
        raise ValueError("option 'allow_changes' applies to --resume only")
    if cfg.resume and cfg.overwrite:
        raise ValueError("options 'resume' and 'overwrite' exclude each other: continue the run or replace it")
    if cfg.num_channels not in (None, 1, 3):
        raise ValueError(f"option 'num_channels' must be 1 or 3, got {cfg.num_channels}")
    if not 0.0 <= cfg.kd_weight <= 1.0:
        raise ValueError(f"option 'kd_weight' must be in [0, 1], got {cfg.kd_weight}")
    if not cfg.kd_temperature > 0:
        raise ValueError(f"option 'kd_temperature' must be > 0, got {cfg.kd_temperature}")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The resolved config of parsed ``uniq-hub train`` arguments."""
    cli = {k: v for k, v in vars(args).items() if k in _FIELDS}
    if getattr(args, "bits", None) is not None:
        cli["bits"] = args.bits
    return resolve_config(cli, getattr(args, "config", None))
