"""The exported graph a model folder holds: its format (file, tensor names, metadata keys) and the
checks before anything runs it (inside the folder, intact, bound to the folder's weights).

Torch-free (numpy, onnx, safetensors only), as the rest of the runtime.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from ..model.atomic import read_json
from ..model.constants import CHECKSUM_KEY, ONNX_FILE
from ..model.files import CheckpointError, check_inside, read_checksum

__all__ = [
    "CHECKSUM_KEY",
    "EXACT_FORMAT",
    "INPUT_NAME",
    "META_EXACT_BACKENDS",
    "META_FORMAT",
    "META_GRAPH",
    "META_SOURCE",
    "ONNX_FILE",
    "OUTPUT_NAME",
    "GraphError",
    "check_graph",
    "graph_checksum",
    "graph_num_labels",
    "inside_folder",
    "read_model_json",
    "weights_checksum",
]

META_FORMAT = "uniq_hub.format"  # metadata_props key: the graph format ("exact-qdq-1")
META_SOURCE = "uniq_hub.source_sha256"  # hex sha256 checksum of the weights it was exported from
META_EXACT_BACKENDS = "uniq_hub.exact_backends"  # JSON list of the backends verified exact at export
META_GRAPH = "uniq_hub.graph_sha256"  # hex sha256 of the graph itself (graph_checksum: all but the metadata)
EXACT_FORMAT = "exact-qdq-1"  # META_FORMAT of the graphs onnx_export writes
INPUT_NAME, OUTPUT_NAME = "pixel_values", "logits"


class GraphError(ValueError):
    """An ONNX graph that must not run (outside its folder, edited, corrupted, or exported from
    other weights); the message names the file and what to do."""


def read_model_json(path: Path) -> dict[str, Any]:
    """A model folder's JSON file (:func:`uniq_hub.model.atomic.read_json`, naming what a folder holds)."""
    return read_json(path, f"a UniQ model folder has config.json, preprocessor_config.json and {ONNX_FILE}")


def inside_folder(folder: Path, path: Path, what: str) -> Path:
    """``path`` when it (links followed) lies in ``folder`` (:func:`uniq_hub.model.files.check_inside`,
    the Hub cache's blobs of a snapshot folder too); else :class:`GraphError`."""
    try:
        return check_inside(folder, path, what)
    except CheckpointError as err:
        raise GraphError(str(err)) from None


def graph_checksum(model: Any) -> str:
    """Hex sha256 of an ``onnx.ModelProto`` without its ``metadata_props`` (where it is recorded)."""
    import onnx

    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    del bare.metadata_props[:]
    return hashlib.sha256(bare.SerializeToString(deterministic=True)).hexdigest()


def weights_checksum(folder: str | os.PathLike) -> str | None:
    """The hex sha256 ``save_pretrained`` stored in the folder's weights (:func:`read_checksum`; ``None``:
    no weights, ``""``: weights without one, bound to nothing); a weight file outside the folder or one
    that cannot be read is a :class:`GraphError`."""
    try:
        checksum = read_checksum(folder)
    except CheckpointError as err:
        raise GraphError(str(err)) from err
    return None if checksum is None else checksum.hex()


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

