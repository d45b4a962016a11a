"""Training dynamics of the quantizers (the paper's Figure 4).

For every quantizer, on the steps it is armed, a forward hook records from the quantizer's own
input ``x`` and output ``Q(x)`` of that training step:

* ``step``: the step size (mean over output channels when kernel-wise),
* ``std``: the standard deviation of the input,
* ``sqnr``: ``10 log10(Var(x) / E[(x - Q(x))^2])`` in dB, the measured SQNR,
* ``sqnr_opt``: the Table 1 optimum of that quantizer's bits and kind (Gaussian weights /
  signed inputs, ReLU-of-Gaussian activations), the dashed line of Figure 4,
* ``step_opt``: the MSE-optimal step for the current statistics, ``D^u * std`` (weights) or
  ``D^u * sqrt(2 E[x^2])`` (activations), as the initialisation would set it now (kernel-wise:
  the mean of the per-channel optima).
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor, nn

from ..model.modules import UniQQuantizer
from ..model.quant import optimal_step
from .calibrate import train_mode_keeping_norm_stats

__all__ = ["quantizer_stats", "DynamicsRecorder"]


_STATS = ("step", "std", "sqnr", "sqnr_opt", "step_opt")


@torch.no_grad()
def _stats_tensor(quantizer: UniQQuantizer, x: Tensor, q: Tensor) -> Tensor:
    """The :data:`_STATS` of one quantizer call as a 5-vector on ``x``'s device (no host sync)."""
    x, q = x.detach().float(), q.detach().float()
    kind = "activation" if quantizer.spec.role == "activation" else "weight"
    unit_step, sqnr_opt = optimal_step(quantizer.bits, kind)
    var = x.var()
    noise = (x - q).pow(2).mean()
    if kind == "activation":
        scale = torch.sqrt(2.0 * x.pow(2).mean())
    else:  # kernel-wise: the mean of the per-channel optima, comparable with the mean step
        scale = x.flatten(1).std(dim=1).mean() if quantizer.spec.per_channel else x.std()
    sqnr = torch.where(noise > 0, 10.0 * torch.log10(var / noise), torch.full_like(var, math.inf))
    step = quantizer.step.detach().float().mean()
    return torch.stack([step, var.sqrt(), sqnr, torch.full_like(var, sqnr_opt), unit_step * scale])


def quantizer_stats(quantizer: UniQQuantizer, x: Tensor, q: Tensor) -> dict[str, float]:
    """Step, input std, measured and optimal SQNR of one quantizer call (``q = quantizer(x)``)."""
    return dict(zip(_STATS, _stats_tensor(quantizer, x, q).tolist()))


class DynamicsRecorder:
    """Records :func:`quantizer_stats` of every quantizer of ``model`` on a probe batch.

    :meth:`probe` runs one extra no-grad forward of the plain (uncompiled, unwrapped) module in
    train mode, i.e. with the batch statistics training uses, on the current training batch and
    weights, with forward hooks on the quantizers only for that call; BatchNorm running
    statistics are restored afterwards. The training forward itself carries no hook, so
    ``torch.compile`` and DDP see the model unchanged. Returns ``{"<quantizer>/<stat>": value}``.
    ``include``: substrings; only quantizers whose name contains one (all when empty).
    """

    def __init__(self, model: nn.Module, include: tuple[str, ...] = ()) -> None:
        self.model = model
        self.quantizers = {
            name: m for name, m in model.named_modules()
            if isinstance(m, UniQQuantizer) and (not include or any(s in name for s in include))
        }

    @torch.no_grad()
    def probe(self, inputs: Tensor, autocast: contextlib.AbstractContextManager | None = None) -> dict[str, float]:
        records: dict[str, Tensor] = {}

        def hook_for(name: str):
            def hook(module: UniQQuantizer, args: tuple[Tensor, ...], output: Tensor) -> None:
                records.setdefault(name, _stats_tensor(module, args[0], output))

            return hook

        handles = [q.register_forward_hook(hook_for(name)) for name, q in self.quantizers.items()]
        try:
            with train_mode_keeping_norm_stats(self.model), autocast or contextlib.nullcontext():
                self.model(inputs)
        finally:
            for handle in handles:
                handle.remove()
        names = [n for n in self.quantizers if n in records]
        if not names:
            return {}
        values = torch.stack([records[n] for n in names]).cpu().tolist()  # one host transfer
        return {f"{n}/{k}": v for n, row in zip(names, values) for k, v in zip(_STATS, row)}
