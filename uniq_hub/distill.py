"""Knowledge distillation (Hinton et al., 2015): the loss, and the teacher a run distils from."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .export import load_trained

__all__ = ["distillation_loss", "load_teacher"]


def distillation_loss(
    student: Tensor, teacher: Tensor, labels: Tensor, temperature: float, weight: float, label_smoothing: float = 0.0
) -> Tensor:
    """``(1 - w) CE(student, labels) + w T^2 KL(softmax(teacher / T) || softmax(student / T))``.

    The ``T^2`` factor keeps the soft term's gradient scale independent of ``T``.
    """
    hard = F.cross_entropy(student, labels, label_smoothing=label_smoothing)
    if weight == 0.0:
        return hard
    soft = F.kl_div(F.log_softmax(student / temperature, dim=-1), F.log_softmax(teacher / temperature, dim=-1),
                    reduction="batchmean", log_target=True) * temperature**2
    return (1.0 - weight) * hard + weight * soft


def load_teacher(source: str, num_labels: int) -> nn.Module:
    """The teacher: a model folder, a run directory (its ``best/``) or a Hub id, frozen in eval mode."""
    teacher = load_trained(source)
    if teacher.config.num_labels != num_labels:
        raise ValueError(f"--teacher {source}: it has {teacher.config.num_labels} labels, the dataset {num_labels}; "
                         "distillation needs the same classes")
    teacher.eval().requires_grad_(False)
    return teacher


@torch.no_grad()
def teacher_logits(teacher: nn.Module, inputs: Tensor) -> Tensor:
    return teacher(inputs).logits.float()
