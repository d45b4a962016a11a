"""Splits: the requested split mapped onto the available ones (:func:`resolve_split`), a
class-balanced first N (:func:`balanced_indices`), the validation hold-out
(:func:`validation_size`, :func:`stratified_split`) and the checks that refuse a split a
classifier cannot be trained on."""

from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np
from datasets import Dataset

from .columns import AnyDataset

logger = logging.getLogger(__name__)

__all__ = ["SPLIT_DIR_NAMES", "balanced_indices", "check_batch_fits", "check_labels_in_range", "check_same_classes",
           "check_training_split", "check_val_split", "label_values",
           "resolve_split", "stratified_split", "validation_size"]

# requested split -> names that may stand in for it, in order of preference
_SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "test"),
    "test": ("test", "validation", "valid", "val"),
}
_SPLIT_CANONICAL = {"training": "train", "val": "validation", "valid": "validation", "eval": "validation"}
SPLIT_DIR_NAMES = frozenset({"train", "training", "test", "validation", "valid", "val"})


def resolve_split(split: str, available: Sequence[str], source: str = "dataset") -> str:
    """Map ``split`` onto one of ``available`` ("validation" -> "test" when there is no validation)."""
    wanted = _SPLIT_CANONICAL.get(split, split)
    for candidate in dict.fromkeys((split, *_SPLIT_ALIASES.get(wanted, (wanted,)))):
        if candidate in available:
            if candidate != split:
                logger.info("%s has no %r split; using %r", source, split, candidate)
            return candidate
    raise ValueError(f"{source!r} has no split {split!r}; available splits: {sorted(available)}")


def balanced_indices(labels: np.ndarray, limit: int) -> np.ndarray:
    """First ``limit`` indices taken round-robin over classes (each class in its original order), sorted."""
    labels = np.asarray(labels)
    rank = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(len(where))
    order = np.lexsort((labels, rank))  # by rank within class, then by class
    return np.sort(order[:limit])


def check_val_split(value: float) -> None:
    """``val_split`` is a count >= 2, a fraction in (0, 1) or 0 (no hold-out). 1 is refused: it reads as
    one example or as the whole split alike."""
    if not math.isfinite(value):
        raise ValueError(f"val_split must be a finite number (a count, a fraction or 0), got {value!r}")
    if value == 1:
        raise ValueError("val_split 1 is ambiguous (one example, or the whole split?): pass a count of at least 2 "
                         "or a fraction below 1 (e.g. 0.1)")
    if value < 0 or (value >= 1 and not float(value).is_integer()):
        raise ValueError(f"val_split must be a count >= 2, a fraction in (0, 1) or 0 (none), got {value!r}")


def validation_size(value: float | None, num_examples: int) -> int:
    """Examples to hold out for model selection: ``value`` >= 1 is a count, 0 < ``value`` < 1 a fraction,
    0 none; ``None`` (the default): 5000 or a tenth of the split, whichever is smaller."""
    if value is None:
        return min(5000, num_examples // 10)
    check_val_split(value)
    size = int(value) if value >= 1 else round(value * num_examples)
    if size >= num_examples:
        raise ValueError(f"val_split {value!r} holds out {size} of the {num_examples} training examples; "
                         "nothing would be left to train on")
    return size


def stratified_split(labels: Sequence[int], size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic class-stratified hold-out: ``(train_indices, val_indices)``, both sorted.

    Each class gives its share of ``size`` (largest remainders get the rounding), drawn by a
    permutation seeded by ``seed``, so the same labels, size and seed always give the same split."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * size / len(labels)
    take = np.floor(exact).astype(np.int64)
    take[np.argsort(-(exact - take), kind="stable")[: size - int(take.sum())]] += 1
    rng = np.random.default_rng(seed)
    val = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
                         + [np.empty(0, dtype=np.int64)])
    mask = np.ones(len(labels), dtype=bool)
    mask[val] = False
    return np.flatnonzero(mask), np.sort(val)


def check_training_split(ds: AnyDataset, names: Sequence[str] | None, source: str, split: str,
                         num_examples: int) -> None:
    """Refuse a split a classifier cannot be trained on: no examples, or a single class."""
    where = f"dataset {source!r} split {split!r}"
    if num_examples == 0:
        raise ValueError(f"{where} has no examples")
    if names is not None and len(names) < 2:
        raise ValueError(f"{where} has a single class {list(names)}: a classifier needs at least two")
    if isinstance(ds, Dataset):
        present = label_values(ds)
        check_labels_in_range(present, names, where)
        if len(present) < 2:
            shown = [names[i] for i in present] if names else present
            raise ValueError(f"{where}: every example has the same class {shown}: a classifier needs at least two")


def label_values(ds: Dataset) -> list[int | None]:
    """The distinct values of a map-style split's label column, sorted (a missing label last)."""
    return sorted(set(ds.unique("label")), key=lambda v: (v is None, v if v is not None else 0))


def check_labels_in_range(present: Sequence[int | None], names: Sequence[str] | None, where: str) -> None:
    """Every label value must be one of the class names' ids: ``0 .. len(names) - 1``, none missing."""
    if names is None:
        return
    bad = [v for v in present if v is None or not 0 <= v < len(names)]
    if bad:
        raise ValueError(f"{where}: labels {bad[:10]}{' ...' if len(bad) > 10 else ''} are not ids of its "
                         f"{len(names)} class names {list(names)[:20]} (0..{len(names) - 1}); fix the label column "
                         "or its ClassLabel names")


def check_same_classes(names: Sequence[str], other: Sequence[str] | None, source: str, split: str,
                       reference: str) -> None:
    """The evaluation split must name the training split's classes, in the same order: a misspelt or extra
    class name (string labels are encoded per split) is refused, naming it."""
    if other is None or list(other) == list(names):
        return
    unknown = [n for n in other if n not in names]
    missing = [n for n in names if n not in other]
    detail = (f"classes the {reference!r} split does not have: {unknown[:10]}" if unknown else
              f"the same classes in another order: {list(other)[:20]}")
    raise ValueError(f"dataset {source!r} split {split!r} has {detail}"
                     + (f" (and lacks {missing[:10]})" if missing else "")
                     + f"; the {reference!r} split's classes are {list(names)[:20]}")


def check_batch_fits(num_examples: int, batch_size: int, source: str, split: str) -> None:
    """Refuse a training split smaller than one batch (full batches only: it would give no step)."""
    if num_examples < batch_size:
        raise ValueError(f"dataset {source!r} split {split!r} has {num_examples} examples, fewer than one batch of "
                         f"{batch_size}: lower --batch-size or add data")
