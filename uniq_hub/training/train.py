"""``uniq-hub train`` / ``accelerate launch -m uniq_hub.training.train``: train a UniQ model with Accelerate.

The orchestration only; each step is another module's job::

    train_config  resolve the options (zoo < --config file < command line < paper recipe)
    data          load the splits, transforms, seeded loaders
    modeling_uniq build UniQForImageClassification; --init-from (our folders, pytorchcv via convert)
    calibrate     step sizes from the first N batches (quantized runs)
    recipes       optimizer (no decay on steps) + per-step warm-up / cosine schedule
    checkpoint    atomic Accelerate state every N steps and each epoch; --resume mid-epoch
    dynamics      per-quantizer step / std / SQNR every K steps (Figure 4)
    export        best model in the release format + card -> <run>/export (ready to publish)

Run directory: ``train_config.json`` (resolved), ``log.jsonl`` (metrics), ``dynamics.jsonl``,
``tensorboard/``, ``checkpoints/step-*``, ``best/`` (latent weights, for ``--init-from``),
``export/`` (release folder with ``eval_results.json`` and ``README.md``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import ProjectConfiguration, TorchDynamoPlugin, set_seed
from torch import nn
from tqdm.auto import tqdm

from ..hub.release_folder import ExportIncomplete, card_entry, export_model, load_trained, save_latent
from ..model.atomic import write_json_atomic
from ..model.configuration_uniq import UniQConfig
from ..model.constants import BEST_DIR, EXPORT_DIR, SMALL_IMAGE, SUMMARY_FILE, TRAIN_CONFIG_FILE
from ..model.modeling_uniq import UniQForImageClassification
from ..model.quantize import QuantConfig, layer_bits
from ..model.registry import create_model
from . import data
from .calibrate import calibrate
from .checkpoint import (
    Checkpointer,
    CheckpointError,
    CheckpointWriteError,
    RunDirectoryError,
    TrainerState,
    check_run_dir,
    clear_run_dir,
)
from .convert import load_pytorchcv
from .distill import distillation_loss, load_teacher, teacher_logits
from .dynamics import DynamicsRecorder
from .evaluate import evaluate_model
from .recipes import build_optimizer, build_scheduler
from .run_record import ResumeError, check_resume, check_same_data, record_run
from .train_config import TrainConfig, add_config_arguments, config_from_args

logger = logging.getLogger("uniq_hub.training.train")

__all__ = ["DataBundle", "NonFiniteLossError", "Trainer", "load_data", "build_model", "load_init_weights", "train",
           "add_arguments", "run", "main"]

VAL_SPLIT_SEED = 0  # the validation hold-out does not follow --seed: a zoo chain's stages share it
_ONE_CHANNEL_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class DataBundle:
    """The two splits, their transforms and what the model config needs to know about them."""

    train: Any
    eval: Any
    train_transform: Any
    eval_transform: Any
    id2label: dict[int, str]
    num_channels: int
    image_size: int
    mean: list[float]
    std: list[float]
    num_train: int
    processor: Any = None  # the UniQImageProcessor both transforms are built from
    val: Any = None  # held out of the training split for model selection (None: select on ``eval``)
    selection: dict[str, Any] | None = None  # what ``val`` is: split, size, seed, description

    @property
    def num_labels(self) -> int:
        return len(self.id2label)


def _first_image(ds: Any):
    indexable = hasattr(ds, "__getitem__") and not isinstance(ds, torch.utils.data.IterableDataset)
    row = ds[0] if indexable else next(iter(ds))
    return row["image"]


def _num_examples(ds: Any, cfg: TrainConfig) -> int:
    try:
        return len(ds)
    except TypeError:  # streaming: --max-train-samples, else the split size from the metadata
        if cfg.max_train_samples:
            return cfg.max_train_samples
        splits = getattr(getattr(ds, "info", None), "splits", None) or {}
        split = splits.get(cfg.train_split)
        if split is None or not split.num_examples:
            raise ValueError(f"the streamed split {cfg.dataset}/{cfg.train_split} does not say how many examples it "
                             "has; pass --max-train-samples N") from None
        return split.num_examples


def load_data(cfg: TrainConfig) -> DataBundle:
    """Both splits through :mod:`uniq_hub.training.data`; the image processor the model will ship (ImageNet-style
    from 128 px up, CIFAR-style below; known datasets' own statistics) and the transforms built from it.
    Splits a classifier cannot be trained on (empty, one class) are refused."""
    common = dict(image_column=cfg.image_column, label_column=cfg.label_column)
    train = data.load_image_dataset(cfg.dataset, cfg.train_split, streaming=cfg.streaming,
                                    limit=cfg.max_train_samples, **common)
    evaluation = data.load_image_dataset(cfg.dataset, cfg.eval_split, limit=cfg.max_eval_samples, **common)
    names = data.class_names(train) or data.class_names(evaluation)
    if not names:
        raise ValueError(f"dataset {cfg.dataset!r}: the label column has no class names (a ClassLabel feature)")
    num_train = _num_examples(train, cfg)
    data.check_training_split(train, names, cfg.dataset, cfg.train_split, num_train)
    train, val, selection = _hold_out(train, num_train, cfg)
    num_train -= 0 if val is None else len(val)
    if len(evaluation) == 0:
        raise ValueError(f"dataset {cfg.dataset!r} split {cfg.eval_split!r} has no examples to evaluate on")
    image = _first_image(train)
    num_channels = cfg.num_channels or (1 if getattr(image, "mode", "RGB") in _ONE_CHANNEL_MODES else 3)
    native = max(getattr(image, "size", (224, 224)))
    image_size = cfg.image_size or (224 if native >= SMALL_IMAGE else native)
    try:
        mean, std = data.normalization_stats(cfg.dataset)
    except KeyError:
        mean, std = data.NORMALIZATION["imagenet"]
    mean, std = data.per_channel(mean, num_channels), data.per_channel(std, num_channels)
    processor = data.processor_for(num_channels=num_channels, image_size=image_size, mean=mean, std=std)
    style = "imagenet" if image_size >= SMALL_IMAGE else "small"
    return DataBundle(
        train=train, eval=evaluation,
        train_transform=data.train_transform(processor, style, cfg.random_erasing),
        eval_transform=data.eval_transform(processor),
        id2label=dict(enumerate(names)), num_channels=num_channels, image_size=image_size, mean=mean, std=std,
        num_train=num_train, processor=processor, val=val, selection=selection,
    )


def _hold_out(train: Any, num_train: int, cfg: TrainConfig) -> tuple[Any, Any, dict[str, Any]]:
    """``(train, val, selection)``: the validation examples carved out of the training split
    (:func:`uniq_hub.training.data.stratified_split`, seed :data:`VAL_SPLIT_SEED` whatever the run's seed, so every
    stage of a zoo chain holds out the same images), or ``val`` None when ``val_split`` is 0."""
    if cfg.val_split == 0:
        return train, None, {"split": cfg.eval_split, "description": f"the `{cfg.eval_split}` split (no "
                             "validation split held out: the test split chose the model)"}
    if cfg.streaming:
        raise ValueError("a streamed training split cannot hold out a validation split: load it map-style, or "
                         "pass --val-split 0 to select the model on the evaluation split")
    size = data.validation_size(cfg.val_split, num_train)
    if size == 0:
        raise ValueError(f"dataset {cfg.dataset!r} split {cfg.train_split!r} has {num_train} examples: too few to "
                         "hold out a validation split (pass --val-split N, or 0 to select on the evaluation split)")
    keep, held = data.stratified_split(list(train["label"]), size, VAL_SPLIT_SEED)
    selection = {
        "split": f"{cfg.train_split}[held-out {size}]", "num_examples": size, "seed": VAL_SPLIT_SEED,
        "description": f"{size} images held out of the `{cfg.train_split}` split (class-stratified, seed "
                       f"{VAL_SPLIT_SEED}; not trained on)",
    }
    return train.select(keep), train.select(held), selection


# ---------------------------------------------------------------------------------------------
# Model


def build_model(cfg: TrainConfig, bundle: DataBundle):
    """``UniQForImageClassification`` for the run (quantized per the config, weights not loaded)."""
    config = UniQConfig(
        arch=cfg.arch, **cfg.quant_options(),
        num_labels=bundle.num_labels, id2label=bundle.id2label, num_channels=bundle.num_channels,
        image_size=bundle.image_size, image_mean=bundle.mean, image_std=bundle.std,
    )
    return UniQForImageClassification(config)


def _float_weights_pytorchcv(name: str, model) -> dict[str, torch.Tensor]:
    source = load_pytorchcv(name)
    return {f"model.{k}": v for k, v in source.state_dict().items()}


def _float_weights_ours(source: str, model) -> dict[str, torch.Tensor]:
    return dict(load_trained(source).state_dict())


# ``--init-from`` schemes: "scheme:name" -> float state dict with our keys
INIT_SOURCES = {"pytorchcv": _float_weights_pytorchcv}


def load_init_weights(model, source: str) -> list[str]:
    """Load the network weights (not the step sizes) of ``source`` into ``model``.

    ``source``: ``pytorchcv:NAME``, a run directory (its ``best/``), a saved model folder or a Hub id.
    Step sizes are left out (a 2-bit step means nothing at 1 bit); calibration sets them.
    A classifier for other classes (its shapes differ) is left out too: ``model`` keeps its new one.
    Returns the keys loaded. Any other missing or mismatching tensor is an error.
    """
    scheme, sep, name = source.partition(":")
    if sep and scheme in INIT_SOURCES:
        weights = INIT_SOURCES[scheme](name, model)
    else:
        weights = _float_weights_ours(source, model)
    weights = {k: v for k, v in weights.items() if "_quantizer." not in k}
    own = model.state_dict()
    needed = {k for k in own if "_quantizer." not in k}
    head = f"model.{model.model.last_layer}."
    if any(k.startswith(head) and k in own and v.shape != own[k].shape for k, v in weights.items()):
        logger.info("--init-from %s: other classes; the classifier (%s*) is new, everything else is loaded",
                    source, head)
        weights = {k: v for k, v in weights.items() if not k.startswith(head)}
        needed = {k for k in needed if not k.startswith(head)}
    missing, unexpected = sorted(needed - set(weights)), sorted(set(weights) - set(own))
    shapes = [f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}" for k in sorted(needed & set(weights))
              if weights[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(f"--init-from {source}: does not fit {model.config.arch} with {model.config.num_labels} "
                         f"labels: missing {missing[:3]}, unexpected {unexpected[:3]}, shape mismatch {shapes[:3]}")
    model.load_state_dict(weights, strict=False)
    return sorted(weights)


# ---------------------------------------------------------------------------------------------
# Logging


class RunLog:
    """Metrics to ``<run>/<name>.jsonl`` and to Accelerate's trackers, from the main process only."""

    def __init__(self, accelerator, run_dir: Path) -> None:
        self.accelerator = accelerator
        self.run_dir = run_dir

    def log(self, values: dict[str, Any], step: int, file: str = "log") -> None:
        if not self.accelerator.is_main_process:
            return
        with open(self.run_dir / f"{file}.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        numeric = {k: v for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        self.accelerator.log(numeric, step=step)


# ---------------------------------------------------------------------------------------------
# Training


def _make_accelerator(cfg: TrainConfig):
    trackers = [t for t in cfg.log_with.split(",") if t and t != "none"]
    return Accelerator(
        mixed_precision=cfg.mixed_precision, cpu=cfg.cpu, gradient_accumulation_steps=cfg.grad_accum,
        log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=str(cfg.run_dir), logging_dir=str(cfg.run_dir / "tensorboard")),
        dynamo_plugin=TorchDynamoPlugin(backend="inductor") if cfg.compile else None,
    )


def _per_process_batch(cfg: TrainConfig, num_processes: int) -> int:
    parts = num_processes * cfg.grad_accum
    if cfg.batch_size % parts:
        raise ValueError(f"batch_size {cfg.batch_size} (global) is not divisible by processes x grad_accum = {parts}")
    return cfg.batch_size // parts


def _tracker_config(cfg: TrainConfig) -> dict[str, Any]:
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in cfg.to_dict().items()}


