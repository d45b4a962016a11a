"""``uniq-hub export-onnx MODEL [--output PATH] [--no-verify]``: write a model's exact integer
ONNX graph (:func:`uniq_hub.deploy.onnx_export.export_onnx`), by default into the folder's
``onnx/model.onnx``."""

from __future__ import annotations

import json
import os
from typing import Any

import onnx

from ..model.modeling_uniq import UniQForImageClassification
from .onnx_export import export_onnx
from .onnx_graph import META_EXACT_BACKENDS, ONNX_FILE

__all__ = ["add_arguments", "run"]


def add_arguments(parser: Any) -> None:
    parser.add_argument("model", help="model folder or Hub repo id (as from_pretrained takes)")
    parser.add_argument("--output", "-o", help=f"ONNX file to write (default: MODEL/{ONNX_FILE} for a folder)")
    parser.add_argument(
        "--no-verify", dest="verify", action="store_false", help="skip the checks against PyTorch and between runtimes"
    )


def run(args: Any) -> int:
    output = args.output or (os.path.join(args.model, ONNX_FILE) if os.path.isdir(args.model) else None)
    if output is None:
        raise SystemExit(f"uniq-hub export-onnx: {args.model} is not a local folder; pass --output PATH")
    model = UniQForImageClassification.from_pretrained(args.model).eval()
    path = export_onnx(model, output, verify=args.verify)
    meta = {p.key: p.value for p in onnx.load(os.fspath(path), load_external_data=False).metadata_props}
    size = os.path.getsize(path) / 1e6
    exact = ", ".join(json.loads(meta[META_EXACT_BACKENDS])) or "none"
    print(f"wrote {path} ({size:.2f} MB); backends verified exact: {exact}")
    return 0
