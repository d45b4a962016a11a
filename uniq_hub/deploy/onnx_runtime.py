"""Run an exported ``onnx/model.onnx`` without torch: :class:`OnnxImageClassifier` (numpy, PIL and
onnxruntime / openvino only), with ``UniQImageProcessor``'s preprocessing in numpy.

The runtimes and what "exact" means are :mod:`.onnx_backends`; the checks a folder's graph passes
before it runs are :mod:`.onnx_graph`; what an input image is (modes, dtypes, file and URL opening)
is :mod:`uniq_hub.model.image_inputs`, shared with the image processor. Nothing here imports torch.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..model.constants import MAX_IMAGE_SIZE
from ..model.image_inputs import LUMA, array_white, normalization, open_image, pil_to_array
from .onnx_backends import available_backends, exact_backends_of, load_backend
from .onnx_graph import ONNX_FILE, check_graph, graph_num_labels, inside_folder, read_model_json

__all__ = ["OnnxImageClassifier", "check_threads", "resolve_folder"]

_LUMA = np.asarray(LUMA, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Preprocessing: UniQImageProcessor's contract in numpy / PIL
# ---------------------------------------------------------------------------------------------


def _to_hwc(image: Any) -> np.ndarray:
    """Any supported image -> ``(H, W, C)`` float32 in 0..255, C in 1..4."""
    if isinstance(image, (str, os.PathLike)):
        image = open_image(image)
    if isinstance(image, Image.Image):
        array, white = pil_to_array(image)
        array = array.astype(np.float32)
        array = array[..., None] if array.ndim == 2 else array
    else:
        array = np.asarray(image)
        white = array_white(array)
        array = array.astype(np.float32)
        if array.ndim == 2:
            array = array[..., None]
        elif array.ndim == 3 and array.shape[0] in (1, 2, 3, 4) and array.shape[-1] not in (1, 2, 3, 4):
            array = array.transpose(1, 2, 0)  # channels first
        if array.ndim != 3:
            raise ValueError(f"an image must have 2 or 3 dimensions (H, W[, C] or C, H, W), got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"an image must have pixels, got an empty one of shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"the image holds NaN or infinite pixel values (shape {array.shape})")
    return np.clip(array, 0, white) * np.float32(255.0 / white)


def _match_channels(x: np.ndarray, num_channels: int) -> np.ndarray:
    """``(H, W, C)`` with C in 1 (L), 2 (LA), 3 (RGB), 4 (RGBA) -> ``num_channels`` (alpha dropped)."""
    if x.shape[-1] in (2, 4):
        x = x[..., :-1]
    if x.shape[-1] not in (1, 3):
        raise ValueError(f"an image must have 1-4 channels (L, LA, RGB, RGBA), got {x.shape[-1]}")
    if x.shape[-1] == num_channels:
        return x
    if num_channels == 3:
        return np.repeat(x, 3, axis=-1)
    return ((x @ _LUMA) / np.float32(1000.0))[..., None].astype(np.float32)


def _resize(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear, antialiased (PIL's float mode: the algorithm torchvision's antialias ports)."""
    if x.shape[:2] == (height, width):
        return x
    channels = [
        Image.fromarray(np.ascontiguousarray(x[..., c]), mode="F").resize((width, height), Image.BILINEAR)
        for c in range(x.shape[-1])
    ]
    return np.stack([np.asarray(c, dtype=np.float32) for c in channels], axis=-1)


