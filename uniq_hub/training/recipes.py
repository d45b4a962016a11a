"""Training recipes of the paper (Section 5): defaults by data family and bits, and the
optimizer / LR-schedule factories.

The hyperparameter tables live in one place, :data:`uniq_hub.catalog.recipe_table.RECIPES`
(family -> kind -> fields), which the zoo entries are built from too; :func:`recipe_defaults` resolves
them for any architecture / bits, so ``--arch resnet18 --bits 3`` trains exactly like
``--zoo uniq/resnet18-w3a3``. The kinds follow the bits: "fp" (32), "binary" (either side 1
bit), "multi" (otherwise). In short:

* multi-bit: SGD, lr 0.01, momentum 0.9, cosine without restarts; weight decay 1e-4 / 0.5e-4 /
  0.25e-4 for 4 / 3 / 2 bits on ImageNet, 5e-4 on CIFAR-100;
* 1 bit: Adam, 5 warm-up epochs at a constant lr 0.001, then 0.004 with cosine;
* never any weight decay on the step sizes (:func:`param_groups`); their learning rate is the
  network's unless ``step_lr_scale`` says otherwise (the paper gives them the same one).

Schedules step once per optimizer step (not per epoch), so a run resumed mid-epoch continues on
the same lr curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..catalog.recipe_table import recipe_spec
from ..catalog.zoo import DATASETS, FAMILIES
from ..model.modules import UniQQuantizer
from ..model.registry import model_info

__all__ = [
    "OPTIMIZERS", "recipe_family", "recipe_defaults",
    "param_groups", "build_optimizer", "WarmupCosine", "build_scheduler",
]


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").rsplit("/", 1)[-1]


def recipe_family(dataset: str | None, arch: str) -> str:
    """The recipe family of a dataset (a zoo dataset by key or HF name, ``fashion_mnist`` too);
    other datasets by the architecture (:func:`model_info`): ImageNet ones "imagenet", small-image ones "cifar100"."""
    if dataset:
        matches = [f for f in FAMILIES
                   if _norm(dataset) in (_norm(DATASETS[f.dataset].key), _norm(DATASETS[f.dataset].hf_name))]
        if matches:  # the family of this architecture on the dataset, else the dataset's first
            return next((f.recipes for f in matches if f.arch == arch), matches[0].recipes)
    return "imagenet" if model_info(arch).imagenet else "cifar100"


def _family_calib_batches(family: str) -> int:
    """The calibration batches of the recipe family's zoo dataset (100 for a family no zoo entry uses)."""
    return next((DATASETS[f.dataset].calib_batches for f in FAMILIES if f.recipes == family), 100)


def recipe_defaults(family: str, w_bits: int, a_bits: int) -> dict[str, Any]:
    """The training options of the recipe (:func:`uniq_hub.catalog.recipe_table.recipe_spec`) for these bits:
    optimizer, lr, momentum, epochs, batch_size, weight_decay, warmup_epochs, warmup_lr, calib_batches,
    label_smoothing, random_erasing (0 where the recipe has none), max_steps (None: whole epochs)."""
    spec = recipe_spec(family, w_bits, a_bits, _family_calib_batches(family))
    return dict(
        optimizer=spec["optimizer"], lr=spec["lr"], momentum=spec.get("momentum") or 0.9,
        epochs=spec["epochs"], batch_size=spec["batch_size"], weight_decay=float(spec["weight_decay"]),
        warmup_epochs=spec.get("warmup_epochs", 0), warmup_lr=spec.get("warmup_lr"),
        calib_batches=spec["calib_batches"], label_smoothing=spec.get("label_smoothing", 0.0),
        random_erasing=spec.get("random_erasing", 0.0), max_steps=spec.get("max_steps"),
    )


def param_groups(model: nn.Module, weight_decay: float, step_lr: float | None = None) -> list[dict]:
    """Two groups: everything with ``weight_decay``, and the quantizer step sizes without (at ``step_lr``
    when given, else the optimizer's lr)."""
    steps = {id(m.step) for m in model.modules() if isinstance(m, UniQQuantizer)}
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if id(p) in steps else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "weights"}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "name": "step_sizes",
                       **({} if step_lr is None else {"lr": step_lr})})
    return groups


def _sgd(groups, lr, momentum, **_):
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


def _adam(groups, lr, **_):
    return torch.optim.Adam(groups, lr=lr)


def _adamw(groups, lr, **_):
    return torch.optim.AdamW(groups, lr=lr)


OPTIMIZERS = {"sgd": _sgd, "adam": _adam, "adamw": _adamw}


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float = 0.9,
                    step_lr_scale: float = 1.0):
    """Optimizer by name with the no-decay-on-steps parameter groups (coupled L2 for sgd / adam); the step
    sizes learn at ``step_lr_scale * lr`` (the schedule scales both groups alike)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(OPTIMIZERS)}")
    step_lr = None if step_lr_scale == 1.0 else lr * step_lr_scale
    return OPTIMIZERS[name](param_groups(model, weight_decay, step_lr), lr=lr, momentum=momentum)


@dataclass
class WarmupCosine:
    """lr multiplier per optimizer step: warm-up, then cosine from 1 to ``min_factor``.

    During the ``warmup_steps`` first steps the factor is ``warmup_factor`` (constant warm-up,
    the paper's 1-bit recipe) or, when ``warmup_factor`` is None, a linear ramp up to 1.
    Plain data, so ``LambdaLR.state_dict()`` stores and restores it.
    """

    total_steps: int
    warmup_steps: int = 0
    warmup_factor: float | None = None
    min_factor: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            if self.warmup_factor is not None:
                return self.warmup_factor
            return (step + 1) / self.warmup_steps
        span = max(self.total_steps - self.warmup_steps, 1)
        t = min(step - self.warmup_steps, span) / span
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    warmup_lr: float | None = None,
    min_lr: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine schedule without restarts over ``total_steps`` optimizer steps, with warm-up.

    ``warmup_lr``: constant lr during warm-up (None: linear ramp). The base lr is the
    optimizer's lr.
    """
    base = optimizer.param_groups[0]["lr"]
    if base <= 0:
        raise ValueError(f"learning rate must be positive, got {base}")
    schedule = WarmupCosine(
        total_steps=max(int(total_steps), 1),
        warmup_steps=int(warmup_steps),
        warmup_factor=None if warmup_lr is None else warmup_lr / base,
        min_factor=min_lr / base,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
