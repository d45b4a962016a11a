#!/usr/bin/env python
"""Which change stopped the low-bit small-image MobileNetV2 from collapsing, and what would help more?
(``--family`` runs the same variants on another zoo family, e.g. ``resnet20-fashion-mnist``.)
Each variant trains one zoo stage (``uniq-hub train --zoo uniq/mobilenetv2-fashion-mnist-w{b}a{b}
--max-steps 60``: the first zoo's budget, seed 0; ``--bits 2`` starts from the chain's w3a3 run,
``--bits 1`` from its w2a2 run) with one change undone or added, and reports the top-1 on the 5000
held-out training images (the selection split) and on the test split. The small-image stem itself
is not ablated here: the ImageNet-stride results are in docs/mobilenetv2.md.

    python benchmarks/mobilenetv2_ablation.py --runs runs/zoo --work runs/ablation \\
        --out benchmarks/results/mobilenetv2-ablation-fashion-mnist.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from uniq_hub.catalog.zoo import get_entry

FAMILY = "mobilenetv2-fashion-mnist"  # the default family; --family takes any zoo family's entry prefix

# name -> (what it tests, extra `uniq-hub train` arguments; {runs} is the zoo chain's run directory)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "zoo": ("the released recipe: from the previous stage, signed bottleneck inputs, per-channel weight steps", []),
    "unsigned": ("unsigned quantizers on the linear-bottleneck inputs", ["--no-signed-inputs"]),
    "layer-wise": ("one weight step per layer (the paper's MobileNetV2 setting)", ["--weight-granularity", "layer"]),
    "from-fp": ("not progressive: started from the FP model", ["--init-from", "{runs}/{family}-fp"]),
    "paper": ("all three undone: from FP, unsigned, layer-wise",
              ["--init-from", "{runs}/{family}-fp", "--no-signed-inputs", "--weight-granularity", "layer"]),
    "kd": ("added: distillation from the FP model (T 4, weight 0.5)", ["--teacher", "{runs}/{family}-fp"]),
    "longer": ("four times the steps (240)", ["--max-steps", "240"]),
    "step-lr-10": ("the step sizes at ten times the network's learning rate", ["--step-lr-scale", "10"]),
    "step-lr-0.1": ("the step sizes at a tenth of the network's learning rate", ["--step-lr-scale", "0.1"]),
    "seed-1": ("the zoo recipe again with seed 1: how far a rerun moves", ["--seed", "1"]),
    "label-smoothing-0.1": ("added: label smoothing 0.1", ["--label-smoothing", "0.1"]),
    "random-erasing-0.25": ("added: timm's RandomErasing with probability 0.25", ["--random-erasing", "0.25"]),
}


def run_variant(name: str, bits: int, runs: Path, work: Path, uniq_hub: str, family: str = FAMILY,
                max_steps: int | None = 60) -> dict:
    what, extra = VARIANTS[name]
    tag = f"w{bits}a{bits}"
    out = (work / (name if bits == 2 else f"{name}-{tag}")) if family == FAMILY else work / family / f"{name}-{tag}"
    entry = f"uniq/{family}-{tag}"
    args = [uniq_hub, "train", "--zoo", entry, *get_entry(entry).recipe.local_sources(runs),
            *(["--max-steps", str(max_steps)] if max_steps else []),
            *[a.format(runs=runs, family=family) for a in extra], "--output-dir", str(out), "--overwrite",
            "--no-export", "--no-progress", "--num-workers", "1"]
    start = time.perf_counter()
    subprocess.run(args, check=True)
    summary = json.loads((out / "summary.json").read_text())
    return {"variant": name, "entry": entry, "what": what, "command": shlex.join(args),
            "val_top1": summary["selection"]["top1"], "test_top1": summary["test"]["top1"],
            "wall_s": round(time.perf_counter() - start)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=Path("runs/zoo"), help="the zoo chain's run directories")
    parser.add_argument("--work", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--family", default=FAMILY, help="the zoo family, e.g. resnet20-fashion-mnist")
    parser.add_argument("--bits", type=int, choices=(1, 2, 3, 4), default=2)
    parser.add_argument("--max-steps", type=int, default=60, help="steps per run (0: the recipe's)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma separated, of {list(VARIANTS)}")
    parser.add_argument("--uniq-hub", default="uniq-hub", help="the uniq-hub command")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    done = json.loads(args.out.read_text())["records"] if args.out and args.out.is_file() else []
    entry = f"uniq/{args.family}-w{args.bits}a{args.bits}"
    records = [r for r in done if (r["variant"], r["entry"]) not in {(v, entry) for v in args.variants.split(",")}]
    for name in args.variants.split(","):
        records.append(run_variant(name, args.bits, args.runs, args.work, args.uniq_hub, args.family, args.max_steps))
        print(json.dumps(records[-1]), flush=True)
        if args.out:  # written after every variant, so an interrupted study keeps what it measured
            command = "python benchmarks/mobilenetv2_ablation.py " + shlex.join(sys.argv[1:] if argv is None else argv)
            commands = [c for c in (json.loads(args.out.read_text()).get("commands", []) if args.out.is_file() else [])
                        if c != command] + [command]
            args.out.write_text(json.dumps({"commands": commands, "records": records}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
