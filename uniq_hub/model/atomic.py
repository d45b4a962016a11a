"""Atomic file and folder writes (readers see the old one or the new one, never a half-written one),
and the one JSON reader."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = False) -> Iterator[Path]:
    """A temporary name beside ``path`` to write to. On a normal exit it replaces ``path`` in one
    step (``os.replace``; ``fsync`` first flushes it to disk), on an error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name, created exclusively (O_EXCL): a planted file or symlink is never written through.
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_umask())  # the mode a plain open() gives (mkstemp's is 0600)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str, fsync: bool = False) -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    with atomic_path(path, fsync) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data: Any, fsync: bool = False) -> Path:
    """Write ``data`` as indented JSON (with a final newline) to ``path`` atomically; returns the path."""
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n", fsync)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """An empty temporary folder beside ``path`` to fill. On a normal exit it takes ``path``'s place
    (the old folder is renamed aside, then removed), on an error it is removed."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    # Fresh temporary folders (mkdtemp: created exclusively), never names that may already exist.
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
    os.chmod(tmp, 0o777 & ~_umask())  # the mode a plain mkdir gives (mkdtemp's is 0700)
    old = None
    try:
        yield tmp
        if final.exists() or final.is_symlink():  # (a link is moved aside itself, never followed)
            old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".old-{final.name}-"))
            os.replace(final, old / final.name)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def read_json(path: str | os.PathLike, hint: str = "", *, object_only: bool = True) -> Any:
    """The JSON in ``path``: an object unless ``object_only=False``. A missing file raises
    ``FileNotFoundError`` (with ``hint``: what the folder should hold), an unreadable one (not UTF-8,
    not JSON, not an object) ``ValueError``; both name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found" + (f" ({hint})" if hint else ""))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not readable ({err})") from err
    if object_only and not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data
