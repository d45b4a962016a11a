"""Run an exported ``onnx/model.onnx`` without torch: backends, exactness checks and
:class:`OnnxImageClassifier` (numpy, PIL and onnxruntime / openvino only).

Backends (``BACKENDS``) all compute the same exact graph; what each needs to stay exact:

* ``reference``: ``onnx.reference.ReferenceEvaluator`` (numpy): the definition of the graph.
* ``onnxruntime``: its ``WeightBiasQuantization`` rewrite quantizes a float conv bias (BatchNorm
  folded into the conv) to int32 and so changes results; it is disabled through the session's
  ``disabled_optimizers`` (graph optimizations otherwise stay on).
* ``openvino``: ``INFERENCE_PRECISION_HINT=f32`` (its default on CPUs with bf16 computes the
  float parts in bf16); the quantized convolutions still run in int8.

A backend counts as exact for a model when :func:`compare_logits` against the reference is within
:data:`EXACT_BOUNDS` (only one-level flips at rounding boundaries differ); ``export_onnx`` records
the backends it verified in the file's metadata, and the classifier defaults to the fastest of them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageOps

from ..model.constants import ONNX_FILE

__all__ = [
    "BACKENDS",
    "EXACT_BOUNDS",
    "FASTEST_FIRST",
    "META_EXACT_BACKENDS",
    "META_FORMAT",
    "META_SOURCE",
    "ONNX_FILE",
    "GraphError",
    "META_GRAPH",
    "OnnxImageClassifier",
    "available_backends",
    "check_graph",
    "graph_checksum",
    "compare_logits",
    "load_backend",
    "within_bounds",
]

META_FORMAT = "uniq_hub.format"  # metadata_props key: the graph format ("exact-qdq-1")
META_SOURCE = "uniq_hub.source_sha256"  # hex sha256 checksum of the weights it was exported from
META_EXACT_BACKENDS = "uniq_hub.exact_backends"  # JSON list of the backends verified exact at export
META_GRAPH = "uniq_hub.graph_sha256"  # hex sha256 of the graph itself (graph_checksum: all but the metadata)
MAX_IMAGE_SIZE = 2048  # pixels, a side of the model input (constants.MAX_IMAGE_SIZE; this module is torch-free)
EXACT_FORMAT = "exact-qdq-1"  # META_FORMAT of the graphs onnx_export writes
CHECKSUM_KEY = "uniq_hub.sha256"  # the weights' checksum tensor (model/packing.CHECKSUM_KEY)
WEIGHTS_INDEX = "model.safetensors.index.json"
INPUT_NAME, OUTPUT_NAME = "pixel_values", "logits"
# Measured here (docs/deploy.md): OpenVINO runs the exact graph's int8 convolutions, ONNX Runtime
# dequantizes and runs them in float.
FASTEST_FIRST = ("openvino", "onnxruntime", "reference")
# The bounds for "exact": argmax agreement, median over images of max |difference| / max |logit|.
EXACT_BOUNDS = {"argmax_agreement": 0.999, "median_rel_max_diff": 1e-3}
_LUMA = np.array([299.0, 587.0, 114.0], dtype=np.float32)  # PIL's integer ITU-R 601 weights, / 1000


# ---------------------------------------------------------------------------------------------
# Backends: path -> callable(batch float32 NCHW) -> logits
# ---------------------------------------------------------------------------------------------


def _reference(path: str, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(path)
    return lambda x: np.asarray(evaluator.run(None, {INPUT_NAME: x})[0])


def ort_session(
    path: str, threads: int = 2, optimized_model_filepath: str | None = None, optimize: bool = True, spin: bool = True
):
    """An ONNX Runtime CPU session that stays exact (``WeightBiasQuantization`` disabled).

    ``optimize=False``: ``ORT_DISABLE_ALL`` (the graph as written, a second reference).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    if not spin:  # idle worker threads sleep instead of spinning (fairer beside other runtimes in one process)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if optimized_model_filepath:
        options.optimized_model_filepath = optimized_model_filepath
    return ort.InferenceSession(
        path, options, providers=["CPUExecutionProvider"], disabled_optimizers=["WeightBiasQuantization"]
    )


