"""``uniq-hub plot RUN [RUN ...]``: training dynamics (the paper's Figure 4) and accuracy against
bits across runs (its Figure 1, for our results), as PNG files.

Reads what ``uniq-hub train`` writes into a run directory: ``train_config.json``,
``dynamics.jsonl`` (per-quantizer ``step``, ``std``, ``sqnr``, ``sqnr_opt`` every K steps),
``summary.json`` and ``export/eval_results.json``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .catalog.zoo import get_entry
from .model.atomic import read_json
from .model.constants import EXPORT_DIR, FP_BITS, RESULTS_FILE, SUMMARY_FILE, TRAIN_CONFIG_FILE

__all__ = ["RunResult", "read_dynamics", "pick_quantizers", "plot_dynamics", "run_results", "plot_accuracy",
           "plot_zoo", "add_arguments", "run"]

_STATS = ("step", "std", "sqnr", "sqnr_opt")


def read_dynamics(run_dir: str | Path) -> dict[str, dict[str, list[float]]]:
    """``{quantizer: {"epoch": [...], "step": [...], "std": [...], "sqnr": [...], "sqnr_opt": [...]}}``."""
    path = Path(run_dir) / "dynamics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: was the run quantized, with --dynamics-every > 0?")
    series: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{path}:{number} is not a JSON line") from None
        names = dict.fromkeys(key.rsplit("/", 1)[0] for key in row if "/" in key)  # model order
        for name in names:
            if all(f"{name}/{s}" in row for s in _STATS):
                series[name]["epoch"].append(row.get("epoch", row["step"]))
                for s in _STATS:
                    series[name][s].append(row[f"{name}/{s}"])
    return {name: dict(values) for name, values in series.items()}


def pick_quantizers(names: list[str], patterns: list[str] | None = None, limit: int = 4) -> list[str]:
    """Quantizers to draw: those containing one of ``patterns``, else ``limit`` activation
    quantizers spread over the depth (the paper shows an activation quantizer)."""
    if patterns:
        chosen = [n for n in names if any(p in n for p in patterns)]
        if not chosen:
            raise ValueError(f"no quantizer matches {patterns}; quantizers are e.g. {names[:4]}")
        return chosen
    acts = [n for n in names if n.endswith("input_quantizer")] or names
    if len(acts) <= limit:
        return acts
    return [acts[round(i * (len(acts) - 1) / (limit - 1))] for i in range(limit)]


def _agg():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_dynamics(run_dir: str | Path, out: str | Path, patterns: list[str] | None = None, limit: int = 4) -> Path:
    """One PNG: per quantizer, step size and input std (top) and SQNR with the Table 1 optimum
    dashed (bottom); the warm-up epochs shaded."""
    plt = _agg()
    run_dir = Path(run_dir)
    dynamics = read_dynamics(run_dir)
    names = pick_quantizers(list(dynamics), patterns, limit)
    config = read_json(run_dir / TRAIN_CONFIG_FILE) if (run_dir / TRAIN_CONFIG_FILE).is_file() else {}
    warmup = float(config.get("warmup_epochs") or 0)
    fig, axes = plt.subplots(2, len(names), figsize=(4.2 * len(names), 6), squeeze=False, sharex=True)
    for col, name in enumerate(names):
        d = dynamics[name]
        top, bottom = axes[0][col], axes[1][col]
        top.plot(d["epoch"], d["step"], label="step size Δ", color="tab:blue")
        top.plot(d["epoch"], d["std"], label="std of input", color="tab:green")
        top.set_yscale("log")
        top.set_title(name, fontsize=9)
        bottom.plot(d["epoch"], d["sqnr"], label="SQNR", color="tab:red")
        bottom.axhline(d["sqnr_opt"][-1], color="tab:orange", linestyle="--", label="optimal SQNR (Table 1)")
        bottom.set_xlabel("epoch")
        for ax in (top, bottom):
            if warmup:
                ax.axvspan(0, warmup, color="0.9", label="warm-up" if ax is bottom else None)
            ax.grid(alpha=0.3)
        if col == 0:
            top.set_ylabel("value (log scale)")
            bottom.set_ylabel("SQNR (dB)")
            top.legend(fontsize=8)
            bottom.legend(fontsize=8)
    bits = f"w{config.get('w_bits')}a{config.get('a_bits')}" if config else ""
    fig.suptitle(f"training dynamics: {config.get('run_name', run_dir.name)} {bits} ({config.get('optimizer', '')})")
    return _save(fig, out)


def _save(fig, out: str | Path) -> Path:
    """Write ``fig`` as a PNG to ``out`` (parents created) and close it."""
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    _agg().close(fig)
    return out


@dataclass(frozen=True)
class RunResult:
    """One run's point of the accuracy-against-bits plot."""

    run: str
    arch: str
    dataset: str
    method: str
    bits: int  # min of weight / activation bits; 32: full precision
    top1: float
    paper_top1: float | None = None


def _paper_top1(zoo_name: str | None) -> float | None:
    if not zoo_name:
        return None

    try:
        return get_entry(zoo_name).paper_top1
    except KeyError:
        return None


