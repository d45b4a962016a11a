"""Measure release checkpoint sizes (model.safetensors) of an architecture at FP32 and w1..w4.

    .venv/bin/python scripts/measure_sizes.py [--arch resnet18] [--out docs/sizes.md]

Writes a markdown table: file size, the information-theoretic size (numel * bits / 8 for every
quantized weight plus the bytes of everything stored in full precision) and the overhead.
Weights are random (sizes do not depend on values); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from uniq_hub import UniQConfig, UniQForImageClassification
from uniq_hub.model.packing import information_bytes

BITS = (32, 4, 3, 2, 1)


def measure(arch: str, bits: int, num_labels: int = 1000) -> tuple[int, int]:
    """(bytes of model.safetensors, information-theoretic bytes) for ``arch`` at ``bits``."""
    model = UniQForImageClassification(UniQConfig(arch=arch, w_bits=bits, a_bits=bits, num_labels=num_labels))
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, save_image_processor=False)
        return os.path.getsize(os.path.join(tmp, "model.safetensors")), information_bytes(model.model)


def table(arch: str) -> str:
    measured = {b: measure(arch, b) for b in BITS}
    fp32 = measured[32][0]
    rows = [
        f"| {arch} | {'FP32' if b == 32 else f'w{b}a{b}'} | {size / 1e6:.2f} MB | {info / 1e6:.2f} MB | "
        f"{100 * (size / info - 1):.2f}% | {fp32 / size:.1f}x |"
        for b, (size, info) in measured.items()
    ]
    return "\n".join([
        f"Release checkpoint sizes (`model.safetensors`, 1 MB = 10^6 bytes), measured by "
        f"`python scripts/measure_sizes.py --arch {arch}`. Information-theoretic size: bits x weights for "
        "every quantized weight (the first conv and the classifier at 8 bits) plus everything stored in full "
        "precision (BatchNorm, step sizes, and at 1 bit the first conv, the classifier and the downsampling "
        "shortcuts, which stay FP32, which is why w1a1 is larger than w2a2).",
        "",
        "| model | bits | file | information-theoretic | overhead | smaller than FP32 |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "sizes.md")
    args = parser.parse_args()
    text = table(args.arch)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
