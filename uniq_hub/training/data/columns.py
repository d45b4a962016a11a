"""The two columns every loaded split is normalised to, ``image`` and ``label``: their detection
(:func:`detect_columns`), the class names (:func:`class_names`) and the match of a dataset's
labels to a model's by name (:func:`label_mapping`)."""

from __future__ import annotations

import re
from typing import Any, Sequence

from datasets import ClassLabel, Dataset, IterableDataset
from datasets import Image as ImageFeature
from PIL import Image

AnyDataset = Dataset | IterableDataset

__all__ = ["AnyDataset", "class_names", "detect_columns", "label_mapping", "normalise_columns"]

_IMAGE_NAMES = ("image", "img", "pixel_values", "images", "jpg", "png", "webp")
_LABEL_NAMES = ("label", "labels", "fine_label", "target", "targets", "class", "cls")


def _columns(ds: AnyDataset) -> dict[str, Any]:
    """Column name -> feature (``None`` when unknown, e.g. a streaming dataset without features)."""
    features = ds.features
    if features is not None:
        return dict(features)
    row = next(iter(ds.take(1)), {})  # streaming without metadata: peek one row
    return {name: (ImageFeature() if isinstance(value, Image.Image) else None) for name, value in row.items()}


def _pick(columns: dict[str, Any], override: str | None, kind: str, names: Sequence[str],
          feature_type: type, source: str, exclude: str | None = None) -> str:
    available = list(columns)
    columns = {c: f for c, f in columns.items() if c != exclude}
    if override is not None:
        if override not in available:
            raise ValueError(f"{kind} column {override!r} not found in dataset {source!r}; "
                             f"available columns: {available}")
        return override
    typed = [c for c, f in columns.items() if isinstance(f, feature_type)]
    by_name = [n for n in names if n in columns]
    # images: the feature type decides; labels: a usual name first (CIFAR-100 has two ClassLabels)
    candidates = typed + by_name if feature_type is ImageFeature else by_name + typed[:1] * (len(typed) == 1)
    if not candidates:
        why = f"several {feature_type.__name__} columns {typed}" if len(typed) > 1 else "no usual name or type"
        raise ValueError(f"could not find the {kind} column of dataset {source!r} ({why}); available columns: "
                         f"{available}; pass {kind}_column=...")
    return candidates[0]


def detect_columns(ds: AnyDataset, image_column: str | None = None, label_column: str | None = None,
                   *, source: str = "dataset") -> tuple[str, str]:
    """``(image_column, label_column)``: an ``Image`` / ``ClassLabel`` feature or a usual name, unless given."""
    columns = _columns(ds)
    image = _pick(columns, image_column, "image", _IMAGE_NAMES, ImageFeature, source)
    label = _pick(columns, label_column, "label", _LABEL_NAMES, ClassLabel, source, exclude=image)
    return image, label


def class_names(ds: AnyDataset, label_column: str = "label") -> list[str] | None:
    """Class names of the ``ClassLabel`` label column, or ``None`` when unknown."""
    feature = (ds.features or {}).get(label_column)
    return list(feature.names) if isinstance(feature, ClassLabel) else None


def normalise_columns(ds: AnyDataset, image_column: str | None, label_column: str | None,
                      source: str) -> AnyDataset:
    """Keep only the image and label columns, named ``image`` and ``label``; label as ``ClassLabel``."""
    image, label = detect_columns(ds, image_column, label_column, source=source)
    ds = ds.select_columns([image, label])
    renames = {old: new for old, new in ((image, "image"), (label, "label")) if old != new}
    if renames:
        ds = ds.rename_columns(renames)
    feature = (ds.features or {}).get("label")
    if isinstance(feature, ClassLabel) or not isinstance(ds, Dataset):
        return ds
    if getattr(feature, "dtype", "").startswith(("int", "uint")):  # integer ids: names "0".."max"
        values = [v for v in ds.unique("label") if v is not None and v >= 0]
        return ds.cast_column("label", ClassLabel(names=[str(i) for i in range(max(values, default=-1) + 1)]))
    return ds.class_encode_column("label")  # e.g. string labels


def _name_key(name: str) -> str:
    return re.sub(r"[\s_]+", "", str(name).lower())


def label_mapping(names: Sequence[str] | None, id2label: dict[Any, str], source: str = "dataset") -> list[int]:
    """Dataset label id -> model label id, matched by class name (then ignoring case, spaces and ``_``).

    Integer labels without names (``"0"``, ``"1"`` ...) are taken as model ids. A class the model
    does not know is an error naming it."""
    model = {str(name): int(i) for i, name in id2label.items()}
    loose = {_name_key(name): i for name, i in model.items()}
    if names is None:
        raise ValueError(f"dataset {source!r}: the label column has no class names to match the model's labels")
    names = [str(n) for n in names]
    ids = [model.get(n, loose.get(_name_key(n))) for n in names]
    if all(i is not None for i in ids):
        return [int(i) for i in ids]
    if names == [str(i) for i in range(len(names))]:  # unnamed integer labels
        if len(names) > len(model):
            raise ValueError(f"dataset {source!r} has labels 0..{len(names) - 1} but the model has "
                             f"{len(model)} classes")
        return list(range(len(names)))
    unknown = [n for n, i in zip(names, ids) if i is None]
    raise ValueError(f"dataset {source!r} has classes the model does not know: {unknown[:10]}"
                     f"{' ...' if len(unknown) > 10 else ''}; the model's classes: {list(model)[:20]}")
