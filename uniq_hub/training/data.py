"""Data layer: load an image-classification split from the Hub, an ``imagefolder`` tree or a
``save_to_disk`` directory; transforms built from the image processor (evaluation: the processor
itself; training: its input conversion and normalisation around a random geometry); labels
matched to a model's by name; a seeded ``(pixel_values, labels)`` loader.

Every loaded split is normalised to two columns, ``image`` and ``label``; when the class names are
known (``ClassLabel`` names or folder names) ``label`` is a ``ClassLabel`` carrying them, see
:func:`class_names`. Fashion-MNIST has an offline fallback: when the Hub cannot be reached it is
built from the idx files of the Debian package ``dataset-fashion-mnist`` and cached on disk.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import logging
import os
import random
import re
import shutil
import struct
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import datasets
import datasets.exceptions
import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, IterableDataset
from datasets import Image as ImageFeature
from huggingface_hub import constants
from PIL import Image
from timm.data.random_erasing import RandomErasing
from torch.utils.data import DataLoader, get_worker_info
from torchvision.transforms import v2

from ..model.configuration_uniq import UniQConfig
from ..model.constants import IMAGENET_MEAN, IMAGENET_STD
from ..model.image_processing_uniq import UniQImageProcessor, to_image_tensor

logger = logging.getLogger(__name__)

AnyDataset = Dataset | IterableDataset
Stats = tuple[tuple[float, ...], tuple[float, ...]]

__all__ = [
    "DatasetUnavailableError", "FASHION_MNIST_CLASSES", "NORMALIZATION", "TRANSFORM_STYLES", "ProcessorTransform",
    "check_batch_fits", "check_training_split", "class_names", "decode_image", "detect_columns", "eval_transform",
    "fashion_mnist_from_idx", "hub_reachable", "label_mapping", "load_image_dataset", "make_dataloader",
    "make_transform", "normalization_stats", "per_channel", "processor_for", "read_idx", "resolve_split",
    "check_val_split", "stratified_split", "train_transform", "validation_size",
]


class DatasetUnavailableError(OSError):
    """The source is neither a readable local directory nor loadable from the Hub (or its cache)."""


# ---------------------------------------------------------------------------------------------
# Splits and columns

# requested split -> names that may stand in for it, in order of preference
_SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "test"),
    "test": ("test", "validation", "valid", "val"),
}
_SPLIT_CANONICAL = {"training": "train", "val": "validation", "valid": "validation", "eval": "validation"}
_SPLIT_DIR_NAMES = frozenset({"train", "training", "test", "validation", "valid", "val"})

_IMAGE_NAMES = ("image", "img", "pixel_values", "images", "jpg", "png", "webp")
_LABEL_NAMES = ("label", "labels", "fine_label", "target", "targets", "class", "cls")


def resolve_split(split: str, available: Sequence[str], source: str = "dataset") -> str:
    """Map ``split`` onto one of ``available`` ("validation" -> "test" when there is no validation)."""
    wanted = _SPLIT_CANONICAL.get(split, split)
    for candidate in dict.fromkeys((split, *_SPLIT_ALIASES.get(wanted, (wanted,)))):
        if candidate in available:
            if candidate != split:
                logger.info("%s has no %r split; using %r", source, split, candidate)
            return candidate
    raise ValueError(f"{source!r} has no split {split!r}; available splits: {sorted(available)}")


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


def _normalise_columns(ds: AnyDataset, image_column: str | None, label_column: str | None,
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


def _take(ds: AnyDataset, limit: int | None) -> AnyDataset:
    if limit is None:
        return ds
    if isinstance(ds, IterableDataset):
        return ds.take(limit)
    return ds.select(range(min(limit, len(ds))))


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
    """``val_split`` is a count >= 1, a fraction in (0, 1) or 0 (no hold-out)."""
    if value < 0 or (value >= 1 and not float(value).is_integer()):
        raise ValueError(f"val_split must be a count >= 1, a fraction in (0, 1) or 0 (none), got {value!r}")


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


# ---------------------------------------------------------------------------------------------
# Hub reachability

_TRUE = {"1", "ON", "YES", "TRUE"}
_OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def _offline_by_env() -> bool:
    return any(os.environ.get(v, "").strip().upper() in _TRUE for v in _OFFLINE_ENV)


@functools.lru_cache(maxsize=8)
def _probe(endpoint: str, timeout: float) -> bool:
    answered: list[bool] = []

    def ask() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
            answered.append(True)
        except urllib.error.HTTPError:  # the server answered, even if with an error status
            answered.append(True)
        except Exception:  # noqa: BLE001  (DNS failure, refused, timed out ...)
            answered.append(False)

    thread = threading.Thread(target=ask, daemon=True)  # join() bounds DNS lookups too
    thread.start()
    thread.join(timeout)
    return bool(answered and answered[0])


def hub_reachable(timeout: float = 2.0) -> bool:
    """False under HF_HUB_OFFLINE / HF_DATASETS_OFFLINE, else a ``timeout``-bounded probe (cached per process)."""
    if _offline_by_env():
        return False

    return _probe(os.environ.get("HF_ENDPOINT", constants.ENDPOINT), timeout)


@contextlib.contextmanager
def _offline(enabled: bool) -> Iterator[None]:
    """Put ``datasets`` / ``huggingface_hub`` in offline mode (they read the env only at import)."""
    if not enabled:
        yield
        return

    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST from the Debian idx files

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_FALLBACK_FORMAT = "v1"


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an (optionally gzipped) idx file (the MNIST format) into an array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\0\0" or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an idx file")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return np.frombuffer(data, _IDX_DTYPES[data[2]], offset=4 + 4 * ndim).reshape(shape)


def _pgm(pixels: np.ndarray) -> bytes:
    """Binary PGM bytes of a uint8 HxW array (no codec: exact and fast; PIL opens it as mode "L")."""
    h, w = pixels.shape
    return b"P5 %d %d 255\n" % (w, h) + pixels.tobytes()


def _build_fashion_mnist(images: Path, labels: Path) -> Dataset:
    x, y = read_idx(images), read_idx(labels)
    if x.dtype != np.uint8 or x.shape[1:] != (28, 28) or len(x) != len(y):
        raise ValueError(f"unexpected Fashion-MNIST idx contents: {images} {x.shape}, {labels} {y.shape}")
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=list(FASHION_MNIST_CLASSES))})
    return Dataset.from_dict(
        {"image": [{"bytes": _pgm(p), "path": None} for p in x], "label": y.astype(np.int64)}, features=features)


def fashion_mnist_from_idx(split: str, *, root: str | os.PathLike | None = None,
                           cache_dir: str | os.PathLike | None = None) -> Dataset:
    """Fashion-MNIST ``split`` built from idx files (28x28 "L" images, the 10 official class names).

    ``root`` defaults to ``$UNIQ_HUB_FASHION_MNIST_DIR`` or the Debian location; the converted split
    is saved under ``cache_dir`` (default: the ``datasets`` cache) so later calls only memory-map it.
    """
    root = Path(root or os.environ.get("UNIQ_HUB_FASHION_MNIST_DIR", FASHION_MNIST_DIR))
    split = resolve_split(split, list(_FASHION_MNIST_FILES), f"fashion_mnist ({root})")
    files = [root / name for name in _FASHION_MNIST_FILES[split]]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DatasetUnavailableError(
            f"Fashion-MNIST idx files not found: {missing}; install the Debian package "
            "dataset-fashion-mnist (apt install dataset-fashion-mnist) or set UNIQ_HUB_FASHION_MNIST_DIR")
    key = hashlib.sha1(repr([_FALLBACK_FORMAT] + [(str(f), f.stat().st_size, f.stat().st_mtime_ns)
                                                  for f in files]).encode()).hexdigest()[:16]
    cache_root = Path(cache_dir or datasets.config.HF_DATASETS_CACHE).expanduser()
    target = cache_root / "uniq_hub" / f"fashion_mnist-{split}-{key}"
    if not (target / "state.json").is_file():
        logger.warning("converting Fashion-MNIST %s split from %s to %s (once)", split, root, target)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        _build_fashion_mnist(*files).save_to_disk(str(tmp))
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(target))


def _fashion_mnist_fallback(split: str, cache_dir: str | None, limit: int | None) -> Dataset:
    ds = fashion_mnist_from_idx(split, cache_dir=cache_dir)
    if limit is not None and limit < len(ds):
        ds = ds.select(balanced_indices(np.asarray(ds.data.column("label")), limit))
    return ds


# normalised Hub name -> offline builder(split, cache_dir, limit)
_FALLBACKS: dict[str, Callable[[str, str | None, int | None], Dataset]] = {
    "fashion_mnist": _fashion_mnist_fallback,
    "zalando_datasets/fashion_mnist": _fashion_mnist_fallback,
}


def _fallback_key(source: str) -> str:
    return source.strip().strip("/").lower().replace("-", "_")


# ---------------------------------------------------------------------------------------------
# Sources

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
    split_dirs = subdirs if subdirs and all(d.lower() in _SPLIT_DIR_NAMES for d in subdirs) else []
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
        with _offline(not online):
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
    ds = _take(_normalise_columns(ds, image_column, label_column, source), limit)
    return ds.to_iterable_dataset() if streaming and isinstance(ds, Dataset) else ds


# ---------------------------------------------------------------------------------------------
# Transforms

NORMALIZATION: dict[str, Stats] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
}
_STATS_ALIASES = {"imagenet_1k": "imagenet", "ilsvrc": "imagenet", "cifar_100": "cifar100",
                  "fashionmnist": "fashion_mnist"}


def _stats_key(name: str) -> str:
    key = name.strip().strip("/").lower().rsplit("/", 1)[-1].replace("-", "_")
    return _STATS_ALIASES.get(key, key)


def normalization_stats(name: str) -> Stats:
    """``(mean, std)`` of a known dataset (``imagenet``, ``ILSVRC/imagenet-1k``, ``fashion-mnist`` ...)."""
    key = _stats_key(name)
    if key not in NORMALIZATION:
        raise KeyError(f"no normalisation statistics for {name!r}; known: {sorted(NORMALIZATION)}")
    return NORMALIZATION[key]


def per_channel(values: Sequence[float], num_channels: int) -> list[float]:
    """Repeat a single value, or average RGB values for one channel."""
    values = list(values)
    if len(values) == num_channels:
        return values
    if len(values) == 1:
        return values * num_channels
    if num_channels == 1:
        return [sum(values) / len(values)]
    raise ValueError(f"{len(values)} normalisation values for {num_channels} channels")


def processor_for(*, num_channels: int = 3, image_size: int = 224, mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None, crop_pct: float | None = None) -> UniQImageProcessor:
    """The image processor a model with these inputs ships (``UniQConfig``'s defaults fill the rest)."""
    config = UniQConfig(num_channels=num_channels, image_size=image_size, crop_pct=crop_pct,
                        image_mean=None if mean is None else per_channel(mean, num_channels),
                        image_std=None if std is None else per_channel(std, num_channels))
    return UniQImageProcessor.from_model_config(config)


class ProcessorTransform:
    """One image -> ``pixel_values`` (C, H, W) through an image processor: the evaluation transform,
    exactly what ``pipeline("image-classification")`` feeds the model (picklable)."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, image: Any) -> torch.Tensor:
        return self.processor(image, return_tensors="pt")["pixel_values"][0]

    def __repr__(self) -> str:
        return f"ProcessorTransform({type(self.processor).__name__})"


class ProcessorInput:
    """Any image -> ``(C, H, W)`` in 0..255 (uint8 or float), converted as the processor converts it."""

    def __init__(self, processor: UniQImageProcessor) -> None:
        self.num_channels = int(processor.num_channels)

    def __call__(self, image: Any) -> torch.Tensor:
        return to_image_tensor(image, self.num_channels)


class ProcessorResizeCrop(torch.nn.Module):
    """The processor's geometry: shortest edge to ``size``, centre crop ``crop_size``."""

    def __init__(self, processor: UniQImageProcessor) -> None:
        super().__init__()
        self.processor = processor

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        p = self.processor
        return p.center_crop(p.resize(image, p.size, p.resample), p.crop_size)


class ProcessorNormalize(torch.nn.Module):
    """The processor's rescale (1/255) and normalisation, with its own arithmetic."""

    def __init__(self, processor: UniQImageProcessor) -> None:
        super().__init__()
        self.processor = processor

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        p = self.processor
        return p.rescale_and_normalize(image[None], p.do_rescale, p.rescale_factor, p.do_normalize,
                                       p.image_mean, p.image_std)[0]


def _imagenet_augment(processor: UniQImageProcessor) -> list[Callable]:
    """The paper's ImageNet training crop: RandomResizedCrop + flip."""
    side = (processor.crop_size.height, processor.crop_size.width)
    return [v2.RandomResizedCrop(side, antialias=True), v2.RandomHorizontalFlip()]


def _small_augment(processor: UniQImageProcessor, padding: int = 4) -> list[Callable]:
    """CIFAR style: the evaluation geometry, then RandomCrop(size, padding) + flip."""
    side = (processor.crop_size.height, processor.crop_size.width)
    return [ProcessorResizeCrop(processor), v2.RandomCrop(side, padding=padding), v2.RandomHorizontalFlip()]


# training augmentation style -> geometry steps (between the processor's input conversion and normalisation)
TRANSFORM_STYLES: dict[str, Callable[[UniQImageProcessor], list[Callable]]] = {
    "imagenet": _imagenet_augment,
    "small": _small_augment,
    "cifar": _small_augment,
}


def train_transform(processor: UniQImageProcessor, style: str, random_erasing: float = 0.0) -> v2.Compose:
    """The training transform of ``processor``: its input conversion, the ``style``'s random
    geometry (:data:`TRANSFORM_STYLES`), its normalisation, then (``random_erasing`` > 0) timm's
    ``RandomErasing`` with that probability on the normalised image (erased pixels set to 0, the mean)."""
    if style not in TRANSFORM_STYLES:
        raise ValueError(f"unknown transform style {style!r}; expected one of {sorted(TRANSFORM_STYLES)}")
    if not 0.0 <= random_erasing <= 1.0:
        raise ValueError(f"random_erasing is a probability in [0, 1], got {random_erasing!r}")
    erase = [RandomErasing(random_erasing, mode="const", device="cpu")] if random_erasing else []
    return v2.Compose([ProcessorInput(processor), *TRANSFORM_STYLES[style](processor), ProcessorNormalize(processor),
                       *erase])


def eval_transform(processor: Any) -> ProcessorTransform:
    """The evaluation transform: the image processor itself."""
    return ProcessorTransform(processor)


def make_transform(style: str, train: bool, **kwargs: Any) -> Callable[[Any], torch.Tensor]:
    """Training (``style``) or evaluation transform of :func:`processor_for` ``(**kwargs)``."""
    if style not in TRANSFORM_STYLES:
        raise ValueError(f"unknown transform style {style!r}; expected one of {sorted(TRANSFORM_STYLES)}")
    processor = processor_for(**kwargs)
    return train_transform(processor, style) if train else eval_transform(processor)


# ---------------------------------------------------------------------------------------------
# Labels


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


def check_training_split(ds: AnyDataset, names: Sequence[str] | None, source: str, split: str,
                         num_examples: int) -> None:
    """Refuse a split a classifier cannot be trained on: no examples, or a single class."""
    where = f"dataset {source!r} split {split!r}"
    if num_examples == 0:
        raise ValueError(f"{where} has no examples")
    if names is not None and len(names) < 2:
        raise ValueError(f"{where} has a single class {list(names)}: a classifier needs at least two")
    if isinstance(ds, Dataset):
        present = sorted(set(ds.unique("label")))
        if len(present) < 2:
            shown = [names[i] for i in present] if names else present
            raise ValueError(f"{where}: every example has the same class {shown}: a classifier needs at least two")


def check_batch_fits(num_examples: int, batch_size: int, source: str, split: str) -> None:
    """Refuse a training split smaller than one batch (full batches only: it would give no step)."""
    if num_examples < batch_size:
        raise ValueError(f"dataset {source!r} split {split!r} has {num_examples} examples, fewer than one batch of "
                         f"{batch_size}: lower --batch-size or add data")


# ---------------------------------------------------------------------------------------------
# DataLoader


def decode_image(value: Any, feature: ImageFeature | None = None, source: str = "dataset") -> Any:
    """An undecoded ``Image`` value (``{"bytes", "path"}``) decoded by ``datasets``; errors name the
    file (or the dataset when the image has no path). Anything else is returned as is."""
    if not isinstance(value, dict):
        return value
    try:
        return (feature or ImageFeature()).decode_example(value)
    except Exception as err:  # noqa: BLE001  (PIL / fsspec raise many types)
        where = value.get("path") or f"an image of {len(value.get('bytes') or b'')} bytes"
        raise ValueError(f"{where} (dataset {source!r}): not a readable image ({type(err).__name__}: {err})") from err


class _Collate:
    """Rows -> ``(pixel_values NCHW float, labels long)``. In the main process random transforms draw
    from a private seeded generator (global RNG untouched); in workers the DataLoader seeds them.
    Images are decoded here, so a corrupt one is named; labels go through ``label_map`` when given."""

    def __init__(self, transform: Callable, image_column: str | int, label_column: str | int, seed: int,
                 label_map: Sequence[int] | None = None, source: str = "dataset"):
        self.transform, self.image_column, self.label_column = transform, image_column, label_column
        self.label_map, self.source = None if label_map is None else list(label_map), source
        self.generator = torch.Generator().manual_seed(seed)

    def start_epoch(self, seed: int, batches_done: int = 0) -> None:
        """Augmentation seeds as a function of ``(seed, batch)``: reseed, then skip the batches done
        (a resumed epoch draws what the uninterrupted one drew; main-process loading)."""
        self.generator.manual_seed(seed)
        for _ in range(batches_done):  # one draw per batch, as __call__ draws
            torch.randint(0, 2**62, (1,), generator=self.generator)

    def _label(self, value: Any) -> int:
        label = int(value)
        return label if self.label_map is None else self.label_map[label]

    def _apply(self, rows: list) -> tuple[torch.Tensor, torch.Tensor]:
        images = [decode_image(row[self.image_column], source=self.source) for row in rows]
        pixels = torch.stack([torch.as_tensor(self.transform(image)) for image in images])
        labels = torch.tensor([self._label(row[self.label_column]) for row in rows], dtype=torch.long)
        return pixels.float(), labels

    def __call__(self, rows: list) -> tuple[torch.Tensor, torch.Tensor]:
        if get_worker_info() is not None:
            return self._apply(rows)
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        python_state = random.getstate()  # timm's RandomErasing draws from Python's RNG
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                random.seed(seed)
                return self._apply(rows)
        finally:
            random.setstate(python_state)


def make_dataloader(dataset: AnyDataset | torch.utils.data.Dataset, transform: Callable, batch_size: int,
                    shuffle: bool, num_workers: int = 0, seed: int = 0, drop_last: bool = False, *,
                    image_column: str | None = None, label_column: str | None = None,
                    shuffle_buffer: int = 10_000, label_map: Sequence[int] | None = None,
                    source: str = "dataset") -> DataLoader:
    """DataLoader of ``(pixel_values, labels)`` batches, deterministic given ``seed``.

    ``dataset``: a map-style or streaming ``datasets`` dataset (columns detected as in
    :func:`load_image_dataset`), or any torch dataset of ``(image, label)`` pairs. Streaming
    datasets are shuffled with a ``shuffle_buffer``-sized buffer. ``label_map``: dataset label id ->
    model label id (:func:`label_mapping`). ``source`` names the dataset in errors.
    """
    if isinstance(dataset, (Dataset, IterableDataset)):
        image, label = detect_columns(dataset, image_column, label_column)
        dataset = dataset.select_columns([image, label])  # do not decode unused image columns
        feature = (dataset.features or {}).get(image)
        if isinstance(feature, ImageFeature) and feature.decode and feature.mode is None:
            dataset = dataset.cast_column(image, ImageFeature(decode=False))  # decoded (and named) in _Collate
    else:
        image, label = 0, 1
    generator = torch.Generator().manual_seed(seed)
    collate = _Collate(transform, image, label, seed, label_map=label_map, source=source)
    kwargs: dict[str, Any] = dict(batch_size=batch_size, num_workers=num_workers, drop_last=drop_last,
                                  collate_fn=collate, generator=generator, persistent_workers=False)
    if isinstance(dataset, torch.utils.data.IterableDataset):
        if shuffle and isinstance(dataset, IterableDataset):
            dataset = dataset.shuffle(seed=seed, buffer_size=shuffle_buffer)
        return DataLoader(dataset, **kwargs)
    return DataLoader(dataset, shuffle=shuffle, **kwargs)
