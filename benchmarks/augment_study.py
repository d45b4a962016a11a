#!/usr/bin/env python
"""Random erasing and label smoothing on a short ResNet-20 FP schedule (the zoo's regime): each setting
trained by `uniq_hub.training.train` (the code behind `uniq-hub train`) on the same class-balanced subset, the
checkpoint chosen on the held-out validation images, the 10k test images evaluated once. One JSON.

    python benchmarks/augment_study.py --out benchmarks/results/augment-fashion-mnist.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from uniq_hub.machine import benchmark_command, write_benchmark

SETTINGS = {"baseline": {}, "random-erasing-0.5": {"random_erasing": 0.5},
            "label-smoothing-0.1": {"label_smoothing": 0.1}, "both": {"random_erasing": 0.5, "label_smoothing": 0.1}}


def _run(name: str, runs: str, train_samples: int, epochs: int, seed: int) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from uniq_hub.training.train import train
    from uniq_hub.training.train_config import resolve_config

    cfg = resolve_config(arch="resnet20", dataset="fashion_mnist", bits=32, max_train_samples=train_samples,
                         val_split=0.1, epochs=epochs, seed=seed, num_workers=0, log_with="none", progress=False,
                         export=False, save_every=0, dynamics_every=0, overwrite=True,
                         output_dir=str(Path(runs) / f"{name}-seed{seed}"), **SETTINGS[name])
    summary = train(cfg)
    return {"setting": name, **SETTINGS[name], "seed": seed, "val_top1": summary["best_top1"],
            "test_top1": summary["test"]["top1"], "epochs": epochs, "train_samples": train_samples}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-samples", type=int, default=12000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--runs", default="runs/augment")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    with ProcessPoolExecutor(args.jobs) as pool:
        records = list(pool.map(_run, SETTINGS, [args.runs] * len(SETTINGS), [args.train_samples] * len(SETTINGS),
                                [args.epochs] * len(SETTINGS), [args.seed] * len(SETTINGS)))
    for r in records:
        print(json.dumps(r))
    if args.out:
        write_benchmark(args.out, {"records": records}, benchmark_command("benchmarks/augment_study.py", argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
