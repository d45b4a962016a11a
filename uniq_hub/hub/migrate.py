"""``uniq-hub migrate FOLDER...``: bring model folders written by older versions to this one.

Each folder is loaded with every check but one: a packed ``model.safetensors`` may lack the
computation metadata (older releases, or a file re-saved with plain safetensors), and is then
checked by its checksum and byte counts. It is re-saved with this version (the metadata, current
config names, the library's code; the tensors must come out byte-identical, else nothing is
written: ``zoo_release.resave_release(code=True)``), and an ``onnx/model.onnx`` without this
version's graph checksum, or exported from other weights, is exported again (and verified).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..deploy.onnx_graph import ONNX_FILE, GraphError, check_graph
from ..model.modeling_uniq import UniQForImageClassification
from ..model.packing import CheckpointError, allow_missing_metadata
from .zoo_release import resave_release

__all__ = ["migrate", "add_arguments", "run"]


def migrate(folder: str | Path, onnx: bool = True) -> list[str]:
    """Re-save ``folder`` with this version after verifying that it loads; returns the files changed.
    ``onnx``: re-export a graph that fails :func:`uniq_hub.deploy.onnx_graph.check_graph` (else leave it)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder}: not a model folder (no config.json)")
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


def run(args: argparse.Namespace) -> int:
    for folder in args.folders:
        try:
            changed = migrate(folder, onnx=args.onnx)
        except (CheckpointError, GraphError, ValueError, OSError) as err:
            raise SystemExit(f"uniq-hub migrate: {err}") from None
        print(f"{folder}: " + (f"re-saved {', '.join(changed)}" if changed else "already current"))
    return 0
