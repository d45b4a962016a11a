"""Resumable training checkpoints through Accelerate's state, written atomically; run directories.

A checkpoint is ``<run>/checkpoints/step-<global step>/``: what ``accelerator.save_state``
writes (model with its latent full-precision weights and step sizes, optimizer, grad scaler,
per-process RNG states) plus ``trainer_state.json`` (epoch, position in the epoch, global step,
best metric, LR-scheduler state, and the size and SHA-256 of every other file).

Writing: into ``.tmp-step-N/``; every file is fsynced, ``trainer_state.json`` is written last
(itself atomically), then the directory is renamed to ``step-N``. Re-saving step N renames the
old copy to ``.old-step-N`` first. Deleting renames to ``.trash-*`` first. So a SIGKILL at any
instant leaves, for each step, a complete copy under one of those names or none, and
:func:`list_checkpoints` finds it (a complete ``.tmp-step-N`` is the newest copy of step N, a
complete ``.old-step-N`` the oldest). Resuming verifies the sizes and checksums and falls back
to the previous complete checkpoint, with a warning naming the bad file. A failed write (a full
disk) raises :class:`CheckpointWriteError` naming the path and leaves earlier checkpoints intact.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from accelerate import Accelerator

from ..model.atomic import write_json_atomic
from ..model.constants import BEST_DIR, EXPORT_DIR, SUMMARY_FILE, TRAIN_CONFIG_FILE

__all__ = ["RunCheckpointError", "CheckpointWriteError", "RunDirectoryError", "TrainerState", "Checkpointer",
           "check_run_dir", "clear_run_dir", "hold_run_dir", "latest_checkpoint", "list_checkpoints",
           "read_trainer_state", "verify_checkpoint"]

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
_PREFIX = "step-"
# directory name prefix -> rank among copies of the same step (higher: newer)
_COPIES = {".old-" + _PREFIX: 0, _PREFIX: 1, ".tmp-" + _PREFIX: 2}
_TRASH = ".trash-"
# what makes a directory a run directory (it is refused without --resume / --overwrite)
RUN_FILES = (TRAIN_CONFIG_FILE, "log.jsonl", SUMMARY_FILE, CHECKPOINTS, BEST_DIR, EXPORT_DIR)


class RunCheckpointError(ValueError):
    """A training-run checkpoint (``checkpoints/step-*``) is incomplete or corrupt (the message names the
    file); a model folder's weights raise :class:`uniq_hub.model.packing.CheckpointError` instead."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. no space left); earlier checkpoints are intact."""


class RunDirectoryError(FileExistsError):
    """The output directory already holds a run and neither --resume nor --overwrite was given."""


@dataclass
class TrainerState:
    """Where training is: ``epoch`` (0-based, the one in progress), optimizer steps done in it,
    optimizer steps overall, the best evaluation so far, the LR scheduler's state, and the
    checkpoint's files (name -> size and SHA-256)."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    scheduler: dict[str, Any] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Run directories


def check_run_dir(run_dir: str | Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to start a run in a directory that holds one, unless resuming or overwriting."""
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other: continue the run or replace it")
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirectoryError(f"output directory {run_dir} is a file")
    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    if found and not (resume or overwrite):
        raise RunDirectoryError(f"output directory {run_dir} already holds a run ({', '.join(found)}): pass "
                                "--resume to continue it or --overwrite to delete it and start over")


@contextlib.contextmanager
def hold_run_dir(run_dir: str | Path) -> Iterator[None]:
    """Hold the run directory while the block runs: an exclusive ``fcntl`` lock on the sibling file
    ``.<name>.lock`` (beside the directory, so ``--overwrite`` replacing the directory keeps it). A second
    ``train`` or ``--resume`` into the same directory is refused, naming the process that holds it; the
    kernel drops the lock when that process ends, so a killed run never blocks its resume."""
    run_dir = Path(run_dir)
    path = run_dir.parent / f".{run_dir.name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunDirectoryError(f"output directory {run_dir} is in use by a run still going ({holder}); wait "
                                    "for it to end, stop it, or pass another --output-dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def clear_run_dir(run_dir: str | Path) -> None:
    """Delete a run directory (renamed away first, so an interrupted delete leaves no half run)."""
    run_dir = Path(run_dir)
    if run_dir.exists():
        _discard(run_dir)


