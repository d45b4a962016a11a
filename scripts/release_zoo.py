#!/usr/bin/env python
"""Make the release folders ``zoo/<name>/`` from the trained runs ``runs/zoo/<name>/`` (see
scripts/train_fashion_mnist_zoo.sh): each is evaluated on the 10k test images (PyTorch and the ONNX
runtimes), its record goes to ``benchmarks/results/<name>.json``, the golden logits of one entry
to ``tests/golden_logits.json``, and the committed cards are regenerated. ``--resave`` instead
re-saves the existing folders' config with this version, for config-key migrations (the tensors
stay byte-identical; the folders keep no code: publishing adds it)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from uniq_hub.catalog.zoo import list_entries
from uniq_hub.hub.zoo_release import (
    NOT_RELEASED,
    refresh_card,
    release_entry,
    release_folders,
    remeasure_release,
    resave_release,
)
from uniq_hub.machine import write_benchmark
from uniq_hub.model.constants import SUMMARY_FILE

REPO = Path(__file__).resolve().parent.parent

RELEASE_DIR = REPO / "zoo"
GOLDEN_ENTRY = "uniq/resnet20-fashion-mnist-w2a2"
GOLDEN_FILE = REPO / "tests" / "golden_logits.json"
GOLDEN_IMAGES = (0, 1, 2, 3, 4)  # test-split indices


def golden_logits(folder: Path) -> dict:
    """Logits of the first test images through the folder's processor and model."""
    import torch

    from uniq_hub import UniQForImageClassification, UniQImageProcessor
    from uniq_hub.training.data.sources import load_image_dataset

    model = UniQForImageClassification.from_pretrained(folder).eval()
    processor = UniQImageProcessor.from_pretrained(folder)
    ds = load_image_dataset("fashion_mnist", "test")
    images = [ds[i]["image"] for i in GOLDEN_IMAGES]
    with torch.no_grad():
        logits = model(**processor(images, return_tensors="pt")).logits
    return {"entry": GOLDEN_ENTRY, "split": "test", "indices": list(GOLDEN_IMAGES), "logits": logits.tolist()}


def _remeasure(only: list[str] | None) -> int:
    spread = {}
    for repo_id in release_folders(RELEASE_DIR):
        name = repo_id.split("/", 1)[1]
        if only and name not in only:
            continue
        record = remeasure_release(repo_id, RELEASE_DIR)
        (REPO / "benchmarks" / "results" / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
        spread[repo_id] = {"top1": record["top1"], "top5": record["top5"], **record["portability"]}
        print(f"{repo_id}: top-1 {record['top1']:.2f}% top-5 {record['top5']:.2f}% {record['portability']}", flush=True)
    out = REPO / "benchmarks" / "results" / "isa-spread.json"
    old = json.loads(out.read_text())["entries"] if out.is_file() else {}
    write_benchmark(out, {"entries": {**old, **spread}}, "python scripts/release_zoo.py --remeasure")
    from generate_model_cards import main as generate

    return generate([])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "zoo")
    parser.add_argument("--only", action="append", help="only these entries (short names)")
    parser.add_argument("--cards-only", action="store_true", help="keep the folders and numbers; rewrite the "
                        "training records and cards from the runs")
    parser.add_argument("--resave", action="store_true", help="no runs needed: re-save every release folder's "
                        "config with this version (key migrations), checking its tensors stay byte-identical")
    parser.add_argument("--remeasure", action="store_true", help="no runs needed: measure every release folder's "
                        "numbers again on this machine (PyTorch, per-image predictions and their spread across "
                        "instruction sets, ONNX), keeping its training record; the spreads go to "
                        "benchmarks/results/isa-spread.json")
    args = parser.parse_args(argv)
    if args.remeasure:
        return _remeasure(args.only)
    if args.resave:
        for repo_id, folder in release_folders(RELEASE_DIR).items():
            changed = resave_release(folder)
            print(f"{repo_id}: " + (", ".join(changed) if changed else "unchanged"))
        return 0
    refused = 0
    for entry in list_entries():
        run = args.runs / entry.short_name
        if entry.dataset.key != "fashion-mnist" or (args.only and entry.short_name not in args.only):
            continue
        if entry.name in NOT_RELEASED:
            print(f"{entry.name}: not released: {NOT_RELEASED[entry.name]}")
            continue
        if not (run / SUMMARY_FILE).is_file():
            print(f"{entry.name}: not trained yet ({run})")
            continue
        try:
            release = refresh_card if args.cards_only else release_entry
            record = release(entry, run, RELEASE_DIR)
        except (ValueError, OSError) as err:  # refused before zoo/<name> was touched: say why in one line
            print(f"{entry.name}: not released: {err}", file=sys.stderr)
            refused += 1
            continue
        results = REPO / "benchmarks" / "results" / f"{entry.short_name}.json"
        results.write_text(json.dumps(record, indent=2) + "\n")
        onnx = {k: v["top1"] for k, v in record.get("onnx", {}).items()}
        print(f"{entry.name}: top-1 {record['top1']:.2f}% top-5 {record['top5']:.2f}% onnx {onnx} "
              f"-> {RELEASE_DIR / entry.short_name}")
    golden = RELEASE_DIR / GOLDEN_ENTRY.split("/")[1]
    if golden.is_dir() and not args.cards_only:
        GOLDEN_FILE.write_text(json.dumps(golden_logits(golden), indent=1) + "\n")
    from generate_model_cards import main as generate

    return generate([]) or int(refused > 0)


if __name__ == "__main__":
    sys.exit(main())