def _calibrate(model, loader, cfg: TrainConfig, device) -> int:
    batches = ((x.to(device), y) for x, y in loader)
    return calibrate(model.model, batches, cfg.calib_batches)


def _eval_record(cfg: TrainConfig, metrics: dict[str, Any], export_dir: Path) -> dict[str, Any]:
    return {
        "model_id": cfg.zoo or cfg.run_name, "dataset": cfg.dataset, "split": cfg.eval_split,
        "top1": metrics["top1"], "top5": metrics["top5"], "num_examples": metrics["num_examples"],
        "command": "uniq-hub evaluate "
                   + shlex.join([str(export_dir), "--dataset", cfg.dataset, "--split", cfg.eval_split]),
    }


def _check_overrides(cfg: TrainConfig) -> None:
    """Per-layer overrides must each match a layer of the architecture (refused before anything is written)."""
    if cfg.overrides:
        net = create_model(cfg.arch, num_classes=2, num_channels=cfg.num_channels or 3)
        layer_bits(net, QuantConfig(**cfg.quant_options()))


def _data_record(bundle: DataBundle) -> dict[str, Any]:
    """What a resumed run must find again: the split sizes and the classes."""
    return {"num_train": bundle.num_train, "num_eval": len(bundle.eval),
            "num_val": 0 if bundle.val is None else len(bundle.val),
            "labels": [bundle.id2label[i] for i in range(bundle.num_labels)]}