class _Preprocessor:
    """Resize the shortest edge, centre-crop, rescale, normalise (``preprocessor_config.json``)."""

    def __init__(self, config: dict[str, Any], where: str) -> None:
        try:
            self.num_channels = int(config.get("num_channels", 3))
            self.shortest_edge = int(config["size"]["shortest_edge"]) if config.get("do_resize", True) else None
            crop = config["crop_size"] if config.get("do_center_crop", True) else None
            self.crop = None if crop is None else (int(crop["height"]), int(crop["width"]))
            self.rescale = float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else 1.0
            normalize = config.get("do_normalize", True)
            mean, std = (config["image_mean"], config["image_std"]) if normalize else (0.0, 1.0)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                f"{where}: missing or invalid field {err} (expected size.shortest_edge, crop_size, "
                "image_mean, image_std, num_channels)"
            ) from err
        if self.num_channels not in (1, 3):
            raise ValueError(f"{where}: num_channels must be 1 or 3, got {self.num_channels}")
        mean, std = normalization(mean, std, self.num_channels, where)
        self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        if not (math.isfinite(self.rescale) and self.rescale > 0):
            raise ValueError(f"{where}: rescale_factor must be positive and finite, got {self.rescale}")
        for name, side in (("size.shortest_edge", self.shortest_edge), *zip(("crop height", "crop width"),
                                                                              self.crop or ())):
            if side is not None and not 1 <= side <= MAX_IMAGE_SIZE:
                raise ValueError(f"{where}: {name} must be in 1..{MAX_IMAGE_SIZE} pixels, got {side}")

    def __call__(self, image: Any) -> np.ndarray:
        x = _match_channels(_to_hwc(image), self.num_channels)
        if self.shortest_edge:
            h, w = x.shape[:2]
            short, long = (h, w) if h <= w else (w, h)
            new_long = int(self.shortest_edge * long / short)
            x = _resize(x, *((self.shortest_edge, new_long) if h <= w else (new_long, self.shortest_edge)))
        if self.crop:
            h, w = x.shape[:2]
            ch, cw = self.crop
            if ch > h or cw > w:
                raise ValueError(f"image of size {h}x{w} is smaller than the crop {ch}x{cw}")
            top, left = (h - ch) // 2, (w - cw) // 2
            x = x[top : top + ch, left : left + cw]
        x = (x * np.float32(self.rescale) - self.mean) / self.std
        return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# The classifier
# ---------------------------------------------------------------------------------------------


def resolve_folder(
    folder_or_repo: str | os.PathLike, revision: str | None = None, token: Any = None, timeout: float | None = None
) -> Path:
    """A local folder as is, else the three files the classifier needs from the Hub (each request
    within ``timeout`` seconds, :func:`uniq_hub.network.default_timeout` by default)."""
    if os.path.isdir(folder_or_repo):
        return Path(folder_or_repo)
    name = os.fspath(folder_or_repo)
    if os.path.isabs(name) or name.startswith(".") or name.count("/") > 1 or os.path.exists(name):
        raise FileNotFoundError(f"{name}: no such model folder (and not a Hub repo id ORG/NAME)")
    from huggingface_hub import snapshot_download

    from ..network import default_timeout, hub_timeout

    files = ["config.json", "preprocessor_config.json", ONNX_FILE]
    timeout = default_timeout() if timeout is None else timeout
    with hub_timeout(timeout):
        return Path(snapshot_download(os.fspath(folder_or_repo), revision=revision, token=token, allow_patterns=files,
                                      etag_timeout=timeout))


