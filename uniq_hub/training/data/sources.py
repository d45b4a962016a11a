"""Dataset sources: one split of an image-classification dataset from the Hub, an ``imagefolder``
tree or a ``save_to_disk`` directory (:func:`load_image_dataset`), normalised to the columns
``image`` and ``label`` (:mod:`.columns`). Fashion-MNIST has an offline fallback: when the Hub
cannot be reached it is built from local idx files (:mod:`.fashion_mnist`)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Callable

import datasets
import datasets.exceptions
from datasets import ClassLabel, Dataset, DatasetDict, Features, IterableDataset
from datasets import Image as ImageFeature

from .availability import DatasetUnavailableError, hub_reachable, offline_mode
from .columns import AnyDataset, normalise_columns
from .fashion_mnist import fashion_mnist_subset
from .splits import SPLIT_DIR_NAMES, resolve_split

logger = logging.getLogger(__name__)

__all__ = ["load_image_dataset"]

# normalised Hub name -> offline builder(split, cache_dir, limit)
_FALLBACKS: dict[str, Callable[[str, str | None, int | None], Dataset]] = {
    "fashion_mnist": fashion_mnist_subset,
    "zalando_datasets/fashion_mnist": fashion_mnist_subset,
}


def _fallback_key(source: str) -> str:
    return source.strip().strip("/").lower().replace("-", "_")


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_DISK_MARKERS = ("dataset_dict.json", "state.json")


def _source_kind(source: str) -> str:
    path = Path(source).expanduser()
    if path.is_dir():
        return "disk" if any((path / m).is_file() for m in _DISK_MARKERS) else "imagefolder"
    if path.exists():
        raise DatasetUnavailableError(f"{source!r} is a file; expected a Hub dataset name, an imagefolder "
                                      "directory or a directory written by save_to_disk")
    if not _HUB_ID.match(source):
        raise DatasetUnavailableError(f"no such directory: {source!r} (and it is not a Hub dataset name)")
    return "hub"


def _load_disk(source: str, split: str, *, streaming: bool, data_dir: str | None,
               cache_dir: str | None, limit: int | None) -> AnyDataset:
    loaded = datasets.load_from_disk(str(Path(source).expanduser()))
    if isinstance(loaded, DatasetDict):
        return loaded[resolve_split(split, list(loaded), source)]
    return loaded  # a single saved split is the dataset, whatever split was asked for


def _image_class_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _load_imagefolder(source: str, split: str, *, streaming: bool, data_dir: str | None,
                      cache_dir: str | None, limit: int | None) -> AnyDataset:
    root = Path(source).expanduser() / (data_dir or "")
    subdirs = _image_class_dirs(root)
    # split layout only when every folder is a split name (else a class named e.g. "test" is a class)
    split_dirs = subdirs if subdirs and all(d.lower() in SPLIT_DIR_NAMES for d in subdirs) else []
    folders = [root / d for d in split_dirs] or [root]  # class folders directly under root: one split
    chosen = root / resolve_split(split, split_dirs, source) if split_dirs else root
    if next((p for p in chosen.rglob("*") if p.is_file()), None) is None:
        raise ValueError(f"dataset {source!r} split {split!r} has no examples (no files under {chosen})")
    names = sorted({c for f in folders for c in _image_class_dirs(f)})  # union: same ids in every split
    kwargs: dict[str, Any] = {}
    if names:
        kwargs["features"] = Features({"image": ImageFeature(), "label": ClassLabel(names=names)})
    # explicit data_files: with data_dir, `datasets` would treat class folders named e.g. "test" as splits
    return datasets.load_dataset("imagefolder", data_files={"train": f"{chosen}/**"}, split="train",
                                 streaming=streaming, cache_dir=cache_dir, **kwargs)


def _unreachable_message(source: str, online: bool, error: BaseException) -> str:
    why = "could not be loaded from the Hub" if online else \
        "is not a local directory, the Hugging Face Hub is not reachable and it is not in the local cache"
    return (f"dataset {source!r} {why} ({type(error).__name__}: {error}). On a connected machine run "
            f"`datasets.load_dataset({source!r}).save_to_disk(DIR)` (or export an imagefolder tree with one "
            "folder per class), copy DIR here and pass its path as the source.")


def _load_hub(source: str, split: str, *, streaming: bool, data_dir: str | None,
              cache_dir: str | None, limit: int | None) -> AnyDataset:
    fallback = _FALLBACKS.get(_fallback_key(source))
    online = hub_reachable()
    if fallback is not None and not online:
        logger.warning("Hugging Face Hub not reachable: building %r from local files instead", source)
        return fallback(split, cache_dir, limit)
    try:
        with offline_mode(not online):
            try:
                available = datasets.get_dataset_split_names(source, data_dir=data_dir)
            except Exception:  # noqa: BLE001  (offline with a cache, gated ...): try the split as given
                available = None
            if available:
                split = resolve_split(split, available, source)
            return datasets.load_dataset(source, split=split, streaming=streaming, data_dir=data_dir,
                                         cache_dir=cache_dir)
    except (ConnectionError, FileNotFoundError, datasets.exceptions.DatasetsError) as e:
        if fallback is not None:
            logger.warning("loading %r from the Hub failed (%s): building it from local files instead", source, e)
            return fallback(split, cache_dir, limit)
        raise DatasetUnavailableError(_unreachable_message(source, online, e)) from e


def _take(ds: AnyDataset, limit: int | None) -> AnyDataset:
    if limit is None:
        return ds
    if isinstance(ds, IterableDataset):
        return ds.take(limit)
    return ds.select(range(min(limit, len(ds))))


_LOADERS: dict[str, Callable[..., AnyDataset]] = {
    "disk": _load_disk,
    "imagefolder": _load_imagefolder,
    "hub": _load_hub,
}


def load_image_dataset(source: str, split: str, *, streaming: bool = False, image_column: str | None = None,
                       label_column: str | None = None, data_dir: str | None = None,
                       cache_dir: str | None = None, limit: int | None = None) -> AnyDataset:
    """Load one split of an image-classification dataset as columns ``image`` and ``label``.

    ``source``: a Hub dataset name, an imagefolder directory (one folder per class, optionally under
    ``train/``, ``test/``, ``val/`` ...) or a ``save_to_disk`` directory. ``split`` is mapped onto
    the available ones (``validation`` -> ``test`` ...). ``limit`` keeps the first N examples
    (class-balanced for the Fashion-MNIST fallback). Class names: :func:`class_names`.
    """
    source = str(source)
    ds = _LOADERS[_source_kind(source)](source, split, streaming=streaming, data_dir=data_dir,
                                        cache_dir=cache_dir, limit=limit)
    ds = _take(normalise_columns(ds, image_column, label_column, source), limit)
    return ds.to_iterable_dataset() if streaming and isinstance(ds, Dataset) else ds
