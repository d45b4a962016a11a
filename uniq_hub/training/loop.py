"""The training loop of one run (:class:`TrainingLoop`): set up on every process of a launch (run
directory, data, model, init or resume, optimizer, schedule), then :meth:`TrainingLoop.fit` trains,
evaluates on the selection split, checkpoints, and tests and exports the selected model."""

from __future__ import annotations

import itertools
import json
import logging
import math
import shlex
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, TorchDynamoPlugin, set_seed
from torch import nn
from tqdm.auto import tqdm

from ..catalog.release_folder import card_entry, export_model, load_trained, save_latent
from ..machine import machine_record
from ..model.atomic import write_json_atomic
from ..model.constants import BEST_DIR, EXPORT_DIR, SUMMARY_FILE, TRAIN_CONFIG_FILE
from ..model.quant_kernels import set_compile
from ..model.quantize import QuantConfig, layer_bits
from ..model.registry import create_model
from .calibrate import calibrate
from .checkpoint import Checkpointer, TrainerState, check_run_dir, clear_run_dir
from .data.loader import make_dataloader
from .data.splits import check_batch_fits
from .distill import distillation_loss, load_teacher, teacher_logits
from .dynamics import DynamicsRecorder
from .evaluate import evaluate_model
from .model_init import build_model, load_init_weights
from .recipes import build_optimizer, build_scheduler
from .run_data import DataBundle, load_data
from .run_record import check_resume, check_same_data, record_run
from .train_config import TrainConfig

logger = logging.getLogger(__name__)

__all__ = ["NonFiniteLossError", "RunLog", "TrainingLoop"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


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
        "machine": machine_record(),
    }


def _check_overrides_match_layers(cfg: TrainConfig) -> None:
    """Per-layer overrides must each match a layer of the architecture (refused before anything is written)."""
    if cfg.overrides:
        net = create_model(cfg.arch, num_classes=2, num_channels=cfg.num_channels or 3)
        layer_bits(net, QuantConfig(**cfg.quant_options()))


def _data_record(bundle: DataBundle) -> dict[str, Any]:
    """What a resumed run must find again: the split sizes and the classes."""
    return {"num_train": bundle.num_train, "num_eval": len(bundle.eval),
            "num_val": 0 if bundle.val is None else len(bundle.val),
            "labels": [bundle.id2label[i] for i in range(bundle.num_labels)]}


class TrainingLoop:
    """One training run: set up by the constructor (data, model, init or resume, optimizer,
    schedule), run by :meth:`fit`. Every process of a launch builds one."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        set_compile(cfg.compile_kernels)  # the quantizer kernels, explicitly (UNIQ_COMPILE overrides)
        self.accelerator = acc = _make_accelerator(cfg)
        check_run_dir(cfg.run_dir, resume=bool(cfg.resume), overwrite=cfg.overwrite)  # every process, before any write
        _check_overrides_match_layers(cfg)
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
        check_batch_fits(bundle.num_train, cfg.batch_size, cfg.dataset, cfg.train_split)
        per_batch = _per_process_batch(cfg, acc.num_processes)
        train_loader = make_dataloader(bundle.train, bundle.train_transform, per_batch, shuffle=True,
                                            num_workers=cfg.num_workers, seed=cfg.seed, drop_last=True,
                                            source=cfg.dataset)
        eval_loader = make_dataloader(bundle.eval, bundle.eval_transform, cfg.eval_batch_size, shuffle=False,
                                           num_workers=cfg.num_workers, source=cfg.dataset)
        loaders = [train_loader, eval_loader]
        if bundle.val is not None:
            loaders.append(make_dataloader(bundle.val, bundle.eval_transform, cfg.eval_batch_size, shuffle=False,
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
        optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum, cfg.step_lr_scale)
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
        return self.write_summary(test, last=metrics)

    def write_summary(self, test: dict[str, Any] | None, last: dict[str, Any] | None = None,
                      export_dir: Path | None = None, export_error: str | None = None) -> dict[str, Any]:
        """The run's ``summary.json`` (best and selected checkpoint, the test numbers, directories),
        written by the main process and returned; ``export_error`` when the export was incomplete."""
        cfg, state = self.cfg, self.state
        if export_dir is None and cfg.export:
            export_dir = cfg.run_dir / EXPORT_DIR
        summary = {
            "run_dir": str(cfg.run_dir), "export_dir": None if export_dir is None else str(export_dir),
            "best_top1": state.best_metric, "best_step": state.best_step, "last": last,
            "selection": self._selection_record(), "test": test,
            "steps": state.global_step, "epochs": state.epoch,
        }
        if export_error is not None:
            summary["export_error"] = export_error
        if self.accelerator.is_main_process:
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
