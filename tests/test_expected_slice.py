"""A data-free expected slice on one committed zoo folder, as transformers' model tests pin ``logits[0, :3]``:
a change to loading, unpacking or the quantized forward pass of a released model shows here without
Fashion-MNIST (tests/golden_logits.json checks the test images, where the dataset is present)."""

from __future__ import annotations

from pathlib import Path

import torch

from uniq_hub import UniQForImageClassification

FOLDER = Path(__file__).resolve().parent.parent / "zoo" / "resnet20-fashion-mnist-w2a2"
# logits[0, :3] of the input below, computed once with this folder (the w2a2 released 2026-12-08, uniq_hub at
# commit 3405fc9, CPU; the same under the whole AVX2 cap). Re-pin it when the w2a2 entry is released again.
EXPECTED_SLICE = torch.tensor([2.8527767658233643, -0.9830281138420105, 1.019250750541687])


def test_zoo_folder_gives_the_pinned_logits_on_a_fixed_input():
    model = UniQForImageClassification.from_pretrained(FOLDER).eval()
    pixel_values = torch.linspace(-1.0, 2.0, 2 * 28 * 28).reshape(2, 1, 28, 28)  # two grey ramps, normalised scale
    with torch.no_grad():
        logits = model(pixel_values=pixel_values).logits
    assert logits.shape == (2, model.config.num_labels) == (2, 10)
    torch.testing.assert_close(logits[0, :3], EXPECTED_SLICE, rtol=0.0, atol=1e-4)