def run_results(run_dirs: list[str | Path]) -> list[RunResult]:
    """Accuracy and bits of each run: ``export/eval_results.json`` (else ``summary.json``'s test top-1)."""
    results = []
    for run_dir in map(Path, run_dirs):
        config_path = run_dir / TRAIN_CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"{run_dir} is not a training run directory: {TRAIN_CONFIG_FILE} is missing")
        config = read_json(config_path)
        top1 = None
        export, summary = run_dir / EXPORT_DIR / RESULTS_FILE, run_dir / SUMMARY_FILE
        if export.is_file() and read_json(export).get("top1") is not None:
            top1 = float(read_json(export)["top1"])
        elif summary.is_file() and (read_json(summary).get("test") or {}).get("top1") is not None:
            top1 = float(read_json(summary)["test"]["top1"])
        if top1 is None:
            raise ValueError(f"{run_dir}: no accuracy yet (neither export/eval_results.json nor summary.json)")
        results.append(RunResult(
            run=config.get("run_name") or run_dir.name, arch=config["arch"], dataset=config["dataset"],
            method=config.get("method", "uniq"), bits=min(int(config["w_bits"]), int(config["a_bits"])),
            top1=top1, paper_top1=_paper_top1(config.get("zoo")),
        ))
    return results


def plot_accuracy(results: list[RunResult], out: str | Path) -> Path:
    """Top-1 against bits, one line per architecture / method / dataset; FP drawn at the right
    as a dashed horizontal reference; the paper's numbers (zoo runs) as hollow markers."""
    plt = _agg()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    quantized_bits = sorted({r.bits for r in results if r.bits != FP_BITS}) or [1, 2, 3, 4]
    fp_x = max(quantized_bits) + 1
    groups: dict[tuple[str, str], list[RunResult]] = defaultdict(list)
    for r in results:
        groups[(r.arch, r.dataset)].append(r)
    for (arch, dataset), rows in groups.items():
        fp = [r for r in rows if r.bits == FP_BITS]
        by_method: dict[str, list[RunResult]] = defaultdict(list)
        for r in rows:
            if r.bits != FP_BITS:
                by_method[r.method].append(r)
        for method, points in by_method.items():
            points.sort(key=lambda r: r.bits)
            label = f"{arch} {method.upper() if method == 'lsq' else 'UniQ'} ({dataset.rsplit('/', 1)[-1]})"
            line = ax.plot([r.bits for r in points], [r.top1 for r in points], marker="o", label=label)[0]
            paper = [(r.bits, r.paper_top1) for r in points if r.paper_top1 is not None]
            if paper:
                ax.scatter(*zip(*paper), facecolors="none", edgecolors=line.get_color(), s=70,
                           label=f"{arch}: paper")
        for r in fp:
            ax.axhline(r.top1, linestyle="--", color="0.5", linewidth=1)
            ax.plot([fp_x], [r.top1], marker="s", color="0.3", label=f"{arch} FP ({dataset.rsplit('/', 1)[-1]})")
    ax.set_xticks(quantized_bits + [fp_x], [str(b) for b in quantized_bits] + ["FP"])
    ax.set_xlabel("bits (weights / activations)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("accuracy against bits")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out)


def plot_zoo(records: dict[str, dict[str, Any]], out: str | Path) -> Path:
    """Test top-1 against the size of ``model.safetensors`` (log scale), one line per architecture from
    1 bit to FP, each point labelled with its bits; ``records``: :func:`uniq_hub.hub.zoo_release.release_records`."""
    plt = _agg()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    families: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for name, record in records.items():
        family, bits = name.split("/", 1)[-1].rsplit("-", 1)
        families[family].append((record["weights_bytes"] / 1e6, float(record["top1"]), bits))
    for family, points in sorted(families.items()):
        points.sort()
        line = ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=family)[0]
        for size, top1, bits in points:
            ax.annotate(bits.upper() if bits == "fp" else bits, (size, top1), textcoords="offset points",
                        xytext=(4, -10), fontsize=7, color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("model.safetensors (MB, log scale)")
    ax.set_ylabel("top-1 on the 10k test images (%)")
    ax.set_title("Fashion-MNIST zoo: accuracy against checkpoint size")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="training run directories")
    parser.add_argument("--out", help="output directory (default: <run>/plots for one run, else ./plots)")
    parser.add_argument("--quantizers", nargs="+", metavar="PATTERN",
                        help="quantizers to draw (substrings of names, e.g. layer2.0.conv1.input)")
    parser.add_argument("--max-quantizers", type=int, default=4, help="activation quantizers drawn by default")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else (Path(args.runs[0]) / "plots" if len(args.runs) == 1 else Path("plots"))
    written = []
    for run_dir in map(Path, args.runs):
        if (run_dir / "dynamics.jsonl").is_file():
            written.append(plot_dynamics(run_dir, out / f"{run_dir.name}-dynamics.png", args.quantizers,
                                         args.max_quantizers))
    results = run_results(args.runs)
    written.append(plot_accuracy(results, out / "accuracy_vs_bits.png"))
    for r in sorted(results, key=lambda r: (r.arch, r.dataset, r.method, -r.bits)):
        bits = "FP" if r.bits == FP_BITS else f"{r.bits}"
        paper = "" if r.paper_top1 is None or math.isnan(r.paper_top1) else f"  (paper {r.paper_top1:.1f}%)"
        print(f"{r.run:<40} {r.arch:<12} bits {bits:<3} top-1 {r.top1:6.2f}%{paper}")
    for path in written:
        print(f"wrote {path}")
    return 0
