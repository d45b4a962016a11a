"""What a run directory records about how it was trained, and what ``--resume`` may change.

``train_config.json`` holds the run's resolved options as they apply now; ``run_history.json``
holds every invocation: the first one's full options and data, then each resume's changes
(``{option: [before, after]}``) and time. So nothing is lost when ``--resume --allow-changes``
extends ``--epochs``, and a failed resume writes nothing (both files are written once the
resumed run is set up).

``--resume`` compares the new resolved options with the recorded ones field by field (any
``TrainConfig`` field, present or future). A difference is refused, listing all of them; with
``--allow-changes`` the ones in :data:`SAFE_TO_CHANGE` proceed (they change how long the run goes
or what it logs, not what it computes), anything else is still refused. The data must also be
the same (training and evaluation sizes, classes): another dataset size changes every epoch's
steps and the schedule.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from ..model.atomic import write_json_atomic
from ..model.constants import TRAIN_CONFIG_FILE
from ..model.quantize import rename_legacy

__all__ = ["HISTORY_FILE", "SAFE_TO_CHANGE", "ResumeError", "check_resume", "check_same_data", "config_changes",
           "record_run"]

HISTORY_FILE = "run_history.json"
# Options a resumed run may change with --allow-changes: length, logging, checkpointing, workers.
SAFE_TO_CHANGE = frozenset({
    "epochs", "max_steps", "num_workers", "progress", "log_with", "save_every", "eval_every", "log_every",
    "dynamics_every", "keep_checkpoints", "compile_kernels",
})
# Bookkeeping of the invocation itself, never compared.
_NOT_COMPARED = frozenset({"resume", "overwrite", "allow_changes"})


class ResumeError(ValueError):
    """``--resume`` with options or data that differ from the run's recorded ones; nothing was written."""


def _normal(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _defaults(config_class: type) -> dict[str, Any]:
    out = {}
    for f in fields(config_class):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
    return out


def config_changes(recorded: dict[str, Any], current: Any) -> dict[str, tuple[Any, Any]]:
    """``{option: (recorded, now)}`` for every field of ``current`` (a ``TrainConfig``) whose value
    differs from the recorded one (a field the record predates counts as its default)."""
    recorded = rename_legacy(dict(recorded), TRAIN_CONFIG_FILE)
    defaults = _defaults(type(current))
    changes = {}
    for f in fields(current):
        if f.name in _NOT_COMPARED:
            continue
        before = _normal(recorded.get(f.name, defaults.get(f.name)))
        after = _normal(getattr(current, f.name))
        if before != after:
            changes[f.name] = (before, after)
    return changes


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ResumeError(f"{path}: cannot read the run's record ({err}); nothing was changed") from None


def check_resume(cfg: Any) -> dict[str, tuple[Any, Any]]:
    """The option changes of a ``--resume`` of ``cfg.run_dir`` (raises :class:`ResumeError` naming
    each refused one). Writes nothing."""
    path = cfg.run_dir / TRAIN_CONFIG_FILE
    if not path.is_file():
        return {}  # nothing recorded (a run of a version before the record): the checkpoint decides
    changes = config_changes(_read(path), cfg)
    refused = {k: v for k, v in changes.items() if not (cfg.allow_changes and k in SAFE_TO_CHANGE)}
    if refused:
        listed = "; ".join(f"{k}: {b!r} -> {a!r}" for k, (b, a) in sorted(refused.items()))
        safe = sorted(k for k in refused if k in SAFE_TO_CHANGE)
        unsafe = sorted(k for k in refused if k not in SAFE_TO_CHANGE)
        advice = []
        if safe:
            advice.append(f"--allow-changes accepts {safe} (recorded in {HISTORY_FILE})")
        if unsafe:
            advice.append(f"{unsafe} cannot change in a resumed run: pass the recorded values, or start a new run "
                          "(another --output-dir, or --init-from this run)")
        raise ResumeError(f"--resume {cfg.run_dir}: the options differ from the run's recorded ones ({path}): "
                          f"{listed}. {'; '.join(advice)}. Nothing was changed")
    return changes


def check_same_data(run_dir: Path, data: dict[str, Any]) -> None:
    """Refuse a resume whose data (sizes, classes) differ from what the run recorded."""
    path = run_dir / HISTORY_FILE
    if not path.is_file():
        return
    recorded = next((e["data"] for e in reversed(_read(path).get("invocations", [])) if e.get("data")), None)
    if recorded is None:
        return
    diff = {k: (recorded.get(k), v) for k, v in _normal(data).items() if recorded.get(k) != v}
    if diff:
        listed = "; ".join(f"{k}: {b!r} -> {a!r}" for k, (b, a) in sorted(diff.items()))
        raise ResumeError(f"--resume {run_dir}: the data differ from the run's ({listed}); a resumed run must see "
                          "the same examples (start a new run instead). Nothing was changed")


def record_run(cfg: Any, data: dict[str, Any], changes: dict[str, tuple[Any, Any]] | None) -> None:
    """Write ``train_config.json`` (the options as they apply now) and append this invocation to
    ``run_history.json`` (``changes`` None: a new run, recorded in full)."""
    run_dir = cfg.run_dir
    path = run_dir / HISTORY_FILE
    history = _read(path) if path.is_file() else {"invocations": []}
    entry: dict[str, Any] = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if changes is None or not history["invocations"]:
        entry.update(kind="start" if changes is None else "resume", config=_normal(cfg.to_dict()))
    else:
        entry.update(kind="resume", resume=cfg.resume)
    if changes:
        entry["changes"] = {k: list(v) for k, v in sorted(changes.items())}
    entry["data"] = _normal(data)
    history["invocations"].append(entry)
    write_json_atomic(run_dir / TRAIN_CONFIG_FILE, cfg.to_dict())
    write_json_atomic(path, history)
