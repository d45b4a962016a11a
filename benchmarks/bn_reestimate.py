#!/usr/bin/env python
"""BatchNorm re-estimation after quantized training (a known fix for low-bit MobileNetV2): each run's
selected checkpoint (``best/``) is evaluated on its own validation hold-out (the same class-stratified
images its training selected on) before and after :func:`uniq_hub.reestimate_batchnorm` over N
training batches (the evaluation transform, no augmentation). Forward passes only.

    python benchmarks/bn_reestimate.py runs/zoo/mobilenetv2-fashion-mnist-w2a2 ... \\
        --out benchmarks/results/bn-reestimate-fashion-mnist.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from uniq_hub import reestimate_batchnorm
from uniq_hub.catalog.release_folder import load_trained
from uniq_hub.machine import benchmark_command, write_benchmark
from uniq_hub.model.constants import TRAIN_CONFIG_FILE
from uniq_hub.training.data.loader import make_dataloader
from uniq_hub.training.evaluate import evaluate_model
from uniq_hub.training.run_data import load_data
from uniq_hub.training.train_config import TrainConfig


def measure(run_dir: Path, batches: int, batch_size: int) -> dict:
    known = TrainConfig.__dataclass_fields__
    options = {k: v for k, v in json.loads((run_dir / TRAIN_CONFIG_FILE).read_text()).items() if k in known}
    bundle = load_data(TrainConfig(**options))
    model = load_trained(str(run_dir)).eval()
    val = make_dataloader(bundle.val, bundle.eval_transform, 256, shuffle=False)
    train = make_dataloader(bundle.train, bundle.eval_transform, batch_size, shuffle=True, seed=0)
    before = evaluate_model(model, val)["top1"]
    used = reestimate_batchnorm(model, train, batches)
    after = evaluate_model(model, val)["top1"]
    return {"run": str(run_dir), "arch": options["arch"], "w_bits": options["w_bits"], "a_bits": options["a_bits"],
            "val_examples": len(bundle.val), "batches": used, "batch_size": batch_size,
            "val_top1_before": before, "val_top1_after": after, "delta": round(after - before, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    records = []
    for run in args.runs:
        records.append(measure(run, args.batches, args.batch_size))
        print(json.dumps(records[-1]))
    if args.out:
        write_benchmark(args.out, {"records": records}, benchmark_command("benchmarks/bn_reestimate.py", argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