def _onnxruntime(path: str, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    session = ort_session(path, threads)
    return lambda x: session.run(None, {INPUT_NAME: x})[0]


def openvino_model(path: str, threads: int = 2, precision: str | None = "f32"):
    """An OpenVINO CPU compiled model; ``precision=None`` keeps OpenVINO's default (bf16 here)."""
    import openvino as ov

    config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    return ov.Core().compile_model(path, "CPU", config)


def _openvino(path: str, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    request = openvino_model(path, threads).create_infer_request()
    return lambda x: np.array(request.infer({0: x})[0])


BACKENDS: dict[str, Callable[[str, int], Callable[[np.ndarray], np.ndarray]]] = {
    "reference": _reference,
    "onnxruntime": _onnxruntime,
    "openvino": _openvino,
}
_MODULES = {"reference": "onnx", "onnxruntime": "onnxruntime", "openvino": "openvino"}


def available_backends() -> list[str]:
    """Backends whose package is installed, fastest first."""
    return [b for b in FASTEST_FIRST if importlib.util.find_spec(_MODULES[b]) is not None]


def load_backend(path: str | os.PathLike, backend: str, threads: int = 2) -> Callable[[np.ndarray], np.ndarray]:
    """``fn(x) -> logits`` running the ONNX file at ``path`` on ``backend``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown ONNX backend {backend!r}; expected one of {sorted(BACKENDS)}")
    if backend not in available_backends():
        raise ImportError(
            f"backend {backend!r} needs the {_MODULES[backend]!r} package: pip install 'uniq_hub[onnx]'"
            + (" 'uniq_hub[openvino]'" if backend == "openvino" else "")
        )
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such ONNX file")
    try:
        return BACKENDS[backend](path, threads)
    except Exception as err:  # each runtime raises its own error types for an unreadable graph
        raise ValueError(
            f"{path}: {backend} cannot load this ONNX file (corrupted or not an ONNX model?): {err}"
        ) from err


# ---------------------------------------------------------------------------------------------
# Exactness: one-level flips only
# ---------------------------------------------------------------------------------------------


def compare_logits(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Argmax agreement and the median / worst over images of ``max |difference| / max |logit|``."""
    reference, other = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    if reference.shape != other.shape or reference.ndim != 2:
        raise ValueError(
            f"logits must be two arrays of the same (batch, classes) shape, got {reference.shape} and {other.shape}"
        )
    scale = np.maximum(np.abs(reference).max(axis=1), np.finfo(np.float32).tiny)
    rel = np.abs(reference - other).max(axis=1) / scale
    return {
        "argmax_agreement": float((reference.argmax(1) == other.argmax(1)).mean()),
        "median_rel_max_diff": float(np.median(rel)),
        "worst_rel_max_diff": float(rel.max()),
        "max_abs_diff": float(np.abs(reference - other).max()),
        "num_images": int(reference.shape[0]),
    }


def within_bounds(stats: dict[str, float]) -> bool:
    """Whether :func:`compare_logits` statistics meet :data:`EXACT_BOUNDS`."""
    return (
        stats["argmax_agreement"] >= EXACT_BOUNDS["argmax_agreement"]
        and stats["median_rel_max_diff"] <= EXACT_BOUNDS["median_rel_max_diff"]
    )


# ---------------------------------------------------------------------------------------------
# Preprocessing: UniQImageProcessor's contract in numpy / PIL
# ---------------------------------------------------------------------------------------------

# Same input conventions as uniq_hub.model.image_processing_uniq (which needs torch; keep the two in step):
# 8-bit PIL modes are read as PIL's convert("L") / convert("RGB") give them (alpha dropped), deep
# modes and arrays with the value that maps to white, colour -> gray with PIL's integer luma weights.
_GRAY_PIL_MODES = frozenset({"1", "L", "LA"})
_RGB_PIL_MODES = frozenset({"P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "HSV", "LAB"})
_PIL_DEEP_MODES = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "I": None, "F": 1.0}
_ARRAY_WHITE = {
    ("u", 1): 255.0,
    ("b", 1): 1.0,
    ("u", 2): 65535.0,
    ("i", 2): 65535.0,
    ("i", 4): None,
    ("i", 8): None,
    ("u", 4): None,
    ("f", 2): 1.0,
    ("f", 4): 1.0,
    ("f", 8): 1.0,
}


def _white(array: np.ndarray, white: float | None) -> float:
    if white is not None:
        return white
    return 255.0 if array.size == 0 or float(array.max()) <= 255 else 65535.0


def _open(path: str | os.PathLike) -> Image.Image:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such image file")
    try:
        with Image.open(path) as opened:
            opened.load()
            return ImageOps.exif_transpose(opened)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"{path}: not a readable image file ({err})") from err


def _to_hwc(image: Any) -> np.ndarray:
    """Any supported image -> ``(H, W, C)`` float32 in 0..255, C in 1..4."""
    if isinstance(image, (str, os.PathLike)):
        image = _open(image)
    if isinstance(image, Image.Image):
        if image.mode in _PIL_DEEP_MODES:
            array = np.asarray(image).astype(np.float32)
            white = _white(np.asarray(image), _PIL_DEEP_MODES[image.mode])
        else:
            target = "L" if image.mode in _GRAY_PIL_MODES else "RGB" if image.mode in _RGB_PIL_MODES else None
            if target is None:
                raise ValueError(f"unsupported PIL image mode {image.mode!r} (size {image.size})")
            array, white = np.asarray(image.convert(target), dtype=np.float32), 255.0
        array = array[..., None] if array.ndim == 2 else array
    else:
        array = np.asarray(image)
        key = (array.dtype.kind, array.dtype.itemsize)
        if key not in _ARRAY_WHITE:
            raise ValueError(f"unsupported image array dtype {array.dtype}")
        white = _white(array, _ARRAY_WHITE[key])
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
            self.mean = np.asarray(config["image_mean"] if normalize else [0.0] * self.num_channels, np.float32)
            self.std = np.asarray(config["image_std"] if normalize else [1.0] * self.num_channels, np.float32)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                f"{where}: missing or invalid field {err} (expected size.shortest_edge, crop_size, "
                "image_mean, image_std, num_channels)"
            ) from err
        if self.num_channels not in (1, 3):
            raise ValueError(f"{where}: num_channels must be 1 or 3, got {self.num_channels}")
        # A scalar mean / std applies to every channel (transformers accepts a float or a list).
        self.mean = np.broadcast_to(self.mean, (self.num_channels,)) if self.mean.ndim == 0 else self.mean
        self.std = np.broadcast_to(self.std, (self.num_channels,)) if self.std.ndim == 0 else self.std
        if self.mean.shape != (self.num_channels,) or self.std.shape != (self.num_channels,):
            raise ValueError(f"{where}: image_mean / image_std must hold {self.num_channels} values")
        if not (np.isfinite(self.std).all() and (self.std > 0).all()) or not np.isfinite(self.mean).all():
            raise ValueError(f"{where}: image_std must be positive and finite and image_mean finite, got "
                             f"image_mean={self.mean.tolist()}, image_std={self.std.tolist()}")
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
# The graph a folder holds: inside the folder, intact, and bound to the folder's weights
# ---------------------------------------------------------------------------------------------


class GraphError(ValueError):
    """An ONNX graph that must not run (outside its folder, edited, corrupted, or exported from
    other weights); the message names the file and what to do."""


def inside_folder(folder: Path, path: Path, what: str) -> Path:
    """``path`` when it (links followed) lies in ``folder``, or in the Hub cache's blobs of a
    snapshot folder; else :class:`GraphError` (the same rule as ``packing.check_inside``)."""
    target = path.resolve()
    roots = [folder.resolve()]
    if folder.parent.name == "snapshots":  # the Hub cache: snapshot files link to ../../blobs
        roots.append(folder.parent.parent.resolve() / "blobs")
    if not any(target.is_relative_to(root) for root in roots):
        raise GraphError(f"{path}: the {what} resolves to {target}, outside the model folder {folder}; refused")
    return path


def graph_checksum(model: Any) -> str:
    """Hex sha256 of an ``onnx.ModelProto`` without its ``metadata_props`` (where it is recorded)."""
    import onnx

    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    del bare.metadata_props[:]
    return hashlib.sha256(bare.SerializeToString(deterministic=True)).hexdigest()


def weights_checksum(folder: str | os.PathLike) -> str | None:
    """The hex sha256 ``save_pretrained`` stored in the folder's weights (``None``: no weights)."""
    from safetensors import safe_open

    folder = Path(folder)
    if (folder / WEIGHTS_INDEX).is_file():
        index = _read_json(inside_folder(folder, folder / WEIGHTS_INDEX, "weights index"))
        names = sorted(set(index["weight_map"].values()))
        files = [folder / n for n in names if isinstance(n, str) and os.path.basename(n) == n]
    else:
        files = [folder / "model.safetensors"] if (folder / "model.safetensors").is_file() else []
    if not files:
        return None
    for file in files:
        try:
            with safe_open(os.fspath(inside_folder(folder, file, "weight file")), framework="np") as f:
                if CHECKSUM_KEY in f.keys():
                    return bytes(f.get_tensor(CHECKSUM_KEY).tolist()).hex()
        except GraphError:
            raise
        except Exception as err:  # noqa: BLE001 (safetensors raises its own error types)
            raise GraphError(f"{file}: not a readable safetensors file ({err})") from err
    return ""  # weights without a checksum: bound to nothing


def check_graph(folder: str | os.PathLike, path: str | os.PathLike | None = None) -> Any:
    """Load and check the graph ``folder/onnx/model.onnx`` (or ``path``) before anything runs it:

    * the file (links followed) lies inside the folder, and holds all its data (external data
      files are refused: they could point anywhere);
    * it is a uniq_hub exact export whose own checksum (:data:`META_GRAPH`) matches: edits and
      bit flips are refused;
    * when the folder holds weights, the graph was exported from them (:data:`META_SOURCE` equals
      their checksum), else it is refused with a message to re-export.

    Returns the ``onnx.ModelProto`` (without external data); raises :class:`GraphError`.
    """
    import onnx

    folder = Path(folder)
    path = Path(path) if path is not None else folder / ONNX_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; export it with `uniq-hub export-onnx {folder}`")
    inside_folder(folder, path, "ONNX file")
    reexport = f"re-export it with `uniq-hub export-onnx {folder}`"
    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 (protobuf / onnx raise several error types)
        raise GraphError(f"{path}: not a valid ONNX model (corrupted or truncated?): {err}") from err
    tensors = list(model.graph.initializer) + [
        a.t for node in model.graph.node for a in node.attribute if a.HasField("t")]
    external = [t.name for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise GraphError(f"{path}: tensor {external[0]!r} keeps its data in an external file; uniq_hub graphs hold "
                         f"their data inline, and an external path could lead anywhere: refused ({reexport})")
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get(META_FORMAT) != EXACT_FORMAT:
        raise GraphError(f"{path}: not a uniq_hub exact export ({META_FORMAT}={meta.get(META_FORMAT)!r}, expected "
                         f"{EXACT_FORMAT!r}); {reexport}")
    if META_GRAPH not in meta:
        raise GraphError(f"{path}: no graph checksum ({META_GRAPH}; exported by an older uniq_hub): {reexport}")
    if meta[META_GRAPH] != graph_checksum(model):
        raise GraphError(f"{path}: the graph's checksum does not match its content (edited or corrupted): {reexport}")
    weights = weights_checksum(folder)
    if weights is not None and meta.get(META_SOURCE) != weights:
        raise GraphError(f"{path}: stale or foreign file: exported from other weights "
                         f"({meta.get(META_SOURCE, 'unknown')[:12]}...) than this folder's "
                         f"({weights[:12] or 'no checksum'}...); {reexport}")
    return model


def graph_num_labels(model: Any) -> int | None:
    """The fixed class dimension of the graph's output, or None when it is symbolic."""
    dims = model.graph.output[0].type.tensor_type.shape.dim
    return int(dims[-1].dim_value) if len(dims) == 2 and dims[-1].HasField("dim_value") else None


# ---------------------------------------------------------------------------------------------
# The classifier
# ---------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: not found (a UniQ model folder has config.json, preprocessor_config.json and {ONNX_FILE})"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def resolve_folder(
    folder_or_repo: str | os.PathLike, revision: str | None, token: Any, timeout: float | None = None
) -> Path:
    """A local folder as is, else the three files the classifier needs from the Hub (each request
    within ``timeout`` seconds, :func:`uniq_hub.hub.network.default_timeout` by default)."""
    if os.path.isdir(folder_or_repo):
        return Path(folder_or_repo)
    name = os.fspath(folder_or_repo)
    if os.path.isabs(name) or name.startswith(".") or name.count("/") > 1 or os.path.exists(name):
        raise FileNotFoundError(f"{name}: no such model folder (and not a Hub repo id ORG/NAME)")
    from huggingface_hub import snapshot_download

    from ..hub.network import default_timeout, hub_timeout

    files = ["config.json", "preprocessor_config.json", ONNX_FILE]
    timeout = default_timeout() if timeout is None else timeout
    with hub_timeout(timeout):
        return Path(snapshot_download(os.fspath(folder_or_repo), revision=revision, token=token, allow_patterns=files,
                                      etag_timeout=timeout))


def exact_backends_of(path: Any) -> list[str]:
    """Backends ``export_onnx`` verified exact for this file (its metadata), fastest first;
    ``path``: the file or its loaded ``onnx.ModelProto``."""
    import onnx

    model = path if isinstance(path, onnx.ModelProto) else onnx.load(os.fspath(path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    verified = json.loads(meta.get(META_EXACT_BACKENDS, "[]"))
    return [b for b in FASTEST_FIRST if b in verified]


class OnnxImageClassifier:
    """Image classification with a model folder's ``onnx/model.onnx``, without torch.

    >>> clf = OnnxImageClassifier.from_pretrained("path/or/repo-id")      # doctest: +SKIP
    >>> clf("shoe.png", top_k=3)                                           # doctest: +SKIP
    [{'label': 'Sneaker', 'score': 0.97}, ...]
    """

    def __init__(self, folder: str | os.PathLike, backend: str | None = None, threads: int = 2) -> None:
        folder = Path(folder)
        check_threads(threads)
        config = _read_json(inside_folder(folder, folder / "config.json", "config"))
        processor_file = inside_folder(folder, folder / "preprocessor_config.json", "processor config")
        self.preprocess = _Preprocessor(_read_json(processor_file), str(processor_file))
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
        """``(N, num_labels)`` float32 logits of one image or a list of them (paths, PIL, arrays)."""
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
