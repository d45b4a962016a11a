"""Knowledge distillation (Hinton et al., 2015): the loss, and the teacher a run distils from."""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..catalog.release_folder import load_trained

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


def load_teacher(source: str, labels: dict[int, str] | int, mapping: str = "same") -> nn.Module:
    """The teacher: a model folder, a run directory (its ``best/``) or a Hub id, frozen in eval mode.

    ``labels``: the student's ``id2label``. ``mapping="same"``: the teacher's ``id2label`` must be
    equal (names and order), else ``ValueError`` listing the differences; ``"by-name"``: its logits
    are reordered to the student's classes by name (each must be one of the teacher's)."""
    teacher = load_trained(source)
    theirs = [str(teacher.config.id2label[i]) for i in range(teacher.config.num_labels)]
    if isinstance(labels, int):  # a count only (older callers): names cannot be checked
        if labels != len(theirs):
            raise ValueError(f"--teacher {source}: it has {len(theirs)} labels, the dataset {labels}; "
                             "distillation needs the same classes")
        ours = theirs
    else:
        ours = [str(labels[i]) for i in range(len(labels))]
    if mapping not in ("same", "by-name"):
        raise ValueError(f"--teacher-labels must be 'same' or 'by-name', got {mapping!r}")
    if mapping == "same" and theirs != ours:
        if sorted(theirs) == sorted(ours):
            what = "the same classes in another order"
        else:
            what = f"other classes (the teacher's not in the data: {sorted(set(theirs) - set(ours))[:5]}; the data's " \
                   f"not in the teacher: {sorted(set(ours) - set(theirs))[:5]})"
        raise ValueError(f"--teacher {source}: its id2label differs from the dataset's: {what}; distilling would "
                         f"teach wrong targets. Teacher {theirs[:10]}, dataset {ours[:10]}. Pass --teacher-labels "
                         "by-name to map its classes by name")
    teacher.eval().requires_grad_(False)
    if theirs == ours:
        return teacher
    missing = [name for name in ours if name not in theirs]
    if missing:
        raise ValueError(f"--teacher {source}: --teacher-labels by-name: classes {missing[:5]} of the dataset are not "
                         f"among the teacher's {theirs[:10]}")
    return _Relabeled(teacher, [theirs.index(name) for name in ours])


class _Relabeled(nn.Module):
    """A teacher whose logits are reordered (and subset) to the student's classes."""

    def __init__(self, teacher: nn.Module, index: list[int]) -> None:
        super().__init__()
        self.teacher = teacher
        self.register_buffer("index", torch.tensor(index, dtype=torch.long), persistent=False)

    def forward(self, inputs: Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.teacher(inputs).logits.index_select(-1, self.index))


@torch.no_grad()
def teacher_logits(teacher: nn.Module, inputs: Tensor) -> Tensor:
    return teacher(inputs).logits.float()
