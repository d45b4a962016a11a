"""Step-size initialisation from data (Section 4.2): weights from the weights themselves,
activations as the maximum per-batch estimate over the first N batches."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

from .modules import UniQQuantizer, _QuantizedMixin


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
    A batch is a tensor, a ``(inputs, labels)`` pair or a dict with ``pixel_values``.
    """
    def chosen(quantizer: UniQQuantizer) -> bool:
        return not (uninitialized_only and bool(quantizer.initialized))

    for module in model.modules():
        if isinstance(module, _QuantizedMixin) and module.weight_quantizer is not None and chosen(module.weight_quantizer):
            module.weight_quantizer.init_from(module.weight)
    act = [m for n, m in model.named_modules()
           if isinstance(m, UniQQuantizer) and not n.endswith("weight_quantizer") and chosen(m)]
    for q in act:
        q.initialized.fill_(False)
        q.calibrating = True
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in norms]
    was_training, used = model.training, 0
    model.train()
    try:
        for batch in batches:
            if num_batches is not None and used >= num_batches:
                break
            x = batch["pixel_values"] if isinstance(batch, dict) else batch[0] if isinstance(batch, (tuple, list)) else batch
            model(x.to(next(model.parameters()).device))
            used += 1
    finally:
        for q in act:
            q.calibrating = False
        for m, state in zip(norms, saved):
            m.load_state_dict(state)
        model.train(was_training)
    if act and used == 0:
        raise ValueError("calibrate() got no batch: the step sizes of the activation quantizers are not set")
    return used
