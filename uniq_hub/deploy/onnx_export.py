"""Exact integer ONNX export: ``export_onnx(model, path)`` writes the graph ``onnx/model.onnx``
(built by :mod:`.onnx_convert`) and verifies it against the PyTorch model and between runtimes;
``verify_onnx(folder)`` checks a saved folder's graph; :class:`OnnxModule` runs a folder's graph
as a module (``uniq-hub evaluate --runtime``). The command is :mod:`.onnx_cli`.

Export after saving: ``model.save_pretrained(folder)``, then
``export_onnx(model, os.path.join(folder, ONNX_FILE))``.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper
from torch import Tensor, nn

from ..model.atomic import atomic_path
from ..model.constants import MAX_IMAGE_SIZE
from ..model.modeling_uniq import UniQForImageClassification
from ..model.packing import pack_state_dict, state_dict_checksum
from .onnx_backends import EXACT_BOUNDS, available_backends, compare_logits, load_backend, within_bounds
from .onnx_convert import OnnxExportError, bare_architecture, build_graph, exportable_architecture
from .onnx_diagnostic import describe_flips, flip_diagnostic
from .onnx_graph import (
    EXACT_FORMAT,
    META_EXACT_BACKENDS,
    META_FORMAT,
    META_GRAPH,
    META_SOURCE,
    ONNX_FILE,
    GraphError,
    check_graph,
    graph_checksum,
    inside_folder,
)
from .onnx_runtime import resolve_folder

__all__ = [
    "OnnxExportError",
    "OnnxModule",
    "export_onnx",
    "source_checksum",
    "torch_logits",
    "verify_backends",
    "verify_onnx",
]


def source_checksum(model: nn.Module, packed: dict[str, Tensor] | None = None) -> str:
    """Hex sha256 of the model's release weights (the checksum ``save_pretrained`` stores);
    ``packed``: ``pack_state_dict`` of its architecture, when already computed."""
    packed = pack_state_dict(exportable_architecture(model)) if packed is None else packed
    return bytes(state_dict_checksum({f"model.{k}": v for k, v in packed.items()}).tolist()).hex()


def _input_shape(model: nn.Module, input_size: int | tuple[int, int] | None) -> tuple[int, int, int]:
    config = getattr(model, "config", None)
    arch = bare_architecture(model)
    chans = int(getattr(config, "num_channels", None) or getattr(arch, "num_channels", 3))
    if input_size is None:
        input_size = getattr(config, "image_size", None)
    if input_size is None:
        raise OnnxExportError(f"{type(model).__name__}: pass input_size (no config.image_size to take it from)")
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    if not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_IMAGE_SIZE for v in (h, w)):
        raise OnnxExportError(f"{type(model).__name__}: input size {h}x{w} is not in 1..{MAX_IMAGE_SIZE} pixels a side "
                              "(refused before allocating anything)")
    return chans, int(h), int(w)


@torch.no_grad()
def torch_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """PyTorch eval logits of the model's own architecture on float32 NCHW ``x``."""
    arch = bare_architecture(model)
    was_training = arch.training
    arch.eval()
    try:
        device = next(arch.parameters()).device
        return arch(torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(device)).float().cpu().numpy()
    finally:
        arch.train(was_training)


def verify_backends(path: str | os.PathLike, x: np.ndarray, threads: int = 2) -> dict[str, dict[str, float]]:
    """Each installed runtime against the reference evaluator on ``x``: :func:`compare_logits` stats."""
    reference = load_backend(path, "reference")(x)
    return {
        b: compare_logits(reference, load_backend(path, b, threads)(x))
        for b in available_backends()
        if b != "reference"
    }


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: int | tuple[int, int] | None = None,
    verify: bool = True,
    num_check_images: int = 4,
    seed: int = 0,
) -> Path:
    """Write the exact integer ONNX graph of ``model`` to ``path`` (opset 21, dynamic batch).

    ``model``: a UniQ classifier (uniq_hub's, or loaded as remote code) or a bare (quantized)
    architecture; ``input_size`` defaults to ``config.image_size``. With ``verify`` the graph is
    checked against PyTorch's eval logits through the reference evaluator on random inputs, and
    every installed runtime is checked against the reference; the runtimes within the exactness
    bounds are recorded in the file's metadata (``uniq_hub.exact_backends``), which
    ``OnnxImageClassifier`` reads. A model on another device (a GPU) is exported, and checked, from
    a CPU copy; ``model`` is left where it is.
    """
    if any(t.device.type != "cpu" for t in itertools.chain(model.parameters(), model.buffers())):
        model = copy.deepcopy(model).cpu()
    shape = _input_shape(model, input_size)
    arch = exportable_architecture(model)  # rebuilt with uniq_hub's classes when loaded as remote code
    packed = pack_state_dict(arch)
    onnx_model = build_graph(arch, shape, packed)
    onnx.checker.check_model(onnx_model, full_check=True)
    meta = {META_FORMAT: EXACT_FORMAT, META_SOURCE: source_checksum(model, packed)}
    path = Path(path)
    if path.parent.name == "onnx":  # a model folder's onnx/ (a planted link would lead the write elsewhere)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            inside_folder(path.parent.parent, path.parent, "onnx folder")
        except GraphError as err:
            raise OnnxExportError(str(err)) from None
    exact: list[str] = []
    with atomic_path(path) as tmp:  # a fresh temporary file (O_EXCL) renamed into place
        if verify:
            onnx.save(onnx_model, tmp)
            x = np.random.default_rng(seed).standard_normal((num_check_images, *shape), dtype=np.float32)
            stats = compare_logits(torch_logits(model, x), load_backend(tmp, "reference")(x))
            _check_matches(model, tmp, x, stats, f"{path}: the exported graph does not match the PyTorch model")
            exact = ["reference"] + [b for b, s in verify_backends(tmp, x).items() if within_bounds(s)]
        meta[META_EXACT_BACKENDS] = json.dumps(exact)
        helper.set_model_props(onnx_model, {**meta, META_GRAPH: graph_checksum(onnx_model)})
        onnx.save(onnx_model, tmp)
    return path


