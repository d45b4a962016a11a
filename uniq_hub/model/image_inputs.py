"""What an input image is, without torch: PIL modes and array dtypes with the value of white, the
colour-to-gray weights, and file / URL opening. One contract for ``UniQImageProcessor``
(:mod:`.image_processing_uniq`) and the torch-free ``OnnxImageClassifier``
(:mod:`uniq_hub.deploy.onnx_runtime`); it imports numpy, PIL and the standard library only.

8-bit PIL modes are read as PIL's ``convert("L")`` / ``convert("RGB")`` give them (alpha dropped),
as transformers' ``load_image`` does before any image processor runs; deep modes and arrays are
read as they are, scaled by the value that maps to white.
"""

from __future__ import annotations

import io
import math
import os
import urllib.error
import urllib.request
from typing import Any

import numpy as np
from PIL import Image, ImageOps

# ITU-R 601 luma in PIL's integer form: gray = (299 R + 587 G + 114 B) / 1000.
LUMA = (299.0, 587.0, 114.0)
# 8-bit PIL modes read as "L" (alpha dropped); the RGB ones are read as PIL's convert("RGB") gives them.
GRAY_PIL_MODES = frozenset({"1", "L", "LA"})
RGB_PIL_MODES = frozenset({"P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "HSV", "LAB"})
# PIL modes read as they are, with the value that maps to white.
# None: 32-bit integers, white is 65535 unless no value exceeds 255 (convert("I") of an 8-bit image).
PIL_DEEP_MODES = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "I": None, "F": 1.0}
# PIL modes of gray images (alpha aside): a model inferred from such an image takes one channel.
ONE_CHANNEL_PIL_MODES = GRAY_PIL_MODES | frozenset(PIL_DEEP_MODES)
# Array dtype (kind, item size) -> white (None as above).
ARRAY_WHITE = {("u", 1): 255.0, ("b", 1): 1.0, ("u", 2): 65535.0, ("i", 2): 65535.0, ("i", 4): None,
               ("i", 8): None, ("u", 4): None, ("f", 2): 1.0, ("f", 4): 1.0, ("f", 8): 1.0}
FETCH_TIMEOUT = 10.0  # seconds: default timeout of URL fetches
_READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def normalization(mean: Any, std: Any, num_channels: int, where: str) -> tuple[list[float], list[float]]:
    """A processor config's ``image_mean`` / ``image_std`` as one float per channel (a number stands for
    every channel, as transformers accepts); ``ValueError`` naming ``where`` and the key unless each holds
    ``num_channels`` numbers, every ``image_std`` positive and finite, every ``image_mean`` finite. The one
    check of the image processor, the ONNX classifier and publish."""
    out = []
    for key, value, ok, expected in (("image_mean", mean, math.isfinite, "finite"),
                                     ("image_std", std, lambda v: math.isfinite(v) and v > 0, "positive and finite")):
        values = [value] * num_channels if isinstance(value, (int, float)) and not isinstance(value, bool) else value
        numbers = isinstance(values, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if not numbers or len(values) != num_channels:
            raise ValueError(f"{where}: {key} must hold {num_channels} numbers (or one for every channel), "
                             f"got {value!r}")
        if not all(ok(float(v)) for v in values):
            raise ValueError(f"{where}: {key} must be {expected}, got {value!r}")
        out.append([float(v) for v in values])
    return out[0], out[1]


def _white_of_wide_ints(array: np.ndarray) -> float:
    return 255.0 if array.size == 0 or float(array.max()) <= 255 else 65535.0


def pil_to_array(image: Image.Image) -> tuple[np.ndarray, float]:
    """Pixels of a PIL image as ``(H, W[, C])`` (uint8 for 8-bit modes, else float32) and the value of white."""
    if image.mode in PIL_DEEP_MODES:
        array, white = np.asarray(image), PIL_DEEP_MODES[image.mode]
        return array.astype(np.float32), _white_of_wide_ints(array) if white is None else white
    target = "L" if image.mode in GRAY_PIL_MODES else "RGB" if image.mode in RGB_PIL_MODES else None
    if target is None:
        raise ValueError(f"unsupported PIL image mode {image.mode!r} (size {image.size})")
    try:
        converted = image if image.mode == target else image.convert(target)
    except ValueError as err:
        raise ValueError(f"cannot convert a PIL image of mode {image.mode!r} to {target}: {err}") from err
    return np.asarray(converted), 255.0


def array_white(array: np.ndarray) -> float:
    """The value that maps to white in an image array of this dtype; ``ValueError`` for other dtypes."""
    key = (array.dtype.kind, array.dtype.itemsize)
    if key not in ARRAY_WHITE:
        raise ValueError(f"unsupported image array dtype {array.dtype}")
    white = ARRAY_WHITE[key]
    return _white_of_wide_ints(array) if white is None else white


def load_image_file(path: str | os.PathLike) -> Image.Image:
    """Open an image file with PIL (mode kept, EXIF orientation applied); errors name the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such image file")
    try:
        with Image.open(path) as image:
            image.load()
            return ImageOps.exif_transpose(image)
    except _READ_ERRORS as err:
        raise ValueError(f"{path}: not a readable image file ({err})") from err


def fetch_url(url: str, timeout: float = FETCH_TIMEOUT) -> Image.Image:
    """Download an image with a ``timeout`` (seconds); errors name the URL."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            payload = response.read()
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ValueError(f"{url}: could not fetch the image within {timeout:g} s ({reason})") from err
    try:
        with Image.open(io.BytesIO(payload)) as image:
            image.load()
            return ImageOps.exif_transpose(image)
    except _READ_ERRORS as err:
        raise ValueError(f"{url}: not a readable image ({err})") from err


def open_image(source: str | os.PathLike, timeout: float = FETCH_TIMEOUT) -> Image.Image:
    """An http(s) URL fetched with :func:`fetch_url` (within ``timeout`` seconds), else a file opened
    with :func:`load_image_file`."""
    if isinstance(source, str) and source.startswith(("http://", "https://")):
        return fetch_url(source, timeout)
    return load_image_file(source)


__all__ = [
    "ARRAY_WHITE", "FETCH_TIMEOUT", "GRAY_PIL_MODES", "LUMA", "ONE_CHANNEL_PIL_MODES", "PIL_DEEP_MODES",
    "RGB_PIL_MODES", "array_white", "fetch_url", "load_image_file", "open_image", "pil_to_array",
]
