#!/usr/bin/env python
"""Knowledge distillation on the Fashion-MNIST zoo recipes: ResNet-20 w2a2 and w1a1, with and
without KD from the FP zoo model, 2 seeds each, every run the zoo recipe (`uniq-hub train --zoo`).

The seed-0 runs without KD are the zoo runs themselves (same command), read from ``--zoo-runs``;
the others are trained here, two at a time, into ``--runs`` (resumable: finished runs are read,
interrupted ones resume). Results: one JSON (records with top-1 per run, mean and spread per
setting) and the markdown table printed for docs/reproduce.md.

    python benchmarks/kd_study.py --out benchmarks/results/kd-fashion-mnist.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SEEDS = (0, 1)
BITS = {"w2a2": "resnet20-fashion-mnist-fp", "w1a1": "resnet20-fashion-mnist-w2a2"}  # setting -> init run
TEACHER = "resnet20-fashion-mnist-fp"
TRAIN_FLAGS = ["--no-progress", "--save-every", "100", "--num-workers", "1"]  # as the zoo runs


def _train(name: str, bits: str, kd: bool, seed: int, zoo_runs: Path, runs: Path) -> Path:
    out = runs / name
    if (out / "summary.json").is_file():
        return out
    args = [sys.executable, "-m", "uniq_hub.cli", "train", "--zoo", f"uniq/resnet20-fashion-mnist-{bits}",
            "--output-dir", str(out), "--init-from", str(zoo_runs / BITS[bits]), "--seed", str(seed), *TRAIN_FLAGS]
    if kd:
        args += ["--teacher", str(zoo_runs / TEACHER)]
    if any(out.glob("checkpoints/step-*")):
        args.append("--resume")
    elif out.exists():
        args.append("--overwrite")
    with open(runs / f"{name}.log", "w") as log:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run(args, check=True, stdout=log, stderr=subprocess.STDOUT, env=env)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo-runs", type=Path, default=Path("runs/zoo"))
    parser.add_argument("--runs", type=Path, default=Path("runs/kd"))
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--w1a1-seeds", default="0,1", help="seeds of the w1a1 settings (the protocol: 0,1)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/kd-fashion-mnist.json"))
    args = parser.parse_args(argv)
    args.runs.mkdir(parents=True, exist_ok=True)
    plan = {}
    seeds = {"w2a2": SEEDS, "w1a1": tuple(int(s) for s in args.w1a1_seeds.split(","))}
    for bits in BITS:
        for kd in (False, True):
            for seed in seeds[bits]:
                plan[(bits, kd, seed)] = f"resnet20-{bits}-{'kd' if kd else 'ce'}-seed{seed}"
    zoo_made = {(bits, False, 0): args.zoo_runs / f"resnet20-fashion-mnist-{bits}" for bits in BITS}
    todo = {k: v for k, v in plan.items() if k not in zoo_made}
    with ThreadPoolExecutor(args.parallel) as pool:
        dirs = dict(zip(todo, pool.map(lambda kv: _train(kv[1], *kv[0], args.zoo_runs, args.runs), todo.items())))
    dirs.update(zoo_made)
    records = []
    for (bits, kd, seed), run in sorted(dirs.items()):
        summary = json.loads((run / "summary.json").read_text())
        config = json.loads((run / "train_config.json").read_text())
        records.append({"model": "resnet20", "bits": bits, "kd": kd, "seed": seed, "top1": summary["best_top1"],
                        "top1_last": summary["last"].get("top1"), "epochs": config["epochs"],
                        "teacher": config.get("teacher"),
                        "kd_temperature": config.get("kd_temperature") if kd else None,
                        "kd_weight": config.get("kd_weight") if kd else None, "run_dir": str(run)})
    settings = []
    for bits in BITS:
        for kd in (False, True):
            top1 = [r["top1"] for r in records if r["bits"] == bits and r["kd"] == kd]
            settings.append({"bits": bits, "kd": kd, "top1": top1, "mean": statistics.mean(top1),
                             "spread": max(top1) - min(top1)})
    command = f"python benchmarks/kd_study.py --out {args.out} --w1a1-seeds {args.w1a1_seeds}"
    result = {"command": command, "dataset": "fashion_mnist",
              "split": "test", "runs": records, "settings": settings}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| model | bits | KD | top-1 per seed (%) | mean (%) |\n|---|---|---|---|---|")
    for s in settings:
        print(f"| ResNet-20 | {s['bits']} | {'yes' if s['kd'] else 'no'} | "
              f"{', '.join(f'{t:.2f}' for t in s['top1'])} | {s['mean']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
