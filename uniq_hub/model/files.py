"""The files of a saved model folder: which weight files it holds (one file or an index's shards), the
rule that none of them resolves outside the folder, and the checksum ``save_pretrained`` stores in them.
Torch-free (stdlib, numpy, safetensors), so the ONNX runtime (:mod:`uniq_hub.deploy`) shares it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors import safe_open

from .constants import CHECKSUM_KEY

__all__ = ["WEIGHTS_INDEX", "CheckpointError", "ClassifierMismatchError", "check_inside", "index_shards",
           "read_checksum", "weight_files"]

WEIGHTS_INDEX = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike | None, problem: str) -> None:
        self.path, self.problem = None if path is None else os.fspath(path), problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class ClassifierMismatchError(CheckpointError, RuntimeError):
    """The checkpoint's classifier does not fit the config's labels. Also a ``RuntimeError``, which is what
    transformers raises there (user code that catches it catches ours)."""


def _allowed_roots(folder: Path) -> list[Path]:
    """Where a file of ``folder`` may resolve to: the folder, and for a snapshot of the Hub cache
    (``.../snapshots/<revision>``, whose files are links to ``../../blobs/``) its blobs."""
    root = folder.resolve()
    roots = [root]
    if folder.parent.name == "snapshots":
        roots.append(folder.parent.parent.resolve() / "blobs")
    return roots


def check_inside(folder: str | os.PathLike, path: str | os.PathLike, what: str = "file") -> Path:
    """``path`` when it (links followed) lies inside ``folder`` (or the Hub cache's blobs of a
    snapshot folder), else :class:`CheckpointError`: no read or write leaves a model folder."""
    folder, path = Path(folder), Path(path)
    target = path.resolve()
    if not any(target.is_relative_to(root) for root in _allowed_roots(folder)):
        raise CheckpointError(path, f"the {what} resolves to {target}, outside the model folder {folder}; refused "
                                    "(copy the file into the folder, or remove the link)")
    return path


def index_shards(index: str | os.PathLike) -> list[str]:
    """The weight file names a ``model.safetensors.index.json`` lists; each must be a plain file name
    (beside the index), else :class:`CheckpointError` (``../x.safetensors``, an absolute path)."""
    try:
        names = sorted(set(json.loads(Path(index).read_text())["weight_map"].values()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(index, f"not a readable weights index ({type(err).__name__}: {err})") from None
    bad = [n for n in names if not isinstance(n, str) or os.path.basename(n) != n or n in ("", ".", "..") or "\\" in n]
    if bad:
        raise CheckpointError(index, f"names the weight file {bad[0]!r}, which is not a file name inside the "
                                     "folder; an index may only name files beside it (refused)")
    return names


def weight_files(folder: str | os.PathLike) -> list[Path]:
    """The safetensors weight files of a saved folder (transformers' names: one file, or the shards
    its index lists, :func:`index_shards`). Each must lie inside the folder: an index naming a path or
    a link leading out of it is a :class:`CheckpointError`."""
    folder = Path(folder)
    index = folder / WEIGHTS_INDEX
    if index.is_file():
        files = [folder / name for name in index_shards(check_inside(folder, index, "weights index"))]
    else:
        files = [folder / "model.safetensors"] if (folder / "model.safetensors").is_file() else []
    return [check_inside(folder, f, "weight file") for f in files]


def read_checksum(folder: str | os.PathLike) -> bytes | None:
    """The sha256 ``save_pretrained`` stored in a folder's weights (:data:`CHECKSUM_KEY`): ``None`` without
    weight files, ``b""`` for weights without one. A file outside the folder or one safetensors cannot read
    is a :class:`CheckpointError`."""
    files = weight_files(folder)
    if not files:
        return None
    for file in files:
        try:
            with safe_open(os.fspath(file), framework="np") as f:
                if CHECKSUM_KEY in f.keys():
                    return bytes(f.get_tensor(CHECKSUM_KEY).tolist())
        except Exception as err:  # noqa: BLE001 (safetensors raises its own error types)
            raise CheckpointError(file, f"not a readable safetensors file ({err})") from err
    return b""