def _check_matches(model: nn.Module, path: Path, x: np.ndarray, stats: dict[str, float], what: str) -> None:
    """The graph computes the PyTorch model: within :data:`EXACT_BOUNDS`, or else every differing
    quantizer code is a one-level flip at a rounding boundary (the flip diagnostic) with the argmax
    bound met. Measured (tests/test_guards_train.py's setting, 1-epoch 2-bit ResNet-20s): a single
    boundary flip moves a barely trained model's small logits (max |logit| ~0.3) by up to 3% of
    their maximum, so the median over the 4 check images can exceed 1e-3 with no error anywhere."""
    if within_bounds(stats):
        return
    try:
        flips = flip_diagnostic(model, path, x)
    except Exception as err:  # noqa: BLE001 (a diagnostic must not hide the failure it explains)
        raise OnnxExportError(f"{what}: {stats}; flip diagnostic unavailable ({type(err).__name__}: {err})") from err
    argmax_ok = stats["argmax_agreement"] >= EXACT_BOUNDS["argmax_agreement"]
    if argmax_ok and flips["first_layer"] is not None and flips["all_at_boundary"]:
        return  # only float-order ties rounded the other way: exact as docs/deploy.md defines it
    raise OnnxExportError(f"{what}: {stats}; {describe_flips(flips)}")


def verify_onnx(
    folder: str | os.PathLike, model: nn.Module | None = None, num_images: int = 4
) -> dict[str, float] | None:
    """Check ``folder/onnx/model.onnx`` when present: readable, passes the checker, exported from
    this folder's weights, and its logits (reference evaluator) match the PyTorch model's.

    Raises :class:`OnnxExportError` naming the file; returns the comparison stats (None when
    the folder has no ONNX file). ``model``: the loaded PyTorch model (default: load the folder).
    """
    folder = Path(folder)
    path = folder / ONNX_FILE
    if not path.is_file() and not path.is_symlink():
        return None
    try:
        onnx_model = check_graph(folder, path)  # inside the folder, intact, exported from these weights
        onnx.checker.check_model(onnx_model)
    except GraphError as err:
        raise OnnxExportError(str(err)) from None
    except Exception as err:  # noqa: BLE001 (the checker raises several error types)
        raise OnnxExportError(f"{path}: not a valid ONNX model (corrupted or truncated?): {err}") from err
    if model is None:
        model = UniQForImageClassification.from_pretrained(folder)
    expected = source_checksum(model)
    if {p.key: p.value for p in onnx_model.metadata_props}.get(META_SOURCE) != expected:
        raise OnnxExportError(f"{path}: stale or foreign file: exported from other weights than the model's "
                              f"({expected[:12]}...); re-export with `uniq-hub export-onnx {folder}`")
    shape = tuple(d.dim_value for d in onnx_model.graph.input[0].type.tensor_type.shape.dim[1:])
    x = np.random.default_rng(0).standard_normal((num_images, *shape), dtype=np.float32)
    try:
        stats = compare_logits(torch_logits(model, x), load_backend(path, "reference")(x))
    except Exception as err:
        raise OnnxExportError(f"{path}: cannot run it on the model's input shape {shape}: {err}") from err
    _check_matches(model, path, x, stats, f"{path}: its logits do not match the PyTorch model in {folder}")
    return stats


class OnnxModule(nn.Module):
    """A model's ``onnx/model.onnx`` on an ONNX backend as an eval-only module: ``forward(pixel_values)
    -> logits``; what ``uniq-hub evaluate --runtime`` runs in place of the PyTorch model."""

    def __init__(self, model_id: str | os.PathLike, backend: str, threads: int = 2) -> None:
        super().__init__()
        folder = resolve_folder(model_id)
        check_graph(folder)  # the graph that runs is the folder's, intact, exported from its weights
        self.run_onnx = load_backend(folder / ONNX_FILE, backend, threads)
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)  # gives callers a device (CPU)

    def forward(self, pixel_values: Tensor) -> Tensor:
        return torch.from_numpy(self.run_onnx(pixel_values.detach().float().cpu().numpy()))

