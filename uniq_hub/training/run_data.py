"""The data of a training run: both splits through :mod:`uniq_hub.training.data`, the validation
hold-out, the image processor the model will ship and the transforms built from it (:func:`load_data`
-> :class:`DataBundle`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from ..model.constants import SMALL_IMAGE
from ..model.image_inputs import ONE_CHANNEL_PIL_MODES
from .data.columns import class_names
from .data.sources import load_image_dataset
from .data.splits import (
    check_labels_in_range,
    check_same_classes,
    check_training_split,
    label_values,
    stratified_split,
    validation_size,
)
from .data.transforms import (
    NORMALIZATION,
    eval_transform,
    normalization_stats,
    per_channel,
    processor_for,
    train_transform,
)
from .train_config import TrainConfig

logger = logging.getLogger(__name__)

__all__ = ["DataBundle", "VAL_SPLIT_SEED", "load_data"]

VAL_SPLIT_SEED = 0  # the validation hold-out does not follow --seed: a zoo chain's stages share it


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
    train = load_image_dataset(cfg.dataset, cfg.train_split, streaming=cfg.streaming,
                               limit=cfg.max_train_samples, **common)
    evaluation = load_image_dataset(cfg.dataset, cfg.eval_split, limit=cfg.max_eval_samples, **common)
    names = class_names(train) or class_names(evaluation)
    if not names:
        raise ValueError(f"dataset {cfg.dataset!r}: the label column has no class names (a ClassLabel feature)")
    num_train = _num_examples(train, cfg)
    check_training_split(train, names, cfg.dataset, cfg.train_split, num_train)
    train, val, selection = _hold_out(train, num_train, cfg)
    num_train -= 0 if val is None else len(val)
    if len(evaluation) == 0:
        raise ValueError(f"dataset {cfg.dataset!r} split {cfg.eval_split!r} has no examples to evaluate on")
    check_same_classes(names, class_names(evaluation), cfg.dataset, cfg.eval_split, cfg.train_split)
    check_labels_in_range(label_values(evaluation), names, f"dataset {cfg.dataset!r} split {cfg.eval_split!r}")
    image = _first_image(train)
    num_channels = cfg.num_channels or (1 if getattr(image, "mode", "RGB") in ONE_CHANNEL_PIL_MODES else 3)
    native = max(getattr(image, "size", (224, 224)))
    image_size = cfg.image_size or (224 if native >= SMALL_IMAGE else native)
    try:
        mean, std = normalization_stats(cfg.dataset)
    except KeyError:
        mean, std = NORMALIZATION["imagenet"]
    mean, std = per_channel(mean, num_channels), per_channel(std, num_channels)
    processor = processor_for(num_channels=num_channels, image_size=image_size, mean=mean, std=std)
    style = "imagenet" if image_size >= SMALL_IMAGE else "small"
    return DataBundle(
        train=train, eval=evaluation,
        train_transform=train_transform(processor, style, cfg.random_erasing),
        eval_transform=eval_transform(processor),
        id2label=dict(enumerate(names)), num_channels=num_channels, image_size=image_size, mean=mean, std=std,
        num_train=num_train, processor=processor, val=val, selection=selection,
    )


def _hold_out(train: Any, num_train: int, cfg: TrainConfig) -> tuple[Any, Any, dict[str, Any]]:
    """``(train, val, selection)``: the validation examples carved out of the training split
    (:func:`uniq_hub.training.stratified_split`, seed :data:`VAL_SPLIT_SEED` whatever the run's seed, so every
    stage of a zoo chain holds out the same images), or ``val`` None when ``val_split`` is 0."""
    if cfg.val_split == 0:
        logger.warning("--val-split 0: the `%s` split chooses the model and is then reported on, so its number is "
                       "optimistic (the card says so); the zoo never does this", cfg.eval_split)
        return train, None, {"split": cfg.eval_split, "description": f"the `{cfg.eval_split}` split (no "
                             "validation split held out: the test split chose the model)"}
    if cfg.streaming:
        raise ValueError("a streamed training split cannot hold out a validation split: load it map-style, or "
                         "pass --val-split 0 to select the model on the evaluation split")
    size = validation_size(cfg.val_split, num_train)
    if size == 0:
        raise ValueError(f"dataset {cfg.dataset!r} split {cfg.train_split!r} has {num_train} examples: too few to "
                         "hold out a validation split (pass --val-split N, or 0 to select on the evaluation split)")
    keep, held = stratified_split(list(train["label"]), size, VAL_SPLIT_SEED)
    selection = {
        "split": f"{cfg.train_split}[held-out {size}]", "num_examples": size, "seed": VAL_SPLIT_SEED,
        "description": f"{size} images held out of the `{cfg.train_split}` split (class-stratified, seed "
                       f"{VAL_SPLIT_SEED}; not trained on)",
    }
    return train.select(keep), train.select(held), selection
