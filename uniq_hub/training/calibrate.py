"""Step-size initialisation from data (Section 4.2): weights from the weights themselves,
activations as the maximum per-batch estimate over the first N batches; and the re-estimation of
BatchNorm statistics under the quantized weights (after quantized training)."""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import Tensor, nn

from ..model.modules import QuantizedMixin, UniQQuantizer


@contextlib.contextmanager
def train_mode_keeping_norm_stats(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in train mode (normalisation on batch statistics); on exit the running statistics
    of every BatchNorm-like layer and the previous train / eval mode are restored."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    saved = [[b.detach().clone() for b in m.buffers()] for m in norms]
    was_training = model.training
    model.train()
    try:
        yield model
    finally:
        with torch.no_grad():
            for m, buffers in zip(norms, saved):
                for b, old in zip(m.buffers(), buffers):
                    b.copy_(old)
        model.train(was_training)


def _inputs(batch: Tensor | tuple | list | dict) -> Tensor:
    """The images of a batch: a tensor, an ``(inputs, labels)`` pair or a dict with ``pixel_values``."""
    if isinstance(batch, dict):
        return batch["pixel_values"]
    return batch[0] if isinstance(batch, (tuple, list)) else batch


@torch.no_grad()
def calibrate(
    model: nn.Module, batches: Iterable[Tensor | tuple | dict], num_batches: int | None = None,
    uninitialized_only: bool = False,
) -> int:
    """Initialise every step size of ``model``; returns the number of batches used.

    ``uninitialized_only``: leave quantizers whose ``initialized`` flag is set alone (e.g. only
    the classifier re-initialised by ``from_pretrained(..., ignore_mismatched_sizes=True)``).

    Runs in train mode, so each quantizer sees the distribution it will see in training
    (BatchNorm on batch statistics); BatchNorm running statistics are restored afterwards.
    """
    def chosen(quantizer: UniQQuantizer) -> bool:
        return not (uninitialized_only and bool(quantizer.initialized))

    for module in model.modules():
        wq = module.weight_quantizer if isinstance(module, QuantizedMixin) else None
        if wq is not None and chosen(wq):
            wq.init_from(module.weight)
    act = [m for n, m in model.named_modules()
           if isinstance(m, UniQQuantizer) and not n.endswith("weight_quantizer") and chosen(m)]
    for q in act:
        q.initialized.fill_(False)
        q.calibrating = True
    used = 0
    try:
        with train_mode_keeping_norm_stats(model):
            for batch in batches:
                if num_batches is not None and used >= num_batches:
                    break
                model(_inputs(batch).to(next(model.parameters()).device))
                used += 1
    finally:
        for q in act:
            q.calibrating = False
    if act and used == 0:
        raise ValueError("calibrate() got no batch: the step sizes of the activation quantizers are not set")
    return used


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, batches: Iterable[Tensor | tuple | dict], num_batches: int) -> int:
    """Recompute every BatchNorm's running mean / variance as the plain average over ``num_batches``
    batches, with the model's current (quantized) weights; returns the batches used.

    The running statistics that training accumulates follow latent weights whose quantized values
    oscillate between levels, so they can disagree with the weights that are finally rounded (a
    known cause of low-bit MobileNetV2 collapse). Steps and weights are left untouched."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    used = 0
    try:
        model.train()
        device = next(model.parameters()).device
        for batch in batches:
            if used >= num_batches:
                break
            model(_inputs(batch).to(device))
            used += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    if norms and used == 0:
        raise ValueError("reestimate_batchnorm() got no batch: the running statistics were reset and not re-estimated")
    return used
