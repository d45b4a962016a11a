"""Training-step and eval-forward speed of UniQ fake quantization, as ratios to full precision.

One process times, side by side and interleaved (rep 1: every variant once, rep 2: every
variant once in a rotated order, ...), the full-precision model, the detach-trick baseline
(``benchmarks/baseline_quant.py``, same policy and step sizes) and ``uniq_hub``'s quantizers
(``ours``: compiled kernels; ``ours-eager``: the fallback without compile, ``UNIQ_COMPILE=0``;
``ours-keep``: compiled but keeping ``Q(x)`` for backward, ``UNIQ_RECOMPUTE=0``), for a training step (zero_grad,
forward, cross-entropy, backward, SGD step) and an eval forward (``model.eval()`` under
``torch.no_grad()``). Reported: medians over the repetitions and their ratios to FP.

Peak memory of a training step, CPU: each variant runs in a fresh subprocess with glibc's
``MALLOC_MMAP_THRESHOLD_=65536`` (every tensor above 64 KiB is its own mapping and goes back to
the OS when freed, so resident memory follows live tensors); after warm-up steps the peak-RSS
mark is reset (``/proc/self/clear_refs``) and the reported number is peak RSS during one step
minus RSS before it: activations, gradients, autograd-saved tensors and temporaries, not the
parameters / optimizer state / libraries present before the step. CUDA: the same delta from
``torch.cuda.max_memory_allocated``.

Usage::

    python benchmarks/speed.py                         # full CPU run, ~15 min on 2 cores
    python benchmarks/speed.py --quick                 # ~1 min smoke test
    python benchmarks/speed.py --device cuda --amp bf16 --channels-last --batch resnet18=256
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from baseline_quant import to_baseline  # noqa: E402
from uniq_hub import QuantConfig, calibrate, create_model, quantize_  # noqa: E402
from uniq_hub.machine import cpu_model  # noqa: E402
from uniq_hub.model.quant_kernels import set_compile, set_recompute  # noqa: E402

# name -> (input channels, image size, batch, classes)
MODELS = {"resnet20": (1, 28, 128, 10), "resnet18": (3, 224, 16, 1000)}
# variant -> (uses quantize_, detach-trick baseline, compiled kernels, recompute Q(x) in backward)
VARIANTS = {"fp": (False, False, False, False), "baseline": (True, True, False, False),
            "ours": (True, False, True, True), "ours-eager": (True, False, False, True),
            "ours-keep": (True, False, True, False)}
TARGETS = {"train": 1.15, "eval": 1.05, "memory": 1.20}
MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def build(model: str, variant: str, bits: int | None, device: str, channels_last: bool, batch: int,
          compile_model: bool = False) -> dict:
    """A model of ``variant`` with its optimizer and a fixed batch; ``compile_model``: the whole
    model under ``torch.compile`` (every variant, FP included, so ratios compare like with like)."""
    chans, size, _, classes = MODELS[model]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, chans, size, size, generator=gen)
    y = torch.randint(0, classes, (batch,), generator=gen)
    torch.manual_seed(0)
    net = create_model(model, num_classes=classes, num_channels=chans)
    quantized, baseline = VARIANTS[variant][:2]
    if quantized:
        quantize_(net, QuantConfig(w_bits=bits, a_bits=bits))
        calibrate(net, [x[: min(batch, 64)]])
        if baseline:
            net = to_baseline(net)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(device=device, memory_format=memory_format)
    x = x.to(device=device, memory_format=memory_format)
    if compile_model:
        net = torch.compile(net)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    return {"net": net, "opt": opt, "x": x, "y": y.to(device)}


class Runner:
    """Runs one variant's training step / eval forward with its compile switch and autocast."""

    def __init__(self, variant: str, state: dict, device: str, amp: str | None) -> None:
        self.variant, self.s, self.device, self.amp = variant, state, device, amp
        self.compiled, self.recompute = VARIANTS[variant][2:]

    def _ctx(self):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.amp or "")
        return torch.autocast(self.device, dtype=dtype) if dtype else torch.autocast(self.device, enabled=False)

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def train_step(self) -> None:
        set_compile(self.compiled)
        set_recompute(self.recompute)
        net, opt = self.s["net"], self.s["opt"]
        net.train()
        opt.zero_grad(set_to_none=True)
        with self._ctx():
            loss = F.cross_entropy(net(self.s["x"]), self.s["y"])
        loss.backward()
        opt.step()

    def eval_forward(self) -> torch.Tensor:
        set_compile(self.compiled)
        net = self.s["net"]
        net.eval()
        with torch.no_grad(), self._ctx():
            return net(self.s["x"])

    def timed(self, fn) -> float:
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t0


