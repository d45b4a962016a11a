"""The machine a number was measured on: CPU model, cores, and the instruction set the kernels used.

Quantized predictions can differ by CPU (a float sum in another order flips a value sitting on a
rounding boundary; docs/portability.md), so every recorded accuracy and timing names its machine.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

__all__ = ["cpu_model", "machine_record", "benchmark_command", "write_benchmark"]

# The environment variables that cap the kernels' instruction set (recorded when set).
ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_record() -> dict[str, Any]:
    """``{"cpu", "cores", "isa", "isa_env"?, "torch"}``: ``isa`` is the instruction set PyTorch's CPU
    kernels dispatch to (``torch.backends.cpu.get_cpu_capability()``, e.g. ``AVX512``), and
    ``isa_env`` the caps set through :data:`ISA_VARIABLES`."""
    import torch

    record: dict[str, Any] = {"cpu": cpu_model(), "cores": os.cpu_count(),
                              "isa": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}
    caps = {k: os.environ[k] for k in ISA_VARIABLES if os.environ.get(k)}
    if caps:
        record["isa_env"] = caps
    return record


def benchmark_command(script: str, argv: Sequence[str] | None = None) -> str:
    """The command that reproduces a benchmark run: ``python <script> <its arguments>``."""
    return f"python {script} " + shlex.join(sys.argv[1:] if argv is None else argv)


def write_benchmark(path: str | os.PathLike, data: dict[str, Any], command: str) -> Path:
    """A benchmark's results JSON (atomically): its ``command``, the machine it ran on, then ``data``."""
    from .model.atomic import write_json_atomic

    return write_json_atomic(path, {"command": command, "machine": machine_record(), **data})
