"""Transforms built from the image processor a model ships: evaluation, the processor itself
(:func:`eval_transform`); training, its input conversion and normalisation around a random
geometry (:func:`train_transform`, :data:`TRANSFORM_STYLES`); and the processor for given inputs
(:func:`processor_for`, known datasets' statistics in :data:`NORMALIZATION`)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from timm.data.random_erasing import RandomErasing
from torchvision.transforms import v2

from ...model.configuration_uniq import UniQConfig
from ...model.constants import IMAGENET_MEAN, IMAGENET_STD
from ...model.image_processing_uniq import UniQImageProcessor, to_image_tensor

Stats = tuple[tuple[float, ...], tuple[float, ...]]

__all__ = ["NORMALIZATION", "TRANSFORM_STYLES", "ProcessorInput", "ProcessorNormalize", "ProcessorResizeCrop",
           "ProcessorTransform", "eval_transform", "make_transform", "normalization_stats", "per_channel",
           "processor_for", "train_transform"]

NORMALIZATION: dict[str, Stats] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
}
_STATS_ALIASES = {"imagenet_1k": "imagenet", "ilsvrc": "imagenet", "cifar_100": "cifar100",
                  "fashionmnist": "fashion_mnist"}


def _stats_key(name: str) -> str:
    key = name.strip().strip("/").lower().rsplit("/", 1)[-1].replace("-", "_")
    return _STATS_ALIASES.get(key, key)


def normalization_stats(name: str) -> Stats:
    """``(mean, std)`` of a known dataset (``imagenet``, ``ILSVRC/imagenet-1k``, ``fashion-mnist`` ...)."""
    key = _stats_key(name)
    if key not in NORMALIZATION:
        raise KeyError(f"no normalisation statistics for {name!r}; known: {sorted(NORMALIZATION)}")
    return NORMALIZATION[key]


def per_channel(values: Sequence[float], num_channels: int) -> list[float]:
    """Repeat a single value, or average RGB values for one channel."""
    values = list(values)
    if len(values) == num_channels:
        return values
    if len(values) == 1:
        return values * num_channels
    if num_channels == 1:
        return [sum(values) / len(values)]
    raise ValueError(f"{len(values)} normalisation values for {num_channels} channels")


def processor_for(*, num_channels: int = 3, image_size: int = 224, mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None, crop_pct: float | None = None) -> UniQImageProcessor:
    """The image processor a model with these inputs ships (``UniQConfig``'s defaults fill the rest)."""
    config = UniQConfig(num_channels=num_channels, image_size=image_size, crop_pct=crop_pct,
                        image_mean=None if mean is None else per_channel(mean, num_channels),
                        image_std=None if std is None else per_channel(std, num_channels))
    return UniQImageProcessor.from_model_config(config)


class ProcessorTransform:
    """One image -> ``pixel_values`` (C, H, W) through an image processor: the evaluation transform,
    exactly what ``pipeline("image-classification")`` feeds the model (picklable)."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, image: Any) -> torch.Tensor:
        return self.processor(image, return_tensors="pt")["pixel_values"][0]

    def __repr__(self) -> str:
        return f"ProcessorTransform({type(self.processor).__name__})"


class ProcessorInput:
    """Any image -> ``(C, H, W)`` in 0..255 (uint8 or float), converted as the processor converts it."""

    def __init__(self, processor: UniQImageProcessor) -> None:
        self.num_channels = int(processor.num_channels)

    def __call__(self, image: Any) -> torch.Tensor:
        return to_image_tensor(image, self.num_channels)


class ProcessorResizeCrop(torch.nn.Module):
    """The processor's geometry: shortest edge to ``size``, centre crop ``crop_size``."""

    def __init__(self, processor: UniQImageProcessor) -> None:
        super().__init__()
        self.processor = processor

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        p = self.processor
        return p.center_crop(p.resize(image, p.size, p.resample), p.crop_size)


class ProcessorNormalize(torch.nn.Module):
    """The processor's rescale (1/255) and normalisation, with its own arithmetic."""

    def __init__(self, processor: UniQImageProcessor) -> None:
        super().__init__()
        self.processor = processor

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        p = self.processor
        return p.rescale_and_normalize(image[None], p.do_rescale, p.rescale_factor, p.do_normalize,
                                       p.image_mean, p.image_std)[0]


def _imagenet_augment(processor: UniQImageProcessor) -> list[Callable]:
    """The paper's ImageNet training crop: RandomResizedCrop + flip."""
    side = (processor.crop_size.height, processor.crop_size.width)
    return [v2.RandomResizedCrop(side, antialias=True), v2.RandomHorizontalFlip()]


def _small_augment(processor: UniQImageProcessor, padding: int = 4) -> list[Callable]:
    """CIFAR style: the evaluation geometry, then RandomCrop(size, padding) + flip."""
    side = (processor.crop_size.height, processor.crop_size.width)
    return [ProcessorResizeCrop(processor), v2.RandomCrop(side, padding=padding), v2.RandomHorizontalFlip()]


# training augmentation style -> geometry steps (between the processor's input conversion and normalisation)
TRANSFORM_STYLES: dict[str, Callable[[UniQImageProcessor], list[Callable]]] = {
    "imagenet": _imagenet_augment,
    "small": _small_augment,
    "cifar": _small_augment,
}


def train_transform(processor: UniQImageProcessor, style: str, random_erasing: float = 0.0) -> v2.Compose:
    """The training transform of ``processor``: its input conversion, the ``style``'s random
    geometry (:data:`TRANSFORM_STYLES`), its normalisation, then (``random_erasing`` > 0) timm's
    ``RandomErasing`` with that probability on the normalised image (erased pixels set to 0, the mean)."""
    if style not in TRANSFORM_STYLES:
        raise ValueError(f"unknown transform style {style!r}; expected one of {sorted(TRANSFORM_STYLES)}")
    if not 0.0 <= random_erasing <= 1.0:
        raise ValueError(f"random_erasing is a probability in [0, 1], got {random_erasing!r}")
    erase = [RandomErasing(random_erasing, mode="const", device="cpu")] if random_erasing else []
    return v2.Compose([ProcessorInput(processor), *TRANSFORM_STYLES[style](processor), ProcessorNormalize(processor),
                       *erase])


def eval_transform(processor: Any) -> ProcessorTransform:
    """The evaluation transform: the image processor itself."""
    return ProcessorTransform(processor)


def make_transform(style: str, train: bool, **kwargs: Any) -> Callable[[Any], torch.Tensor]:
    """Training (``style``) or evaluation transform of :func:`processor_for` ``(**kwargs)``."""
    if style not in TRANSFORM_STYLES:
        raise ValueError(f"unknown transform style {style!r}; expected one of {sorted(TRANSFORM_STYLES)}")
    processor = processor_for(**kwargs)
    return train_transform(processor, style) if train else eval_transform(processor)