def interleaved(runners: dict[str, Runner], what: str, reps: int) -> dict[str, list[float]]:
    """``reps`` rounds; each round times every runner once, starting one further each round."""
    names, times = list(runners), {n: [] for n in runners}
    for r in range(reps):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            runner = runners[name]
            times[name].append(runner.timed(runner.train_step if what == "train" else runner.eval_forward))
    return times


def memory_probe(model: str, variant: str, bits: int | None, device: str, channels_last: bool, batch: int,
                 amp: str | None, compile_model: bool = False) -> dict:
    """Peak memory of one training step above the memory present before it (see module doc)."""
    runner = Runner(variant, build(model, variant, bits, device, channels_last, batch, compile_model), device, amp)
    for _ in range(2):
        runner.train_step()
    deltas = []
    for _ in range(2):
        runner.s["opt"].zero_grad(set_to_none=True)
        gc.collect()
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            runner.train_step()
            torch.cuda.synchronize()
            deltas.append(torch.cuda.max_memory_allocated() - before)
        else:
            before = _proc_status("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (VmHWM)
            runner.train_step()
            deltas.append(_proc_status("VmHWM") - before)
    return {"peak_step_bytes": max(deltas), "samples": deltas}


def _proc_status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field} line")


def measure_memory(args, model: str, variant: str, bits: int | None, batch: int) -> dict:
    if args.device == "cuda":
        return memory_probe(model, variant, bits, "cuda", args.channels_last, batch, args.amp, args.compile_model)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-probe", model, variant, str(bits or 0),
           "--batch", f"{model}={batch}", "--device", args.device]
    cmd += ["--channels-last"] if args.channels_last else []
    cmd += ["--compile-model"] if args.compile_model else []
    cmd += ["--amp", args.amp] if args.amp else []
    cmd += ["--threads", str(args.threads)] if args.threads else []
    env = {**os.environ, **MMAP_ENV}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"memory probe {model}/{variant}/w{bits} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_model(args, model: str, batch: int) -> list[dict]:
    """Time every variant of ``model`` interleaved; one row per (variant, bits)."""
    keys = [("fp", None)] + [(v, b) for b in args.bits for v in args.variants if v != "fp"]
    names = ["fp" if b is None else f"{v}-w{b}a{b}" for v, b in keys]
    runners = {n: Runner(v, build(model, v, b, args.device, args.channels_last, batch, args.compile_model),
                         args.device, args.amp)
               for n, (v, b) in zip(names, keys)}
    # Fresh models, same weights and steps: the baseline must compute what ours computes.
    agree = {}
    for bits in args.bits:
        pair = [runners.get(f"{v}-w{bits}a{bits}") for v in ("baseline", "ours")]
        if all(pair):
            agree[bits] = float((pair[0].eval_forward().float() - pair[1].eval_forward().float()).abs().max())
    first_step = {}
    for name, runner in runners.items():
        # The first step includes compiling (ours) and allocator warm-up: reported, not in the medians.
        first_step[name] = runner.timed(runner.train_step)
        for _ in range(args.warmup):
            runner.train_step()
            runner.eval_forward()
    train = interleaved(runners, "train", args.reps)
    evals = interleaved(runners, "eval", args.eval_reps)
    fp_train, fp_eval = statistics.median(train["fp"]), statistics.median(evals["fp"])
    rows = []
    for (variant, bits), name in zip(keys, runners):
        t, e = statistics.median(train[name]), statistics.median(evals[name])
        row = {
            "model": model, "batch": batch, "variant": variant, "bits": bits, "name": name,
            "train_ms": 1e3 * t, "eval_ms": 1e3 * e, "train_ratio": t / fp_train, "eval_ratio": e / fp_eval,
            "train_ms_all": [round(1e3 * v, 2) for v in train[name]],
            "eval_ms_all": [round(1e3 * v, 2) for v in evals[name]],
            "first_step_s": first_step[name],
        }
        if bits in agree:
            row["max_abs_logit_diff_baseline_vs_ours"] = agree[bits]
        rows.append(row)
    del runners
    gc.collect()
    if args.memory:
        fp_mem = None
        for row in rows:
            mem = measure_memory(args, model, row["variant"], row["bits"], batch)
            row["peak_step_mb"] = mem["peak_step_bytes"] / 2**20
            fp_mem = fp_mem or row["peak_step_mb"]
            row["memory_ratio"] = row["peak_step_mb"] / fp_mem
    return rows


