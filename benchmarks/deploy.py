"""Deployment speed: float and UniQ models in PyTorch, ONNX Runtime and OpenVINO, side by side.

For each model / batch / bit-width, one process builds every variant, then times them interleaved
(round r runs every variant once, in an order rotated by r), ``--threads`` threads each, and
reports medians:

* float rows: PyTorch FP32 eager, ONNX Runtime FP32, OpenVINO FP32 (``INFERENCE_PRECISION_HINT=f32``)
  and OpenVINO's default precision (bf16 on CPUs with AMX / AVX-512 BF16);
* UniQ rows: PyTorch fake-quant eval (eager quantizer kernels) and the exact graph
  (``export_onnx``) on ONNX Runtime and on OpenVINO (f32 hint: its int8 convolutions stay int8).
  No requantized (approximate) variant is built.

Weights, BatchNorm statistics and step sizes are random (steps calibrated on random inputs):
speed only. Also reported: ONNX file sizes, the packed ``model.safetensors`` size, and the peak
resident memory of a fresh process that loads one model and runs inference (``--memory``:
ResNet-18 batch 1, float and w2a2).

Usage::

    python benchmarks/deploy.py                      # full run (~15 min on 2 cores)
    python benchmarks/deploy.py --quick              # resnet20 only, few rounds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # tests/: the tiny-model factory

# (arch, num_channels, image size, batch)
SETTINGS = [("resnet18", 3, 224, 1), ("mobilenetv2", 3, 224, 1), ("resnet20", 1, 28, 128), ("resnet18", 3, 224, 16),
            ("mobilenetv2_small", 1, 28, 128)]
# quantization options of the zoo entries, where they differ from the defaults (uniq/mobilenetv2-fashion-mnist-*)
ZOO_OPTIONS = {"mobilenetv2_small": dict(signed_inputs=True, weight_granularity="channel")}
BITS = (4, 2, 1)
FLOAT_ROWS = ("torch-fp32", "ort-fp32", "ov-fp32", "ov-default")
UNIQ_ROWS = ("torch-fakequant", "ort-exact", "ov-exact")
LABELS = {
    "torch-fp32": "PyTorch FP32 eager",
    "ort-fp32": "ONNX Runtime FP32",
    "ov-fp32": "OpenVINO FP32 (f32 hint)",
    "ov-default": "OpenVINO default (bf16 here)",
    "torch-fakequant": "PyTorch fake-quant eval",
    "ort-exact": "exact graph, ONNX Runtime",
    "ov-exact": "exact graph, OpenVINO (f32 hint)",
}
# Targets of issue 9 (ResNet-18 w2a2 batch 1 on the fastest exact backend; MobileNetV2; ResNet-20).
TARGETS = [
    ("resnet18", 1, 2, "ort-fp32", 3.0),
    ("resnet18", 1, 2, "fastest-float", 1.3),
    ("resnet18", 1, 2, "torch-fp32", 4.0),
    ("mobilenetv2", 1, 2, "ort-fp32", 1.3),
    ("resnet20", 128, 2, "ort-fp32", 2.0),
]


def build_model(arch: str, chans: int, size: int, bits: int | None, seed: int = 0):
    """A random UniQ model (``bits=None``: the float model) with random BatchNorm, calibrated."""
    from tiny_models import RANDOM_BATCHNORM, tiny_model

    return tiny_model(
        arch, 32 if bits is None else bits, seed=seed, num_labels=10 if size < 128 else 1000, num_channels=chans,
        image_size=size, calibration=None if bits is None else (4, size), batchnorm=RANDOM_BATCHNORM,
        batchnorm_first=True, **(ZOO_OPTIONS.get(arch, {}) if bits is not None else {}),
    )


def runners(model, path: str, rows: tuple[str, ...], threads: int, x: np.ndarray) -> dict:
    """``{row: fn()}`` running ``x`` through each variant."""
    import torch

    from uniq_hub.deploy.onnx_backends import openvino_model, ort_session

    out = {}
    xt = torch.from_numpy(x)

    def torch_fn():
        with torch.inference_mode():
            return model.model(xt)

    for row in rows:
        if row.startswith("torch"):
            out[row] = torch_fn
        elif row.startswith("ort"):
            session = ort_session(path, threads, spin=False)
            out[row] = lambda s=session: s.run(None, {"pixel_values": x})
        else:
            compiled = openvino_model(path, threads, precision=None if row == "ov-default" else "f32")
            request = compiled.create_infer_request()
            out[row] = lambda r=request: r.infer({0: x})
    return out


def interleaved(fns: dict, rounds: int, warmup: int = 2) -> dict[str, float]:
    """Median milliseconds per call of each function, timed interleaved in rotated orders."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            fns[name]()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