class OnnxImageClassifier:
    """Image classification with a model folder's ``onnx/model.onnx``, without torch.

    >>> clf = OnnxImageClassifier.from_pretrained("path/or/repo-id")      # doctest: +SKIP
    >>> clf("shoe.png", top_k=3)                                           # doctest: +SKIP
    [{'label': 'Sneaker', 'score': 0.97}, ...]
    """

    def __init__(self, folder: str | os.PathLike, backend: str | None = None, threads: int = 2) -> None:
        folder = Path(folder)
        check_threads(threads)
        config = read_model_json(inside_folder(folder, folder / "config.json", "config"))
        processor_file = inside_folder(folder, folder / "preprocessor_config.json", "processor config")
        self.preprocess = _Preprocessor(read_model_json(processor_file), str(processor_file))
        if config.get("num_channels", self.preprocess.num_channels) != self.preprocess.num_channels:
            raise ValueError(f"{processor_file}: num_channels {self.preprocess.num_channels} disagrees with "
                             f"config.json's {config.get('num_channels')}")
        self.path = folder / ONNX_FILE
        graph = check_graph(folder, self.path)  # inside the folder, intact, exported from the folder's weights
        self.labels = _labels(config, graph_num_labels(graph), folder)
        if backend is None:
            installed = available_backends()
            verified = exact_backends_of(graph)
            backend = next((b for b in verified if b in installed), None)
            if backend is None:
                raise ValueError(
                    f"{self.path}: none of the backends verified exact for this file ({verified or 'none recorded'}) "
                    f"is installed ({installed}); pass backend= explicitly or re-export with `uniq-hub export-onnx`"
                )
        self.backend = backend
        self._run = load_backend(self.path, backend, threads)

    @classmethod
    def from_pretrained(
        cls,
        folder_or_repo: str | os.PathLike,
        backend: str | None = None,
        threads: int = 2,
        revision: str | None = None,
        token: Any = None,
        timeout: float | None = None,
    ) -> "OnnxImageClassifier":
        """Load from a local folder or a Hub repo id (downloads only the three files needed, each
        Hub request within ``timeout`` seconds, 60 by default). A Hub repo's graph is checked
        against its own checksum; its binding to the weights was checked when it was published."""
        check_threads(threads)
        return cls(resolve_folder(folder_or_repo, revision, token, timeout), backend=backend, threads=threads)

    def logits(self, images: Any, batch_size: int = 32) -> np.ndarray:
        """``(N, num_labels)`` float32 logits of one image or a list of them (paths, URLs, PIL, arrays)."""
        batch = [self.preprocess(im) for im in _as_list(images)]
        if not batch:
            raise ValueError("no images given")
        return np.concatenate([self.run(np.stack(batch[i : i + batch_size])) for i in range(0, len(batch), batch_size)])

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        """Logits of already preprocessed ``(N, C, H, W)`` float32 pixel values."""
        return self._run(np.ascontiguousarray(pixel_values, dtype=np.float32))

    def __call__(self, images: Any, top_k: int | None = 5, return_logits: bool = False) -> Any:
        """Pipeline-style ``[{"label", "score"}, ...]`` (a list of them for a list of images);
        with ``return_logits`` a pair ``(results, logits)``. ``top_k`` as ``pipeline`` takes it:
        ``None`` is 5, more than the number of labels gives them all, 0 gives ``[]``."""
        top_k = 5 if top_k is None else top_k
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0, got {top_k!r}")
        logits = self.logits(images)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = shifted / shifted.sum(axis=1, keepdims=True)
        k = min(int(top_k), probs.shape[1])
        results = [
            [{"label": self._label(i), "score": float(p[i])} for i in np.argsort(-p, kind="stable")[:k]] for p in probs
        ]
        out = results if isinstance(images, (list, tuple)) else results[0]
        return (out, logits) if return_logits else out

    def _label(self, index: int) -> str:
        return self.labels[index]


def check_threads(threads: Any) -> int:
    """``threads`` when it is an integer in 1..the CPUs this process may use, else ``ValueError``
    (a runtime asked for thousands of threads stalls instead of failing)."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    available = max(available, 2)  # the default (2) stays valid on a 1-CPU machine
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or not 1 <= threads <= available:
        raise ValueError(f"threads must be an integer in 1..{available} (the CPUs available), got {threads!r}")
    return int(threads)


def _labels(config: dict[str, Any], outputs: int | None, folder: Path) -> list[str]:
    """The class names, one per graph output, from ``config.json``'s ``id2label`` (and
    ``num_labels``); any disagreement between them and the graph is a ``ValueError``."""
    id2label = config.get("id2label") or {}
    try:
        labels = {int(k): str(v) for k, v in id2label.items()}
    except (AttributeError, TypeError, ValueError):
        raise ValueError(f"{folder / 'config.json'}: id2label must map class indices to names") from None
    count = config.get("num_labels", len(labels)) if labels else config.get("num_labels")
    if count is None and outputs is None:
        raise ValueError(f"{folder / 'config.json'}: no id2label / num_labels, and the graph's output size is unset")
    count = count if count is not None else outputs
    if sorted(labels) != list(range(len(labels))) or (labels and len(labels) != count):
        raise ValueError(f"{folder / 'config.json'}: id2label keys {sorted(labels)[:5]}..., expected 0..{count - 1}")
    if outputs is not None and outputs != count:
        raise ValueError(f"{folder / ONNX_FILE}: the graph has {outputs} outputs but config.json names {count} labels; "
                         "they must agree (export the graph from this folder's model)")
    return [labels.get(i, f"LABEL_{i}") for i in range(count)]


def _as_list(images: Any) -> Sequence[Any]:
    if isinstance(images, (list, tuple)):
        return images
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    return [images]