def _discard(path: Path) -> None:
    """Rename ``path`` to a ``.trash-*`` sibling (atomic), then delete it."""
    trash = path.with_name(f"{_TRASH}{path.name}-{uuid.uuid4().hex[:8]}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Finding and verifying checkpoints


def _step_of(path: Path) -> tuple[int, int] | None:
    """``(step, rank)`` of a checkpoint directory name, ``None`` for anything else."""
    for prefix, rank in _COPIES.items():
        digits = path.name[len(prefix):]
        if path.name.startswith(prefix) and digits.isdigit():
            return int(digits), rank
    return None


def _copies(root: Path) -> list[tuple[int, int, Path]]:
    """Every complete copy under ``root`` as ``(step, rank, path)``, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        key = _step_of(path)
        if key is not None and (path / STATE_FILE).is_file():
            found.append((*key, path))
    return sorted(found)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first: one per step, its newest complete copy."""
    newest: dict[int, Path] = {}
    for step, _, path in _copies(Path(run_dir) / CHECKPOINTS):
        newest[step] = path
    return [newest[step] for step in sorted(newest)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def read_trainer_state(checkpoint: str | Path) -> TrainerState:
    path = Path(checkpoint) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint} is not a complete training checkpoint: {STATE_FILE} is missing")
    try:
        data = json.loads(path.read_text())
        return TrainerState(**data)
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a valid trainer state: {err}") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checkpoint(checkpoint: str | Path) -> TrainerState:
    """The trainer state of a checkpoint whose files all have their recorded size and SHA-256;
    :class:`RunCheckpointError` naming the first file that does not."""
    checkpoint = Path(checkpoint)
    try:
        state = read_trainer_state(checkpoint)
    except (FileNotFoundError, ValueError) as err:
        raise RunCheckpointError(str(err)) from None
    for name, expected in sorted(state.files.items()):
        path = checkpoint / name
        if not path.is_file():
            raise RunCheckpointError(f"{path}: missing from the checkpoint")
        size = path.stat().st_size
        if size != expected["size"]:
            raise RunCheckpointError(f"{path}: {size} bytes, expected {expected['size']} (truncated or overwritten)")
        if _sha256(path) != expected["sha256"]:
            raise RunCheckpointError(f"{path}: SHA-256 mismatch, the file is corrupted")
    return state


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every file under ``folder`` (fsynced on the way)."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        _fsync(path)
        files[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    return files


# what torch's zip writer says when fwrite fails (it loses errno): a full disk, almost always
_FAILED_WRITE = ("file write failed", "unexpected pos", "iostream error")


def _no_space(err: BaseException | None) -> bool:
    while err is not None:
        if getattr(err, "errno", None) == errno.ENOSPC or "No space left" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def _write_error(path: Path, err: BaseException, previous: Path | None) -> str:
    free = shutil.disk_usage(path.parent if path.parent.exists() else ".").free / 2**20
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if _no_space(err) or free < 1:
        why = "no space left on device"
    elif any(marker in str(err) for marker in _FAILED_WRITE):
        why = f"a write failed, most likely no space left on device ({first_line})"
    else:
        why = f"{type(err).__name__}: {first_line}"
    kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
    return f"could not write the checkpoint {path}: {why} ({free:.0f} MiB free on its disk); {kept}"


class Checkpointer:
    """Saves and restores checkpoints of one run; every process calls :meth:`save` / :meth:`load`.

    The model, optimizer and scaler must have gone through ``accelerator.prepare``. The LR
    scheduler is not prepared (Accelerate would step it once per process); its state travels
    in ``trainer_state.json`` instead.
    """

    def __init__(self, accelerator: Accelerator, run_dir: str | Path, keep: int = 2) -> None:
        self.accelerator = accelerator
        self.root = Path(run_dir) / CHECKPOINTS
        self.keep = keep

    def save(self, state: TrainerState, scheduler=None) -> Path:
        acc = self.accelerator
        final = self.root / f"{_PREFIX}{state.global_step:08d}"
        tmp = self.root / f".tmp-{final.name}"
        previous = latest_checkpoint(self.root.parent)
        if acc.is_main_process:
            if (tmp / STATE_FILE).is_file() and not final.exists():  # a complete copy left by a kill: keep it
                os.replace(tmp, final)
            elif tmp.exists():
                _discard(tmp)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        try:
            acc.save_state(str(tmp))
            acc.wait_for_everyone()
            if acc.is_main_process:
                if scheduler is not None:
                    state.scheduler = scheduler.state_dict()
                state.files = _manifest(tmp)
                write_json_atomic(tmp / STATE_FILE, state.to_dict(), fsync=True)  # last: it marks the copy complete
                _fsync(tmp)
        except Exception as err:  # noqa: BLE001  (torch: RuntimeError, safetensors: SafetensorError, OSError ...)
            if acc.is_main_process and tmp.exists():
                _discard(tmp)
            raise CheckpointWriteError(_write_error(tmp, err, previous)) from err
        if acc.is_main_process:
            old = self.root / f".old-{final.name}"
            if final.exists():  # the same step saved again (e.g. the epoch end right after a step save)
                if old.exists():
                    _discard(old)
                os.replace(final, old)
            os.replace(tmp, final)
            _fsync(self.root)
            if old.exists():
                _discard(old)
            self._rotate()
        acc.wait_for_everyone()
        return final

    def _rotate(self) -> None:
        """Keep the ``keep`` newest checkpoints; delete older ones and stale copies of kept steps."""
        kept = list_checkpoints(self.root.parent)
        if self.keep > 0:
            kept = kept[-self.keep:]
        for _, _, path in _copies(self.root):
            if path not in kept:
                _discard(path)
        for path in self.root.glob(".tmp-" + _PREFIX + "*"):  # half-written by a killed save (one writer)
            if not (path / STATE_FILE).is_file():
                _discard(path)
        for path in self.root.glob(_TRASH + "*"):  # left by a kill in the middle of a delete
            shutil.rmtree(path, ignore_errors=True)

    def load(self, checkpoint: str | Path, scheduler=None) -> TrainerState:
        """Restore model, optimizer, scaler and RNG states (files verified first), and return the trainer state."""
        state = verify_checkpoint(checkpoint)
        try:
            self.accelerator.load_state(str(checkpoint))
        except Exception as err:  # noqa: BLE001  (safetensors / torch raise many types)
            raise RunCheckpointError(f"{checkpoint}: could not be restored ({type(err).__name__}: {err})") from err
        if scheduler is not None and state.scheduler:
            scheduler.load_state_dict(state.scheduler)
        return state

    def _newest_good(self, run_dir: Path, what: str) -> Path:
        found = list_checkpoints(run_dir)
        if not found:
            raise FileNotFoundError(f"{what}: no complete checkpoint under {run_dir / CHECKPOINTS} (the run died "
                                    "before its first one? start it over with --overwrite)")
        for checkpoint in reversed(found):
            try:
                verify_checkpoint(checkpoint)
                return checkpoint
            except RunCheckpointError as err:
                logger.warning("%s: skipping a corrupt checkpoint: %s", what, err)
        raise RunCheckpointError(f"{what}: every checkpoint under {run_dir / CHECKPOINTS} is corrupt "
                              f"({', '.join(p.name for p in found)}); see the warnings above")

    def resolve(self, resume: str) -> Path:
        """The checkpoint ``--resume`` means: the newest good one of this run ("latest") or of a
        given run directory, or a given checkpoint directory (verified, no fallback)."""
        if resume == "latest":
            return self._newest_good(self.root.parent, "--resume")
        path = Path(resume)
        if (path / STATE_FILE).is_file():
            verify_checkpoint(path)
            return path
        if not list_checkpoints(path):
            raise FileNotFoundError(f"--resume {resume}: neither a checkpoint nor a run directory with checkpoints")
        return self._newest_good(path, f"--resume {resume}")