_MEMORY_PROBE = """
import sys, numpy as np
sys.path.insert(0, {root!r})
kind, path, shape, threads = sys.argv[1], sys.argv[2], tuple(map(int, sys.argv[3].split(","))), int(sys.argv[4])
x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
if kind == "torch":
    import torch
    torch.set_num_threads(threads)
    from uniq_hub import UniQForImageClassification
    model = UniQForImageClassification.from_pretrained(path).eval()
    with torch.inference_mode():
        for _ in range(3):
            model(torch.from_numpy(x))
else:
    from uniq_hub.deploy.onnx_backends import load_backend
    run = load_backend(path, kind, threads)
    for _ in range(3):
        run(x)
# VmHWM: this process's peak RSS (ru_maxrss would carry the parent's peak over fork / exec)
print(int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024)
"""


def peak_rss_mb(kind: str, path: str, shape: tuple[int, ...], threads: int) -> float:
    """Peak resident memory (MiB) of a fresh process that loads ``path`` and runs 3 inferences."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _MEMORY_PROBE.format(root=str(ROOT)),
            kind,
            path,
            ",".join(map(str, shape)),
            str(threads),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def measure(
    arch: str, chans: int, size: int, batch: int, bits_list, rounds: int, threads: int, tmp: Path, memory: bool
) -> list[dict]:
    from uniq_hub.deploy.onnx_export import export_onnx

    x = np.random.default_rng(1).standard_normal((batch, chans, size, size), dtype=np.float32)
    rows = []
    fns: dict = {}
    files: dict = {}
    models = {}
    for bits in (None, *bits_list):
        tag = "fp" if bits is None else f"w{bits}a{bits}"
        model = build_model(arch, chans, size, bits)
        folder = tmp / f"{arch}-{tag}"
        if not folder.exists():
            model.save_pretrained(folder)
            export_onnx(model, folder / "onnx" / "model.onnx", verify=False)
        path = str(folder / "onnx" / "model.onnx")
        files[tag] = {
            "onnx_bytes": os.path.getsize(path),
            "safetensors_bytes": os.path.getsize(folder / "model.safetensors"),
            "folder": str(folder),
        }
        models[tag] = model
        names = FLOAT_ROWS if bits is None else UNIQ_ROWS
        for row, fn in runners(model, path, names, threads, x).items():
            fns[(tag, row)] = fn
    medians = interleaved(fns, rounds)
    for (tag, row), ms in medians.items():
        entry = {
            "model": arch,
            "image_size": size,
            "batch": batch,
            "bits": tag,
            "variant": row,
            "label": LABELS[row],
            "ms": round(ms, 3),
            **{k: v for k, v in files[tag].items() if k != "folder"},
        }
        rows.append(entry)
    if memory:
        for tag, info in files.items():
            if tag not in ("fp", "w2a2"):
                continue
            for kind in ("torch", "onnxruntime", "openvino"):
                path = info["folder"] if kind == "torch" else info["folder"] + "/onnx/model.onnx"
                rss = peak_rss_mb(kind, path, x.shape, threads)
                for entry in rows:
                    if entry["bits"] == tag and entry["variant"].startswith(
                        {"torch": "torch", "onnxruntime": "ort", "openvino": "ov"}[kind]
                    ):
                        entry["peak_rss_mib"] = round(rss, 1)
    return rows


def speedups(rows: list[dict]) -> list[dict]:
    """Each UniQ row's speed-up over each float row of the same model / batch."""
    out = []
    for r in rows:
        r["speedup_vs_ort_fp32"] = None
        floats = {
            f["variant"]: f["ms"] for f in rows if (f["model"], f["batch"], f["bits"]) == (r["model"], r["batch"], "fp")
        }
        if "ort-fp32" in floats:
            r["speedup_vs_ort_fp32"] = round(floats["ort-fp32"] / r["ms"], 2)
    for arch, batch, bits, ref, target in TARGETS:
        cands = [
            r
            for r in rows
            if (r["model"], r["batch"], r["bits"]) == (arch, batch, f"w{bits}a{bits}")
            and r["variant"].endswith("exact")
        ]
        floats = {r["variant"]: r["ms"] for r in rows if (r["model"], r["batch"], r["bits"]) == (arch, batch, "fp")}
        if not cands or not floats:
            continue
        best = min(cands, key=lambda r: r["ms"])
        ref_ms = min(floats.values()) if ref == "fastest-float" else floats.get(ref)
        ratio = ref_ms / best["ms"]
        out.append(
            {
                "model": arch,
                "batch": batch,
                "bits": f"w{bits}a{bits}",
                "backend": best["variant"],
                "vs": ref if ref != "fastest-float" else f"fastest float ({min(floats, key=floats.get)})",
                "speedup": round(ratio, 2),
                "target": target,
                "met": ratio >= target,
            }
        )
    return out