class Trainer:
    """One training run: set up by the constructor (data, model, init or resume, optimizer,
    schedule), run by :meth:`fit`. Every process of a launch builds one."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.accelerator = acc = _make_accelerator(cfg)
        check_run_dir(cfg.run_dir, resume=bool(cfg.resume), overwrite=cfg.overwrite)  # every process, before any write
        _check_overrides(cfg)
        changes = check_resume(cfg) if cfg.resume else None  # a resume with other options is refused, writing nothing
        acc.wait_for_everyone()
        if acc.is_main_process:
            if cfg.overwrite:
                clear_run_dir(cfg.run_dir)
            cfg.run_dir.mkdir(parents=True, exist_ok=True)
            if not cfg.resume:  # a resume records its options once it is set up (run_record.record_run)
                write_json_atomic(cfg.run_dir / TRAIN_CONFIG_FILE, cfg.to_dict())
        set_seed(cfg.seed)
        bundle = load_data(cfg)
        run_data = _data_record(bundle)
        if cfg.resume:
            check_same_data(cfg.run_dir, run_data)
        data.check_batch_fits(bundle.num_train, cfg.batch_size, cfg.dataset, cfg.train_split)
        per_batch = _per_process_batch(cfg, acc.num_processes)
        train_loader = data.make_dataloader(bundle.train, bundle.train_transform, per_batch, shuffle=True,
                                            num_workers=cfg.num_workers, seed=cfg.seed, drop_last=True,
                                            source=cfg.dataset)
        eval_loader = data.make_dataloader(bundle.eval, bundle.eval_transform, cfg.eval_batch_size, shuffle=False,
                                           num_workers=cfg.num_workers, source=cfg.dataset)
        loaders = [train_loader, eval_loader]
        if bundle.val is not None:
            loaders.append(data.make_dataloader(bundle.val, bundle.eval_transform, cfg.eval_batch_size, shuffle=False,
                                                num_workers=cfg.num_workers, source=cfg.dataset))
        self.selection = bundle.selection
        self.shuffle_generator = train_loader.generator  # reseeded per epoch: order = f(seed, epoch)
        self.train_collate = train_loader.collate_fn  # its augmentation seeds too (see _train_epoch)
        self.train_dataset = train_loader.dataset  # streaming: its shuffle buffer follows set_epoch

        model = build_model(cfg, bundle)
        self.checkpointer = Checkpointer(acc, cfg.run_dir, keep=cfg.keep_checkpoints)
        resume_from = self.checkpointer.resolve(cfg.resume) if cfg.resume else None
        if resume_from is None:
            if cfg.init_from:
                load_init_weights(model, cfg.init_from)
            if cfg.quantized:
                model.to(acc.device)
                self.shuffle_generator.manual_seed(cfg.seed)
                used = _calibrate(model, train_loader, cfg, acc.device)
                logger.info("calibrated the step sizes on %d batches", used)
        optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
        self.dynamics = DynamicsRecorder(model.model) if cfg.quantized and cfg.dynamics_every else None
        self.model, self.optimizer, *prepared = acc.prepare(model, optimizer, *loaders)
        self.train_loader, self.eval_loader = prepared[:2]
        self.val_loader = prepared[-1]  # the held-out validation split, else the eval split selects
        try:
            self.batches_per_epoch = len(self.train_loader)
        except TypeError:  # streaming: what the split size gives each process
            self.batches_per_epoch = bundle.num_train // (per_batch * acc.num_processes)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / cfg.grad_accum)
        self.total_steps = min(cfg.epochs * self.steps_per_epoch, cfg.max_steps or math.inf)
        warmup_steps = round(cfg.warmup_epochs * self.steps_per_epoch)
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, warmup_steps, cfg.warmup_lr, cfg.min_lr)
        self.state = self.checkpointer.load(resume_from, self.scheduler) if resume_from else TrainerState()
        if resume_from:
            acc.print(f"resumed from {resume_from}: epoch {self.state.epoch}, step {self.state.global_step}")
        self.teacher = load_teacher(cfg.teacher, bundle.id2label, cfg.teacher_labels).to(acc.device) \
            if cfg.teacher else None
        if acc.is_main_process:  # the run is set up: its options and this invocation are recorded
            record_run(cfg, run_data, changes)
        acc.init_trackers(cfg.run_name, config=_tracker_config(cfg))
        self.log = RunLog(acc, cfg.run_dir)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self._reset_window()

    @property
    def done(self) -> bool:
        return self.state.global_step >= self.total_steps

    @property
    def epoch_progress(self) -> float:
        return self.state.epoch + self.state.step_in_epoch / self.steps_per_epoch

    def fit(self) -> dict[str, Any]:
        cfg, state, acc = self.cfg, self.state, self.accelerator
        metrics: dict[str, Any] = {}
        for epoch in range(state.epoch, cfg.epochs):
            if self.done:
                break
            self._train_epoch(epoch)
            epoch_done = state.step_in_epoch >= self.steps_per_epoch
            if epoch_done:
                state.epoch, state.step_in_epoch = epoch + 1, 0
            if self.done or (epoch_done and (state.epoch % cfg.eval_every == 0 or state.epoch == cfg.epochs)):
                metrics = self.evaluate()
            self.checkpointer.save(state, self.scheduler)
        if not metrics and state.best_metric is None:  # nothing left to train, nothing evaluated yet
            metrics = self.evaluate()
        test = self.test_selected()
        acc.end_training()
        summary = {
            "run_dir": str(cfg.run_dir), "export_dir": str(cfg.run_dir / EXPORT_DIR) if cfg.export else None,
            "best_top1": state.best_metric, "best_step": state.best_step, "last": metrics,
            "selection": self._selection_record(), "test": test,
            "steps": state.global_step, "epochs": state.epoch,
        }
        if acc.is_main_process:
            write_json_atomic(cfg.run_dir / SUMMARY_FILE, summary)
        return summary

    def _train_epoch(self, epoch: int) -> None:
        """Optimizer steps of ``epoch`` from ``state.step_in_epoch`` on (mid-epoch after a resume)."""
        cfg, state, acc = self.cfg, self.state, self.accelerator
        self.shuffle_generator.manual_seed(cfg.seed * 100_003 + epoch)
        if hasattr(self.train_dataset, "set_epoch"):
            self.train_dataset.set_epoch(epoch)
        skip = state.step_in_epoch * cfg.grad_accum
        self.train_collate.start_epoch(cfg.seed * 100_003 + epoch, skip)  # a resumed epoch augments as the original
        loader = acc.skip_first_batches(self.train_loader, skip) if skip else self.train_loader
        batches = itertools.islice(loader, self.batches_per_epoch - skip)
        bar = tqdm(batches, total=self.batches_per_epoch - skip, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   dynamic_ncols=True, disable=not (cfg.progress and acc.is_local_main_process))
        self.model.train()
        for inputs, labels in bar:
            with acc.accumulate(self.model):
                loss = self._loss(self.model(inputs).logits.float(), inputs, labels)
                acc.backward(loss)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            self._window_loss += loss.detach()
            self._window_batches += 1
            self._window_images += inputs.shape[0] * acc.num_processes
            if acc.sync_gradients:
                self.scheduler.step()
                state.global_step += 1
                state.step_in_epoch += 1
                self._after_step(inputs, bar)
                if self.done:
                    break
        bar.close()
        self._check_finite()  # before the epoch end's evaluation, export and checkpoint

    def _loss(self, logits: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy, or the distillation loss when the run has a teacher."""
        if self.teacher is None:
            return self.loss_fn(logits, labels)
        cfg = self.cfg
        return distillation_loss(logits, teacher_logits(self.teacher, inputs), labels, cfg.kd_temperature,
                                 cfg.kd_weight, cfg.label_smoothing)

    def _check_finite(self) -> None:
        """Stop on a non-finite loss (all processes agree) before anything is logged, saved or exported."""
        total = self.accelerator.reduce(self._window_loss.detach().clone(), "sum")
        if not torch.isfinite(total):
            state = self.state
            raise NonFiniteLossError(
                f"the training loss became {total.item()} by step {state.global_step} "
                f"(epoch {self.epoch_progress:.2f}) of {self.cfg.run_dir}: training stopped and nothing was "
                "exported; the checkpoints hold the last steps before it. Lower --lr or check the data for NaN / "
                "infinite pixels.")

    def _after_step(self, inputs, bar) -> None:
        cfg, state, acc = self.cfg, self.state, self.accelerator
        if state.global_step % cfg.log_every == 0 or (cfg.save_every and state.global_step % cfg.save_every == 0):
            self._check_finite()
        if self.dynamics is not None and state.global_step % cfg.dynamics_every == 0 and acc.is_main_process:
            stats = self.dynamics.probe(inputs, acc.autocast())
            self.log.log({"epoch": self.epoch_progress, **stats}, state.global_step, file="dynamics")
        if state.global_step % cfg.log_every == 0:
            loss = acc.reduce(self._window_loss, "mean").item() / self._window_batches
            lr = self.scheduler.get_last_lr()[0]
            speed = self._window_images / (time.perf_counter() - self._window_start)
            self.log.log({"epoch": self.epoch_progress, "train/loss": loss, "train/lr": lr,
                          "train/images_per_s": speed}, state.global_step)
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
            self._reset_window()
        if cfg.save_every and state.global_step % cfg.save_every == 0 and not self.done:
            self.checkpointer.save(state, self.scheduler)

    def _reset_window(self) -> None:
        self._window_loss = torch.zeros((), device=self.accelerator.device)
        self._window_batches, self._window_images, self._window_start = 0, 0, time.perf_counter()

    def evaluate(self) -> dict[str, Any]:
        """Top-1 / top-5 on the selection split (held-out validation, else the eval split); a new best is
        saved (``best/``)."""
        state, acc = self.state, self.accelerator
        metrics = evaluate_model(self.model, self.val_loader, acc)
        self.log.log({"epoch": self.epoch_progress, "val/top1": metrics["top1"], "val/top5": metrics["top5"]},
                     state.global_step)
        if state.best_metric is None or metrics["top1"] > state.best_metric:
            state.best_metric, state.best_step = metrics["top1"], state.global_step
            if acc.is_main_process:
                save_latent(acc.unwrap_model(self.model), self.cfg.run_dir / BEST_DIR)
        acc.wait_for_everyone()
        acc.print(f"step {state.global_step} (epoch {self.epoch_progress:.2f}): top-1 {metrics['top1']:.2f}% "
                  f"(best {state.best_metric:.2f}%)")
        return metrics

    def _selection_record(self) -> dict[str, Any]:
        state = self.state
        return {**self.selection, "top1": state.best_metric, "step": state.best_step,
                "epoch": round(state.best_step / self.steps_per_epoch, 2)}

    def test_selected(self) -> dict[str, Any]:
        """The selected checkpoint (``best/``) evaluated once on the eval (test) split, then exported with
        both numbers (``export/``)."""
        acc, cfg = self.accelerator, self.cfg
        best = load_trained(str(cfg.run_dir)).to(acc.device)
        metrics = evaluate_model(best, self.eval_loader, acc)
        self.log.log({"test/top1": metrics["top1"], "test/top5": metrics["top5"]}, self.state.global_step)
        acc.print(f"selected step {self.state.best_step} (top-1 {self.state.best_metric:.2f}% on "
                  f"{self.selection['split']}): top-1 {metrics['top1']:.2f}% on {cfg.eval_split}")
        if acc.is_main_process and cfg.export:
            export_dir = cfg.run_dir / EXPORT_DIR
            entry = card_entry(best.config, cfg.zoo, cfg.run_name, cfg.dataset)
            record = {**_eval_record(cfg, metrics, export_dir), "selection": self._selection_record()}
            export_model(best, export_dir, record, entry)
        acc.wait_for_everyone()
        return metrics


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run the training ``cfg`` describes; returns a summary (best top-1, steps, directories).

    When the export's ONNX graph fails its verification (:class:`uniq_hub.hub.release_folder.ExportIncomplete`),
    the checkpoints, ``best/`` and the PyTorch release are on disk already: the summary is written
    with the error, then the error is raised."""
    trainer = Trainer(cfg)
    try:
        return trainer.fit()
    except ExportIncomplete as err:
        state, acc = trainer.state, trainer.accelerator
        summary = {
            "run_dir": str(cfg.run_dir), "export_dir": str(err.folder), "best_top1": state.best_metric,
            "best_step": state.best_step, "steps": state.global_step, "epochs": state.epoch,
            "test": {k: err.record.get(k) for k in ("top1", "top5", "num_examples")}, "export_error": str(err),
        }
        if acc.is_main_process:
            write_json_atomic(cfg.run_dir / SUMMARY_FILE, summary)
        raise


# ---------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("uniq_hub").setLevel(logging.INFO)
    try:
        summary = train(config_from_args(args))
    except (NonFiniteLossError, RunDirectoryError, CheckpointError, CheckpointWriteError, ExportIncomplete,
            ResumeError) as err:
        raise SystemExit(f"uniq-hub train: {err}") from err

    if PartialState().is_main_process:
        best = summary["best_top1"]
        print(f"done: {summary['steps']} steps, best top-1 {best:.2f}%" if best is not None else "done")
        exported = f"; export: {summary['export_dir']}" if summary["export_dir"] else ""
        print(f"run directory: {summary['run_dir']}{exported}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="uniq_hub.training.train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    from ..hub.network import default_timeout, hub_timeout

    with hub_timeout(default_timeout()):  # `accelerate launch -m uniq_hub.training.train` bypasses the CLI's timeout
        return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
