"""Atomic file and folder writes: readers see the old one or the new one, never a half-written one."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = False) -> Iterator[Path]:
    """A temporary name beside ``path`` to write to. On a normal exit it replaces ``path`` in one
    step (``os.replace``; ``fsync`` first flushes it to disk), on an error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
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
    tmp, old = final.with_name(f".tmp-{final.name}"), final.with_name(f".old-{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
