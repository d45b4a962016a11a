"""Class names of the zoo's datasets, available offline."""

from __future__ import annotations

from timm.data import ImageNetInfo


def imagenet_id2label() -> dict[int, str]:
    """The 1000 ImageNet-1k class names (timm's descriptions, e.g. 0 -> "tench, Tinca tinca")."""
    return dict(enumerate(ImageNetInfo().label_descriptions()))


__all__ = ["imagenet_id2label"]
