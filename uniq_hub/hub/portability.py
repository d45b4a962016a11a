"""What a zoo card's number means on another CPU, and the check that it still holds.

Quantization is discontinuous: a float sum taken in another order (oneDNN and ATen pick their kernels
by instruction set) moves an activation by one ulp, and where it sits on a rounding boundary it lands
on the next level, so a few of 10k predictions can change between CPUs (docs/portability.md). A
release folder therefore keeps its per-image predictions (``eval_predictions.json``), the machine that
measured them, and the spread measured under the instruction sets this machine can imitate
(:data:`ISA_SETTINGS`, one child process each: kernels are chosen at start-up). On the measuring
machine a re-derivation must match exactly; elsewhere at most :data:`MAX_DIFFERING` predictions may
differ, and top-1 / top-5 move by at most that many images.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..machine import ISA_VARIABLES, machine_record
from ..model.atomic import write_text_atomic
from ..model.constants import PREDICTIONS_FILE

__all__ = ["ISA_SETTINGS", "MAX_DIFFERING", "available_settings", "predictions_under", "measure_spread",
           "write_predictions", "read_predictions", "rederivation_errors"]

# Environment settings that make this CPU's kernels those of an older one. oneDNN (convolutions) and
# ATen (elementwise, BatchNorm, pooling) are capped together, as an older CPU has them; MKL too.
ISA_SETTINGS: dict[str, dict[str, str]] = {
    "default": {},
    "avx512_core": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}
# Predictions (of 10k) a card allows to differ on another CPU: the largest spread measured over the
# zoo and these settings was 3 (benchmarks/results/isa-spread.json); 10 leaves room for CPUs not tried.
MAX_DIFFERING = 10


def available_settings() -> list[str]:
    """The :data:`ISA_SETTINGS` this CPU can run (AVX-512 ones need it)."""
    flags = ""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        pass
    return [name for name in ISA_SETTINGS if "avx512" not in name or "avx512f" in flags]


def predictions_under(folder: str | os.PathLike, dataset: str, split: str, setting: str) -> list[int]:
    """Per-image top-1 of ``folder`` on ``dataset``/``split`` in a child process run under ``setting``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "predictions.json"
        env = {k: v for k, v in os.environ.items() if k not in ISA_VARIABLES}
        subprocess.run([sys.executable, "-m", "uniq_hub.hub.portability", os.fspath(folder), dataset, split,
                        os.fspath(out)], check=True, env={**env, **ISA_SETTINGS[setting]})
        return json.loads(out.read_text())["predictions"]


def measure_spread(folder: str | os.PathLike, dataset: str, split: str, predictions: list[int],
                   settings: list[str] | None = None) -> dict[str, Any]:
    """``{"max_differing", "differing": {setting: n}}``: how many of ``predictions`` (this process's)
    each setting (default: every other one this CPU runs) changes. Raises ``ValueError`` when one
    exceeds :data:`MAX_DIFFERING`."""
    differing = {}
    for setting in settings or [s for s in available_settings() if s != "default"]:
        other = predictions_under(folder, dataset, split, setting)
        differing[setting] = _count_differing(predictions, other)
    worst = max(differing.values(), default=0)
    if worst > MAX_DIFFERING:
        raise ValueError(f"{folder}: {worst} predictions differ between instruction sets ({differing}), more than "
                         f"the {MAX_DIFFERING} a card allows")
    return {"max_differing": MAX_DIFFERING, "differing": differing}


def write_predictions(folder: str | os.PathLike, record: dict[str, Any], predictions: list[int]) -> Path:
    """``eval_predictions.json``: the record's split, size and the per-image top-1 (one line of ids)."""
    data = {"dataset": record["dataset"], "split": record["split"], "num_examples": len(predictions),
            "machine": record.get("machine")}
    text = json.dumps(data, indent=2)[:-2] + ',\n  "predictions": ' + json.dumps(predictions) + "\n}\n"
    return write_text_atomic(Path(folder) / PREDICTIONS_FILE, text)


def read_predictions(folder: str | os.PathLike) -> list[int]:
    path = Path(folder) / PREDICTIONS_FILE
    try:
        predictions = json.loads(path.read_text())["predictions"]
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{path}: no per-image predictions ({err}); re-release the folder") from None
    if not isinstance(predictions, list) or not all(isinstance(p, int) for p in predictions):
        raise ValueError(f"{path}: 'predictions' must be a list of class ids")
    return predictions


def _count_differing(a: list[int], b: list[int]) -> int:
    """How many per-image predictions of two runs over the same images differ."""
    return sum(x != y for x, y in zip(a, b, strict=True))


def _same_machine(recorded: dict[str, Any] | None, now: dict[str, Any]) -> bool:
    keys = ("cpu", "isa", "isa_env")
    return recorded is not None and all(recorded.get(k) == now.get(k) for k in keys)


def rederivation_errors(folder: str | os.PathLike, record: dict[str, Any], committed: dict[str, Any]) -> list[str]:
    """What is wrong with a re-derived ``record`` (an :func:`~uniq_hub.training.evaluate.evaluate` result
    with ``predictions``) against the folder's ``committed`` ``eval_results.json`` and predictions; empty
    when the card holds. Exact on the measuring machine, within :data:`MAX_DIFFERING` elsewhere."""
    expected = read_predictions(folder)
    now = record["predictions"]
    if len(now) != len(expected) or record["num_examples"] != committed["num_examples"]:
        return [f"{record['num_examples']} examples evaluated, the card has {committed['num_examples']}"]
    differing = _count_differing(now, expected)
    exact = _same_machine(committed.get("machine"), machine_record())
    allowed = 0 if exact else committed.get("portability", {}).get("max_differing", 0)
    where = "on the machine that measured the card" if exact else "on another CPU"
    errors = []
    if differing > allowed:
        errors.append(f"{differing} of {len(now)} predictions differ from {PREDICTIONS_FILE} {where} "
                      f"(allowed: {allowed})")
    tolerance = 100.0 * allowed / len(now) + 1e-9
    for metric in ("top1", "top5"):
        if committed.get(metric) is not None and abs(record[metric] - committed[metric]) > tolerance:
            errors.append(f"{metric} {record[metric]:.2f} against the card's {committed[metric]:.2f} {where} "
                          f"(allowed: {tolerance:.2f} points)")
    return errors


def _child(folder: str, dataset: str, split: str, out: str) -> None:
    from ..training.evaluate import evaluate

    record = evaluate(folder, dataset, split, batch_size=500, num_workers=0, predictions=True)
    Path(out).write_text(json.dumps({"predictions": record["predictions"]}))


if __name__ == "__main__":
    _child(*sys.argv[1:5])
