"""The tiny-model factory of the tests and benchmarks: a small, seeded ``UniQForImageClassification``.

Tests import it as ``from tiny_models import tiny_model`` (pytest puts ``tests/`` on the path);
a benchmark puts ``tests/`` on ``sys.path`` first. Weights are random: the models check
behaviour and speed, never accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from train_helpers import CLASSES
from uniq_hub import UniQConfig, UniQForImageClassification, calibrate

# BatchNorm attribute -> uniform range, applied to every BatchNorm2d in this order
BatchNormRanges = dict[str, tuple[float, float]]
# running statistics and affine parameters far from the identity, so that a mix-up of tensors shows
RANDOM_BATCHNORM: BatchNormRanges = {
    "running_mean": (-0.3, 0.3), "running_var": (0.5, 2.0), "weight": (0.5, 1.5), "bias": (-0.3, 0.3),
}


def randomize_batchnorm(model: torch.nn.Module, ranges: BatchNormRanges) -> None:
    """Draw each named tensor of every ``BatchNorm2d`` of ``model`` from its uniform range (global generator)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                for name, (low, high) in ranges.items():
                    getattr(module, name).uniform_(low, high)


def tiny_model(
    arch: str = "resnet20",
    bits: int = 2,
    *,
    seed: int = 0,
    calibration: tuple[int, int] | Tensor | Callable[[], Tensor] | None = (4, 16),
    batchnorm: BatchNormRanges | None = None,
    batchnorm_first: bool = False,
    **config: Any,
) -> UniQForImageClassification:
    """A UniQ classifier with random weights, in eval mode.

    ``bits``: ``w_bits`` and ``a_bits`` both, unless ``config`` names them; ``config``: any other
    ``UniQConfig`` field (``num_labels``, ``image_size``, ``num_channels``, ``id2label``, ...).
    ``torch.manual_seed(seed)`` comes first, so the weights and every later draw are reproducible.
    ``calibration``: the one batch the step sizes are calibrated on: ``(batch, side)`` for a
    standard-normal ``(batch, num_channels, side, side)`` batch drawn after the model is built, a
    tensor, a function returning one (called at that point), or ``None`` for an uncalibrated model.
    ``batchnorm``: :func:`randomize_batchnorm` ranges, drawn after calibration (before it with
    ``batchnorm_first``, so that the calibrated steps see them).
    """
    torch.manual_seed(seed)
    fields = {"arch": arch, "w_bits": bits, "a_bits": bits, **config}
    model = UniQForImageClassification(UniQConfig(**fields))
    if batchnorm is not None and batchnorm_first:
        randomize_batchnorm(model, batchnorm)
    if calibration is not None:
        if isinstance(calibration, tuple):
            batch, side = calibration
            calibration = torch.randn(batch, model.config.num_channels, side, side)
        elif callable(calibration):
            calibration = calibration()
        calibrate(model.model, [calibration])
    if batchnorm is not None and not batchnorm_first:
        randomize_batchnorm(model, batchnorm)
    return model.eval()


# A real, tiny export as publish sees it (resnet20 w2a2, 28x28 grayscale, 10 labels): tests/test_publish*.py
EXPORT_CONFIG = {
    "model_type": "uniq", "arch": "resnet20", "w_bits": 2, "a_bits": 2, "num_labels": 10, "num_channels": 1,
    "image_size": 28,
    "auto_map": {"AutoConfig": "configuration_uniq.UniQConfig",
                 "AutoModelForImageClassification": "modeling_uniq.UniQForImageClassification"},
}


def real_export(folder):
    """Save the real, tiny export of :data:`EXPORT_CONFIG` (one that publish verifies) into ``folder``.
    Deterministic, so equal folders share one verification per process."""
    fields = {k: v for k, v in EXPORT_CONFIG.items() if k not in ("model_type", "auto_map")}
    tiny_model(**fields, calibration=(4, 28)).save_pretrained(folder)
    return folder


def onnx_model(seed: int = 0) -> UniQForImageClassification:
    """A 4-class 28x28 grayscale w2a2 model whose classes are train_helpers.CLASSES (the ONNX runtime tests)."""
    return tiny_model(seed=seed, num_labels=4, num_channels=1, image_size=28, image_mean=[0.3], image_std=[0.3],
                      id2label=dict(enumerate(CLASSES)), calibration=lambda: torch.rand(16, 1, 28, 28) * 2 - 0.5)