def markdown(report: dict) -> str:
    """The README table: ratios to full precision, medians of interleaved repetitions."""
    mem = any("memory_ratio" in r for r in report["rows"])
    head = "| model (batch) | variant | train step ms | train / FP | eval ms | eval / FP |" + (
        " peak step MB | memory / FP |" if mem else "")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in report["rows"]:
        cells = [f"{r['model']} ({r['batch']})", r["name"], f"{r['train_ms']:.1f}", f"{r['train_ratio']:.2f}x",
                 f"{r['eval_ms']:.1f}", f"{r['eval_ratio']:.2f}x"]
        if mem:
            cells += [f"{r.get('peak_step_mb', float('nan')):.0f}", f"{r.get('memory_ratio', float('nan')):.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    env = report["environment"]
    lines += [
        "",
        f"Command: `{report['command']}`  ",
        f"torch {env['torch']}, {env['device_name']}, {env['threads']} threads, "
        f"{report['config']['reps']} training / {report['config']['eval_reps']} eval repetitions (median), "
        f"load average {env['loadavg_start']} at start, {env['loadavg_end']} at end.",
    ]
    return "\n".join(lines) + "\n"


def write_block(path: Path, name: str, text: str) -> None:
    """Put ``text`` between ``<!-- name begin -->`` / ``<!-- name end -->`` in ``path``, keeping the rest."""
    begin, end = f"<!-- {name} begin (written by benchmarks/speed.py) -->", f"<!-- {name} end -->"
    block = f"{begin}\n{text}{end}\n"
    old = path.read_text() if path.exists() else "# Speed of UniQ fake quantization\n\n"
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        new = old.rstrip("\n") + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


def targets(report: dict) -> list[str]:
    """One line per ``ours`` row that misses a target, with the miss."""
    misses = []
    for r in report["rows"]:
        if r["variant"] != "ours":
            continue
        for what, key in (("train", "train_ratio"), ("eval", "eval_ratio"), ("memory", "memory_ratio")):
            if key in r and r[key] > TARGETS[what]:
                misses.append(f"{r['model']} {r['name']}: {what} {r[key]:.3f}x > {TARGETS[what]:.2f}x")
    return misses


def _display_path(path: str) -> str:
    p = Path(path).absolute()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: resnet20, w2a2, 3 repetitions, no memory")
    p.add_argument("--models", default="resnet20,resnet18", help="comma-separated, from %s" % sorted(MODELS))
    p.add_argument("--bits", default="2,1", help="comma-separated bit-widths (wXaX)")
    p.add_argument("--variants", default="baseline,ours,ours-eager", help="besides fp, from %s" % sorted(VARIANTS))
    p.add_argument("--batch", action="append", default=[], metavar="MODEL=N", help="override a model's batch")
    p.add_argument("--reps", type=int, default=7, help="interleaved training-step repetitions")
    p.add_argument("--eval-reps", type=int, default=9, help="interleaved eval-forward repetitions")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--amp", default=None, choices=["bf16", "fp16"], help="autocast dtype")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile-model", action="store_true",
                   help="torch.compile every variant's whole model (FP too); the quantizers are traced into it")
    p.add_argument("--no-memory", dest="memory", action="store_false")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/speed-<device>.json)")
    p.add_argument("--markdown", default=None, help="also put the table into this file (e.g. docs/speed.md), "
                   "between markers, keeping the text around them")
    p.add_argument("--memory-probe", nargs=3, metavar=("MODEL", "VARIANT", "BITS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.bits, args.reps, args.eval_reps, args.warmup, args.memory = "resnet20", "2", 3, 3, 1, False
    args.models = [m for m in args.models.split(",") if m]
    args.bits = [int(b) for b in str(args.bits).split(",") if b]
    args.variants = [v for v in args.variants.split(",") if v]
    for name, values, known in (("model", args.models, MODELS), ("variant", args.variants, VARIANTS)):
        bad = [v for v in values if v not in known]
        if bad:
            p.error(f"unknown {name} {bad}; expected some of {sorted(known)}")
    batches = {m: MODELS[m][2] for m in MODELS}
    for item in args.batch:
        model, _, n = item.partition("=")
        if model not in MODELS or not n.isdigit():
            p.error(f"--batch expects MODEL=N with MODEL in {sorted(MODELS)}, got {item!r}")
        batches[model] = int(n)
    args.batches = batches
    return args


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        model, variant, bits = args.memory_probe
        res = memory_probe(model, variant, int(bits) or None, args.device, args.channels_last,
                           args.batches[model], args.amp, args.compile_model)
        print(json.dumps(res))
        return None
    start_load = [round(v, 2) for v in os.getloadavg()]
    t0 = time.perf_counter()
    rows = []
    for model in args.models:
        rows += (model_rows := run_model(args, model, args.batches[model]))
        for r in model_rows:
            print(f"{r['model']:>9} {r['name']:>18}  train {r['train_ms']:8.1f} ms {r['train_ratio']:5.2f}x"
                  f"   eval {r['eval_ms']:7.1f} ms {r['eval_ratio']:5.2f}x", flush=True)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else cpu_model()
    report = {
        "command": shlex.join([_display_path(sys.executable), _display_path(sys.argv[0]), *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "environment": {
            "torch": torch.__version__, "python": platform.python_version(), "device": args.device,
            "device_name": device_name, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "loadavg_start": start_load, "loadavg_end": [round(v, 2) for v in os.getloadavg()],
        },
        "config": {
            "models": {m: {"input": list(MODELS[m][:2]), "batch": args.batches[m], "classes": MODELS[m][3]}
                       for m in args.models},
            "bits": args.bits, "variants": ["fp", *args.variants], "reps": args.reps, "eval_reps": args.eval_reps,
            "warmup": args.warmup, "amp": args.amp, "channels_last": args.channels_last,
            "compile_model": args.compile_model,
            "optimizer": "SGD(lr=1e-3, momentum=0.9)", "policy": "quantize_ defaults (paper Section 5.1)",
            "memory": ("peak RSS during one step minus RSS before it, fresh subprocess, MALLOC_MMAP_THRESHOLD_=65536"
                       if args.device == "cpu" else "max_memory_allocated during one step minus allocated before"),
        },
        "targets": TARGETS,
        "rows": rows,
        "wall_s": time.perf_counter() - t0,
    }
    report["misses"] = targets(report)
    tag = f"{args.device}-compiled" if args.compile_model else args.device
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"speed-{tag}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    table = markdown(report)
    print("\n" + table)
    print("targets missed:" if report["misses"] else "all targets met", *report["misses"], sep="\n  ")
    if args.markdown:
        write_block(Path(args.markdown), f"speed-{tag}", table)
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