def markdown(report: dict) -> str:
    lines = [
        "| model | batch | bits | variant | ms | vs ONNX Runtime FP32 | ONNX file MB | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        rss = r.get("peak_rss_mib", "")
        lines.append(
            f"| {r['model']} {r['image_size']}px | {r['batch']} | {r['bits']} | {r['label']} | {r['ms']:.2f} | "
            f"{r['speedup_vs_ort_fp32']:.2f}x | {r['onnx_bytes'] / 1e6:.2f} | {rss} |"
        )
    lines += ["", "| target | exact backend | speed-up | target | met |", "|---|---|---|---|---|"]
    for t in report["targets"]:
        lines.append(
            f"| {t['model']} {t['bits']} batch {t['batch']} vs {t['vs']} | {t['backend']} | "
            f"{t['speedup']:.2f}x | >= {t['target']}x | {'yes' if t['met'] else 'no'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15, help="timed rounds per variant (median reported)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="resnet20 at w2a2 only, 5 rounds")
    p.add_argument("--memory", action="store_true", help="also measure peak RSS per backend (subprocesses)")
    p.add_argument("--bits", default="4,2,1")
    p.add_argument("--settings", default=None, help="e.g. resnet18:1,mobilenetv2:1 (default: the first four)")
    p.add_argument("--output", default=str(ROOT / "benchmarks/results/deploy-cpu.json"))
    args = p.parse_args(argv)
    import torch

    from uniq_hub.model.quant_kernels import set_compile

    set_compile(False)  # eager quantizer kernels: the PyTorch fake-quant row without compile warm-up
    torch.set_num_threads(args.threads)
    settings = SETTINGS[:4]
    bits = tuple(int(b) for b in args.bits.split(","))
    if args.quick:
        settings, bits, args.rounds = [s for s in SETTINGS if s[0] == "resnet20"], (2,), 5
    if args.settings:
        wanted = {tuple(s.split(":")) for s in args.settings.split(",")}
        settings = [s for s in SETTINGS if (s[0], str(s[3])) in wanted]
    import onnxruntime
    import openvino

    rows: list[dict] = []
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/deploy.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "threads": args.threads,
            "onnxruntime": onnxruntime.__version__,
            "openvino": openvino.__version__,
            "torch": torch.__version__,
        },
        "note": "random weights / BatchNorm / steps: speed only; medians of interleaved rounds",
        "rows": rows,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="uniq_deploy_") as tmp:
        for arch, chans, size, batch in settings:  # the JSON is rewritten after each setting
            start = time.time()
            rows += measure(
                arch,
                chans,
                size,
                batch,
                bits,
                args.rounds,
                args.threads,
                Path(tmp),
                args.memory and (arch, batch) == ("resnet18", 1),
            )
            print(f"{arch} batch {batch}: {time.time() - start:.0f} s", flush=True)
            report["targets"] = speedups(rows)
            Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
