"""The model of a training run: built from the options and the data (:func:`build_model`), its
network weights taken from ``--init-from`` (:func:`load_init_weights`: a pytorchcv model, a run
directory, a saved folder or a Hub id)."""

from __future__ import annotations

import logging

import torch

from ..catalog.release_folder import load_trained
from ..model.configuration_uniq import UniQConfig
from ..model.modeling_uniq import UniQForImageClassification
from .convert import load_pytorchcv
from .run_data import DataBundle
from .train_config import TrainConfig

logger = logging.getLogger(__name__)

__all__ = ["INIT_SOURCES", "build_model", "load_init_weights"]


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
