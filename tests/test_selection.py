"""Model selection on a validation split carved from the training data (never the test split), the
training-only random erasing, and the small-image MobileNetV2 variants."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from uniq_hub import QuantConfig, create_model, quantize_
from uniq_hub.catalog.zoo import get_entry
from uniq_hub.hub.zoo_release import validation_selection
from uniq_hub.model.registry import model_info
from uniq_hub.training.data.loader import make_dataloader
from uniq_hub.training.data.splits import stratified_split, validation_size
from uniq_hub.training.data.transforms import processor_for, train_transform
from uniq_hub.training.train_config import resolve_config


def test_validation_size_counts_fractions_and_default():
    assert validation_size(None, 60_000) == 5000 and validation_size(None, 72) == 7  # min(5000, a tenth)
    assert validation_size(5000, 60_000) == 5000 and validation_size(0.25, 100) == 25
    for bad in (-1, 2.5, 100, 1000):
        with pytest.raises(ValueError, match="val_split"):
            validation_size(bad, 100)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="val_split must be a finite number"):
            validation_size(bad, 100)
    with pytest.raises(ValueError, match="val_split 1 is ambiguous .one example, or the whole split"):
        validation_size(1.0, 100)
    assert validation_size(2, 100) == 2


def test_val_split_nan_and_1_are_refused_by_the_cli_in_one_line(tmp_path):
    from uniq_hub.cli import main

    for value, message in (("nan", "finite number"), ("1.0", "ambiguous")):
        with pytest.raises(SystemExit) as err:
            main(["train", "--val-split", value, "--output-dir", str(tmp_path / value), "--epochs", "1"])
        assert message in str(err.value) and "\n" not in str(err.value), err.value


def test_val_split_0_warns_that_the_test_split_chooses(tmp_path, caplog):
    from uniq_hub.training.run_data import _hold_out

    cfg = resolve_config({"val_split": "0", "output_dir": str(tmp_path)})
    with caplog.at_level("WARNING"):
        _, val, selection = _hold_out(list(range(10)), 10, cfg)
    assert val is None and "the test split chose the model" in selection["description"]
    assert "--val-split 0: the `test` split chooses the model" in caplog.text


def test_stratified_split_is_deterministic_disjoint_and_proportional():
    labels = np.repeat([0, 1, 2], [500, 300, 200])
    train, val = stratified_split(labels, 100, seed=0)
    assert len(val) == 100 and len(train) == 900
    assert not set(train) & set(val) and sorted([*train, *val]) == list(range(1000))
    assert Counter(labels[val].tolist()) == {0: 50, 1: 30, 2: 20}
    again_train, again_val = stratified_split(labels, 100, seed=0)
    assert np.array_equal(val, again_val) and np.array_equal(train, again_train)
    assert not np.array_equal(val, stratified_split(labels, 100, seed=1)[1])
    # rounding by largest remainders: the sizes still add up
    _, odd = stratified_split(np.repeat([0, 1, 2], [3, 3, 4]), 5, seed=0)
    assert len(odd) == 5 and set(Counter(np.repeat([0, 1, 2], [3, 3, 4])[odd].tolist()).values()) <= {1, 2}


def test_val_split_option_and_zoo_recipes(tmp_path):
    assert resolve_config({"val_split": "0.1", "output_dir": str(tmp_path)}).val_split == 0.1
    assert resolve_config({"val_split": "5000", "output_dir": str(tmp_path)}).val_split == 5000
    for bad in ("-1", "2.5"):
        with pytest.raises(ValueError, match="val_split"):
            resolve_config({"val_split": bad, "output_dir": str(tmp_path)})
    for name in ("uniq/resnet20-fashion-mnist-fp", "uniq/mobilenetv2-fashion-mnist-w2a2"):
        cfg = resolve_config({"zoo": name})
        assert cfg.val_split is None and cfg.eval_split == "test"  # the default hold-out selects, test reports
    fp = resolve_config({"zoo": "uniq/resnet20-fashion-mnist-fp"})
    assert fp.random_erasing == 0.0 and fp.label_smoothing == 0.0 and fp.max_steps is None
    assert resolve_config({"zoo": "uniq/mobilenetv2-fashion-mnist-w4a4"}).max_steps == 240  # a partial epoch
    assert resolve_config({"zoo": "uniq/resnet20-fashion-mnist-w3a3"}).max_steps is None
    assert resolve_config({"zoo": "uniq/resnet20-fashion-mnist-w2a2"}).epochs == 3
    # progressive bits: each multi-bit entry starts from the one above, 1 bit from 2 bits
    chain = [get_entry(f"uniq/resnet20-fashion-mnist-w{b}a{b}").recipe.init_from for b in (4, 3, 2, 1)]
    assert chain == [f"uniq/resnet20-fashion-mnist-{t}" for t in ("fp", "w4a4", "w3a3", "w2a2")]


def test_release_refuses_a_run_selected_on_the_test_split(tmp_path):
    with pytest.raises(ValueError, match="did not select its model on a validation split"):
        validation_selection(tmp_path, "test")  # no summary.json
    chosen = {"split": "train[held-out 5000]", "num_examples": 5000, "top1": 93.0, "step": 10}
    for selection, ok in ((chosen, True), ({"split": "test"}, False)):
        (tmp_path / "summary.json").write_text(json.dumps({"selection": selection}))
        if ok:
            assert validation_selection(tmp_path, "test") == chosen
        else:
            with pytest.raises(ValueError, match="the zoo never selects on the `test` split"):
                validation_selection(tmp_path, "test")


def _images(n: int = 8) -> list[tuple[Image.Image, int]]:
    rng = np.random.default_rng(0)
    return [(Image.fromarray(rng.integers(50, 255, (28, 28), dtype=np.uint8), "L"), i % 2) for i in range(n)]


def test_random_erasing_is_training_only_seeded_and_checked():
    processor = processor_for(num_channels=1, image_size=28, mean=[0.5], std=[0.5])
    plain, erased = train_transform(processor, "small"), train_transform(processor, "small", random_erasing=1.0)
    assert "RandomErasing" not in repr(plain) and "RandomErasing" in repr(erased)

    def batch(transform, seed):
        return next(iter(make_dataloader(_images(), transform, 8, shuffle=False, seed=seed)))[0]

    a, b = batch(erased, 3), batch(erased, 3)
    assert torch.equal(a, b)  # the collate seeds timm's Python-RNG draws too: reruns and resumes augment alike
    # every image has an erased (zero: the normalised mean) rectangle the plain transform does not have
    zeros = ((a == 0).flatten(1).sum(1), (batch(plain, 3) == 0).flatten(1).sum(1))
    assert bool((zeros[0] > zeros[1]).all())
    with pytest.raises(ValueError, match="random_erasing is a probability"):
        train_transform(processor, "small", random_erasing=1.5)


@pytest.mark.parametrize("arch,side", [("mobilenetv2", 1), ("mobilenetv2_cifar", 4), ("mobilenetv2_small", 2)])
def test_mobilenetv2_variants_feature_maps_at_28px(arch, side):
    model = create_model(arch, num_classes=10, num_channels=1).eval()
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 1, 28, 28)).shape[-2:] == (side, side)
    info = model_info(arch)
    assert info.weight_granularity == "layer" and info.imagenet == (arch == "mobilenetv2")
    # same parameters as the ImageNet layout (only strides differ), so float weights carry over
    imagenet = create_model("mobilenetv2", num_classes=10, num_channels=1)
    assert [p.shape for p in model.parameters()] == [p.shape for p in imagenet.parameters()]


def test_small_mobilenetv2_quantizes_with_signed_bottlenecks_and_per_channel_weights():
    model = quantize_(create_model("mobilenetv2_small", num_classes=10, num_channels=1),
                      QuantConfig(2, 2, signed_inputs=True, weight_granularity="channel"))
    dw = model.blocks[3].dw.conv
    assert dw.weight_quantizer.step.numel() == dw.out_channels  # a step per depthwise channel
    assert model.blocks[3].expand.conv.input_quantizer.scheme == "symmetric"
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(2, 1, 28, 28))).all()


def test_release_checks_everything_before_it_touches_the_zoo_folder(tmp_path):
    """A run selected on the test split, or a w4a4 run given as the w2a2 entry, is refused with the folder
    left byte for byte as it was (weights, config, ONNX, card, records)."""
    import hashlib
    import shutil

    from uniq_hub.catalog.zoo import get_entry
    from uniq_hub.hub.zoo_release import RELEASE_DIR, release_entry

    root = tmp_path / "zoo"
    shutil.copytree(RELEASE_DIR / "resnet20-fashion-mnist-w2a2", root / "resnet20-fashion-mnist-w2a2")

    def snapshot():
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    before = snapshot()
    entry = get_entry("uniq/resnet20-fashion-mnist-w2a2")
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    selected = {"split": "train[held-out 5000]", "num_examples": 5000, "top1": 90.0, "step": 10, "epoch": 1}
    cases = (
        ({"zoo": "uniq/resnet20-fashion-mnist-w4a4", "arch": "resnet20", "w_bits": 4, "a_bits": 4}, selected,
         r"the run is not uniq/resnet20-fashion-mnist-w2a2: it records zoo='uniq/resnet20-fashion-mnist-w4a4' "
         r"\(expected 'uniq/resnet20-fashion-mnist-w2a2'\), w_bits=4 \(expected 2\)"),
        ({"zoo": entry.name, "arch": "resnet20", "w_bits": 2, "a_bits": 2}, {"split": "test"},
         "the zoo never selects on the `test` split"),
    )
    for config, selection, message in cases:
        (run / "train_config.json").write_text(json.dumps({**config, "output_dir": str(run), "seed": 0}))
        (run / "summary.json").write_text(json.dumps({"selection": selection}))
        with pytest.raises(ValueError, match=message):
            release_entry(entry, run, root)
        assert snapshot() == before and sorted(p.name for p in root.iterdir()) == ["resnet20-fashion-mnist-w2a2"]
