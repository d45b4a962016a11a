"""A run's Hub release folder: release weights (packed low-bit codes), config, preprocessor config,
model card and the evaluation record, written atomically. A release folder holds data only: the
shipped code (``uniq_hub/model/``) is added when it is uploaded (``uniq-hub publish PATH --repo-id ...``).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from transformers.utils import logging as hf_logging

from ..deploy.onnx_graph import ONNX_FILE
from ..model.atomic import atomic_dir, write_json_atomic
from ..model.constants import BEST_DIR, RESULTS_FILE
from ..model.modeling_uniq import UniQForImageClassification
from .cards import entry_from_config, render_card
from .zoo import get_entry

__all__ = ["BEST_DIR", "RESULTS_FILE", "ExportIncomplete", "card_entry", "export_model", "load_trained", "remove_code",
           "save_latent"]


class ExportIncomplete(ValueError):
    """The release folder was written (weights, config, card, results) but a secondary artifact,
    the ONNX graph, failed its verification and was left out; the message says why (flip diagnostic)."""

    def __init__(self, message: str, folder: Path, record: dict[str, Any]) -> None:
        super().__init__(message)
        self.folder, self.record = folder, record


def card_entry(model_config: Any, zoo_name: str | None, name: str, dataset: str):
    """The zoo entry the card describes: the zoo's when training a zoo model, else a card-only one."""
    if zoo_name:
        return get_entry(zoo_name)
    return entry_from_config(model_config.to_dict(), name=name, dataset=dataset)


def _quiet() -> None:
    hf_logging.disable_progress_bar()


def remove_code(folder: str | os.PathLike) -> list[str]:
    """Delete the code files (``*.py``) that ``save_pretrained`` copied into ``folder``: a release
    folder keeps its data, and ``publish`` adds the shipped code when it uploads. Returns their names."""
    code = sorted(Path(folder).glob("*.py"))
    for path in code:
        path.unlink()
    return [path.name for path in code]


def export_model(
    model: Any, folder: str | os.PathLike, record: dict[str, Any], entry: Any = None, onnx: bool = True
) -> Path:
    """Write ``model`` (a ``UniQForImageClassification``) in the release format into ``folder``.

    ``record``: the results record (zoo schema) stored as ``eval_results.json`` and shown in the
    card; ``entry``: the zoo entry for the card (None: no card); ``onnx``: also write the exact
    integer graph ``onnx/model.onnx`` (needs the ``onnx`` extra; skipped with a note without it).

    The PyTorch release is written first and is complete on its own; the ONNX graph is added after
    it. When the graph fails its verification the folder keeps the release without a graph, and
    :class:`ExportIncomplete` says so with the flip diagnostic (a run never loses its work to it).
    """
    _quiet()
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp, packed=True)
        remove_code(tmp)
        write_json_atomic(tmp / RESULTS_FILE, record)
        if entry is not None:
            (tmp / "README.md").write_text(render_card(entry, record, repo_id=record.get("model_id"), folder=tmp))
    folder = Path(folder)
    if onnx:
        try:
            _export_onnx(model, folder)
        except ValueError as err:  # OnnxExportError (the optional onnx module defines it)
            raise ExportIncomplete(
                f"{folder}: the PyTorch release is complete, but the ONNX export was left out: {err}. The model "
                f"loads with from_pretrained and pipeline; retry the graph with `uniq-hub export-onnx {folder}` "
                "(or --no-verify to write it unverified)", folder, record) from err
    return folder


def _export_onnx(model: Any, folder: Path) -> None:
    if importlib.util.find_spec("onnx") is None:
        print("onnx is not installed: no onnx/model.onnx (pip install 'uniq_hub[onnx]')")
        return
    from ..deploy.onnx_export import export_onnx  # needs the optional onnx package

    export_onnx(model, folder / ONNX_FILE)


def load_trained(source: str) -> Any:
    """A ``UniQForImageClassification`` from a model folder, a run directory (its ``best/``) or a Hub id."""
    path = Path(source)
    if (path / BEST_DIR / "config.json").is_file():  # a run directory: its best model, latent weights
        path = path / BEST_DIR
    return UniQForImageClassification.from_pretrained(str(path) if path.exists() else source)


def save_latent(model: Any, folder: str | os.PathLike) -> Path:
    """``save_pretrained(packed=False)``: latent float weights, for ``--init-from`` of a next stage."""
    _quiet()
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp, packed=False)
    return Path(folder)
