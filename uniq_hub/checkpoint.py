"""Resumable training checkpoints through Accelerate's state, written atomically.

A checkpoint is ``<run>/checkpoints/step-<global step>/``: what ``accelerator.save_state``
writes (model with its latent full-precision weights and step sizes, optimizer, grad scaler,
per-process RNG states) plus ``trainer_state.json`` (epoch, position in the epoch, global step,
best metric, LR-scheduler state). It is written into a ``.tmp-step-*`` directory first and
renamed when complete (``trainer_state.json`` last), so a run killed mid-save leaves no
half checkpoint behind; :func:`latest_checkpoint` only ever sees complete ones.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from accelerate import Accelerator

__all__ = ["TrainerState", "Checkpointer", "latest_checkpoint", "list_checkpoints", "read_trainer_state"]

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
_PREFIX = "step-"


@dataclass
class TrainerState:
    """Where training is: ``epoch`` (0-based, the one in progress), optimizer steps done in it,
    optimizer steps overall, the best evaluation so far, and the LR scheduler's state."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    scheduler: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(_PREFIX) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX):]))


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
    except (json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"{path} is not a valid trainer state: {err}") from None


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            if scheduler is not None:
                state.scheduler = scheduler.state_dict()
            _write_json_atomic(tmp / STATE_FILE, state.to_dict())
            old = self.root / f".old-{final.name}"
            if final.exists():  # the same step saved again (e.g. the epoch end right after a step save)
                os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
            self._rotate()
        acc.wait_for_everyone()
        return final

    def _rotate(self) -> None:
        if self.keep > 0:
            for old in list_checkpoints(self.root.parent)[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)

    def load(self, checkpoint: str | Path, scheduler=None) -> TrainerState:
        """Restore model, optimizer, scaler and RNG states, and return the trainer state."""
        state = read_trainer_state(checkpoint)
        self.accelerator.load_state(str(checkpoint))
        if scheduler is not None and state.scheduler:
            scheduler.load_state_dict(state.scheduler)
        return state

    def resolve(self, resume: str) -> Path:
        """The checkpoint ``--resume`` means: "latest" in this run, or a given directory."""
        if resume == "latest":
            found = latest_checkpoint(self.root.parent)
            if found is None:
                raise FileNotFoundError(f"--resume: no complete checkpoint under {self.root}")
            return found
        path = Path(resume)
        if (path / STATE_FILE).is_file():
            return path
        found = latest_checkpoint(path)  # a run directory
        if found is None:
            raise FileNotFoundError(f"--resume {resume}: neither a checkpoint nor a run directory with checkpoints")
        return found
