"""``uniq-hub migrate FOLDER...``: bring model folders written by older versions to this one.

Each folder is loaded with every check but one: a packed ``model.safetensors`` may lack the
computation metadata (older releases, or a file re-saved with plain safetensors), and is then
checked by its checksum and byte counts, which verify ``w_bits`` (and the per-layer bits) only. What
they cannot show (:data:`UNVERIFIABLE`: ``a_bits``, ``method`` ...) needs the user's word: without
``--trust-config`` such a folder is refused and left untouched; with it, a warning names those fields,
and config.json's values become the weights' record. It is re-saved with this version (the metadata, current
config names, the library's code; the tensors must come out byte-identical, else nothing is
written: ``zoo_release.resave_release(code=True)``), and an ``onnx/model.onnx`` without this
version's graph checksum, or exported from other weights, is exported again (and verified).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from safetensors import safe_open

from ..deploy.onnx_graph import ONNX_FILE, GraphError, check_graph
from ..model.files import weight_files
from ..model.modeling_uniq import UniQForImageClassification
from ..model.packing import METADATA_PREFIX, CheckpointError, allow_missing_metadata
from .zoo_release import resave_release

__all__ = ["UNVERIFIABLE", "migrate", "add_arguments", "run"]

logger = logging.getLogger(__name__)


# Quantization fields of config.json that packed weights without metadata cannot confirm: the packed
# sizes show each layer's weight bits; nothing in the codes shows these.
UNVERIFIABLE = ("a_bits", "method", "signed_inputs", "weight_granularity", "last_bits", "binary_fp_layers")


def _without_metadata(folder: Path) -> list[Path]:
    """The folder's weight files that carry no ``uniq_hub.*`` metadata."""
    out = []
    for file in weight_files(folder):
        with safe_open(str(file), framework="pt") as f:
            if not any(k.startswith(METADATA_PREFIX) for k in (f.metadata() or {})):
                out.append(file)
    return out


def migrate(folder: str | Path, onnx: bool = True, trust_config: bool = False) -> list[str]:
    """Re-save ``folder`` with this version after verifying that it loads; returns the files changed.
    ``onnx``: re-export a graph that fails :func:`uniq_hub.deploy.onnx_graph.check_graph` (else leave it).
    ``trust_config``: accept config.json's :data:`UNVERIFIABLE` fields for weights without metadata (warned)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder}: not a model folder (no config.json)")
    bare = _without_metadata(folder)
    if bare:
        config = json.loads((folder / "config.json").read_text())
        said = ", ".join(f"{k}={config.get(k)!r}" for k in UNVERIFIABLE)
        if not trust_config:
            raise ValueError(f"{bare[0]}: the weights carry no uniq_hub metadata, so config.json's {said} cannot be "
                             "checked against them (their packed sizes confirm the weight bits only); if config.json "
                             "is the one they were saved with, pass --trust-config; nothing was written")
        logger.warning("%s: no uniq_hub metadata; taking config.json's word for %s (not checkable from the weights)",
                       bare[0], said)
    with allow_missing_metadata():
        changed = resave_release(folder, code=True)
    graph = folder / ONNX_FILE
    if onnx and (graph.is_file() or graph.is_symlink()):
        try:
            check_graph(folder)
        except GraphError:
            from ..deploy.onnx_export import export_onnx  # needs the optional onnx package

            export_onnx(UniQForImageClassification.from_pretrained(folder).eval(), graph)
            changed.append(ONNX_FILE)
    return changed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folders", nargs="+", metavar="FOLDER", help="model folders (save_pretrained output)")
    parser.add_argument("--no-onnx", dest="onnx", action="store_false",
                        help=f"leave {ONNX_FILE} as it is (default: re-export it when it is stale or older)")
    parser.add_argument("--trust-config", action="store_true",
                        help="weights without uniq_hub metadata: take config.json's word for what their codes cannot "
                        f"show ({', '.join(UNVERIFIABLE)}); a warning names them (default: refuse the folder)")


def run(args: argparse.Namespace) -> int:
    for folder in args.folders:
        try:
            changed = migrate(folder, onnx=args.onnx, trust_config=args.trust_config)
        except (CheckpointError, GraphError, ValueError, OSError) as err:
            raise SystemExit(f"uniq-hub migrate: {err}") from None
        print(f"{folder}: " + (f"re-saved {', '.join(changed)}" if changed else "already current"))
    return 0
