"""Fashion-MNIST from the idx files of the Debian package ``dataset-fashion-mnist``: the offline
fallback of the Hub dataset (:func:`fashion_mnist_from_idx`, converted once and cached on disk)."""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import struct
import tempfile
from pathlib import Path

import datasets
import numpy as np
from datasets import ClassLabel, Dataset, Features
from datasets import Image as ImageFeature

from .availability import DatasetUnavailableError
from .splits import balanced_indices, resolve_split

logger = logging.getLogger(__name__)

__all__ = ["FASHION_MNIST_CLASSES", "FASHION_MNIST_DIR", "fashion_mnist_from_idx", "fashion_mnist_subset", "read_idx"]

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


def fashion_mnist_subset(split: str, cache_dir: str | None, limit: int | None) -> Dataset:
    """:func:`fashion_mnist_from_idx`, its first ``limit`` examples class-balanced (all when ``limit`` is None)."""
    ds = fashion_mnist_from_idx(split, cache_dir=cache_dir)
    if limit is not None and limit < len(ds):
        ds = ds.select(balanced_indices(np.asarray(ds.data.column("label")), limit))
    return ds
