"""Recipes (paper Section 5), optimizer groups, LR schedules and the training-config merge."""

from __future__ import annotations

import json
import math

import pytest
import torch

from uniq_hub import QuantConfig, create_model, quantize_, quantizers
from uniq_hub.training.recipes import build_optimizer, build_scheduler, param_groups, recipe_defaults, recipe_family
from uniq_hub.training.train_config import resolve_config


def test_paper_recipes_by_bits():
    wd = {b: recipe_defaults("imagenet", b, b)["weight_decay"] for b in (4, 3, 2, 1)}
    assert wd == {4: 1e-4, 3: 0.5e-4, 2: 0.25e-4, 1: 0.0}
    multi = recipe_defaults("imagenet", 2, 2)
    assert (multi["optimizer"], multi["lr"], multi["momentum"], multi["epochs"], multi["batch_size"]) == (
        "sgd", 0.01, 0.9, 90, 256)
    assert multi["warmup_epochs"] == 0 and multi["calib_batches"] == 1000
    binary = recipe_defaults("imagenet", 1, 1)
    assert (binary["optimizer"], binary["lr"], binary["warmup_epochs"], binary["warmup_lr"]) == (
        "adam", 0.004, 5, 0.001)
    cifar = recipe_defaults("cifar100", 3, 3)
    assert (cifar["weight_decay"], cifar["epochs"], cifar["batch_size"], cifar["calib_batches"]) == (
        5e-4, 350, 128, 100)
    assert recipe_defaults("imagenet", 32, 32)["calib_batches"] == 0
    # epochs and max_steps (like weight decay) may depend on the bits
    assert [recipe_defaults("fashion-mnist", b, b)["epochs"] for b in (32, 4, 3, 2, 1)] == [50, 2, 2, 3, 4]
    assert [recipe_defaults("fashion-mnist-mobilenetv2", b, b)["max_steps"] for b in (4, 3, 2)] == [240] * 3
    assert recipe_defaults("fashion-mnist-mobilenetv2", 32, 32)["epochs"] == 10
    assert recipe_family("ILSVRC/imagenet-1k", "resnet20") == "imagenet"
    assert recipe_family("fashion_mnist", "resnet20") == "fashion-mnist"
    assert recipe_family("/data/my_imagefolder", "resnet18") == "imagenet"
    assert recipe_family("/data/my_imagefolder", "resnet32") == "cifar100"
    with pytest.raises(ValueError, match="no 'fp' recipe for family 'nope'"):
        recipe_defaults("nope", 32, 32)


def test_no_weight_decay_on_step_sizes():
    model = quantize_(create_model("resnet20", num_classes=10, num_channels=1), QuantConfig(2, 2))
    groups = param_groups(model, 0.1)
    steps = {id(q.step) for q in quantizers(model).values()}
    assert {id(p) for p in groups[1]["params"]} == steps and groups[1]["weight_decay"] == 0.0
    assert len(groups[0]["params"]) + len(steps) == len(list(model.parameters()))
    # behaviour: with zero gradients only weight decay moves parameters
    opt = build_optimizer(model, "sgd", lr=1.0, weight_decay=0.1, momentum=0.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for name, p in model.named_parameters():
        if name.endswith("quantizer.step"):
            assert torch.equal(p, before[name]), name
        else:
            assert torch.allclose(p, before[name] * 0.9), name
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        build_optimizer(model, "rmsprop", 0.1, 0.0)


def test_step_sizes_learn_at_their_own_rate_on_the_same_schedule():
    model = quantize_(create_model("resnet20", num_classes=10, num_channels=1), QuantConfig(2, 2))
    opt = build_optimizer(model, "sgd", lr=0.1, weight_decay=0.0, momentum=0.0, step_lr_scale=10.0)
    assert [g["lr"] for g in opt.param_groups] == [0.1, pytest.approx(1.0)]
    scheduler = build_scheduler(opt, total_steps=4, warmup_steps=2, warmup_lr=0.01)
    for _ in range(3):
        opt.step()
        scheduler.step()
        weights, steps = (g["lr"] for g in opt.param_groups)
        assert steps == pytest.approx(10 * weights)
    # behaviour: one SGD step moves a step size ten times as far as the same gradient at the default scale
    plain = build_optimizer(model, "sgd", lr=0.1, weight_decay=0.0, momentum=0.0)
    scaled = build_optimizer(model, "sgd", lr=0.1, weight_decay=0.0, momentum=0.0, step_lr_scale=10.0)
    step = next(q.step for q in quantizers(model).values())
    moved = []
    for opt in (plain, scaled):
        before = step.detach().clone()
        for p in model.parameters():
            p.grad = torch.full_like(p, 1e-3)
        opt.step()
        moved.append((before - step.detach()).abs().max().item())
    assert moved[1] == pytest.approx(10 * moved[0], rel=1e-4)
    with pytest.raises(ValueError, match="option 'step_lr_scale' must be a finite number > 0, got 0.0"):
        resolve_config(arch="resnet20", bits=2, step_lr_scale=0.0)


def _lrs(scheduler, n):
    out = []
    for _ in range(n):
        out.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def test_binary_schedule_constant_warmup_then_cosine_per_step():
    steps_per_epoch, epochs = 10, 20
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.004)
    sched = build_scheduler(opt, steps_per_epoch * epochs, warmup_steps=5 * steps_per_epoch, warmup_lr=0.001)
    lrs = _lrs(sched, steps_per_epoch * epochs)
    assert lrs[:50] == [pytest.approx(0.001)] * 50  # 5 constant warm-up epochs at 0.001
    assert lrs[50] == pytest.approx(0.004)  # then 0.004 ...
    assert lrs[50 + 75] == pytest.approx(0.002)  # ... cosine: half way down at the middle
    assert all(a > b for a, b in zip(lrs[50:], lrs[51:]))  # decreasing every step
    assert lrs[-1] < 0.004 * 1e-3


def test_scheduler_state_survives_json(tmp_path):
    def make():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        return build_scheduler(opt, 100, warmup_steps=10)  # linear warm-up

    a = make()
    _lrs(a, 37)
    state = json.loads(json.dumps(a.state_dict()))
    b = make()
    b.load_state_dict(state)
    b.optimizer.param_groups[0]["lr"] = a.optimizer.param_groups[0]["lr"]  # the optimizer state carries it
    assert _lrs(a, 30) == _lrs(b, 30)
    assert make().get_last_lr()[0] == pytest.approx(0.01)  # linear warm-up starts at lr / warmup_steps


def test_config_merge_order(tmp_path):
    # defaults < zoo < file < command line; recipe fills what is left
    cfg = resolve_config({"zoo": "uniq/resnet18-w1a1"})
    assert (cfg.arch, cfg.w_bits, cfg.a_bits, cfg.optimizer, cfg.lr) == ("resnet18", 1, 1, "adam", 0.004)
    assert cfg.dataset == "ILSVRC/imagenet-1k" and cfg.init_from == "uniq/resnet18-w2a2" and cfg.calib_batches == 1000
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("zoo: uniq/resnet18-w1a1\nlr: 0.002\nbatch-size: 64\n")
    cfg = resolve_config({"lr": "0.003"}, yaml_file)
    assert (cfg.lr, cfg.batch_size, cfg.optimizer) == (0.003, 64, "adam")
    cfg = resolve_config({"bits": 32, "dataset": "fashion_mnist", "arch": "resnet20"})
    assert (cfg.w_bits, cfg.a_bits, cfg.quantized, cfg.lr, cfg.calib_batches) == (32, 32, False, 0.1, 0)
    cfg = resolve_config({"bits": "3", "arch": "resnet18", "dataset": "/data/x"})
    assert cfg.weight_decay == 0.5e-4 and cfg.run_name == "resnet18-w3a3" and cfg.output_dir.endswith("resnet18-w3a3")

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"learning_rate": 0.1}))
    with pytest.raises(ValueError, match=r"bad.json: unknown training option 'learning_rate'"):
        resolve_config({}, bad)
    with pytest.raises(ValueError, match="option 'epochs' expects int, got 'ten'"):
        resolve_config({"epochs": "ten"})
    with pytest.raises(ValueError, match="option 'w_bits' must be an int in 1..8 or 32"):
        resolve_config({"w_bits": 16, "a_bits": 16})
    with pytest.raises(ValueError, match="mixed_precision"):
        resolve_config({"mixed_precision": "fp8"})
    assert math.isclose(resolve_config({"bits": 2, "step_init": "0.1"}).lr, 0.01)


def test_per_layer_overrides_from_cli_and_config_file(tmp_path):
    """Mixed precision is trainable: overrides from the command line (PATTERN=W,A;...) or a config file
    reach the model's quantization plan."""
    from uniq_hub.training.model_init import build_model
    from uniq_hub.training.run_data import DataBundle

    cli = resolve_config({"arch": "resnet20", "bits": 2, "overrides": "layer1.*=4,4; fc=32,32"})
    assert cli.overrides == {"layer1.*": [4, 4], "fc": [32, 32]}
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"arch": "resnet20", "bits": 2, "overrides": {"layer1.*": [4, 4]}}))
    assert resolve_config(config_file=path).overrides == {"layer1.*": [4, 4]}
    with pytest.raises(ValueError, match="'overrides' expects 'PATTERN=W,A"):
        resolve_config({"arch": "resnet20", "bits": 2, "overrides": "layer1.*=4"})
    bundle = DataBundle(train=None, eval=None, train_transform=None, eval_transform=None, id2label={0: "a", 1: "b"},
                        num_channels=1, image_size=28, mean=[0.5], std=[0.5], num_train=0)
    model = build_model(cli, bundle).model
    bits = {name: m.weight_quantizer.bits if m.weight_quantizer is not None else None
            for name, m in model.named_modules() if hasattr(m, "weight_quantizer")}
    assert {b for name, b in bits.items() if name.startswith("layer1.")} == {4}
    assert {b for name, b in bits.items() if name.startswith("layer2.")} == {2}
    assert "fc" not in bits or bits["fc"] is None  # full precision


def test_one_schema_for_the_quantization_options(tmp_path):
    """QuantConfig, UniQConfig and TrainConfig share the quantization fields: names, defaults (training
    defaults to full precision), 32 for full precision, help text and error messages; a trained model's
    config carries them unchanged, and older key names in a config file are read as the current ones."""
    from dataclasses import fields

    from uniq_hub import QuantConfig, UniQConfig
    from uniq_hub.model.quantize import QUANT_FIELD_HELP, QUANT_FIELDS
    from uniq_hub.training.model_init import build_model
    from uniq_hub.training.run_data import DataBundle
    from uniq_hub.training.train_config import TrainConfig

    train_fields = {f.name: f for f in fields(TrainConfig)}
    assert set(QUANT_FIELDS) == set(QUANT_FIELD_HELP) and set(QUANT_FIELDS) <= set(train_fields)
    quant, model_config, train = QuantConfig(), UniQConfig(), TrainConfig()
    for name in QUANT_FIELDS:
        assert train_fields[name].metadata["help"] == QUANT_FIELD_HELP[name]
        assert getattr(model_config, name) == getattr(quant, name), name
        if name not in ("w_bits", "a_bits", "overrides"):
            assert getattr(train, name) == getattr(quant, name), name
    assert (train.w_bits, train.a_bits) == (32, 32)
    none_is_32 = QuantConfig(first_bits=None, overrides={"fc": (None, 4)})
    assert none_is_32 == QuantConfig(first_bits=32, overrides={"fc": [32, 4]})

    for field, bad, expected in (
        ("step_init", "max", "must be 'mse', 'lsq' or a positive number, got 'max'"),
        ("w_bits", 12, "must be an int in 1..8 or 32 (full precision), got 12"),
        ("method", "dorefa", "must be one of ('uniq', 'lsq'), got 'dorefa'"),
    ):
        for make, name_as in ((lambda **kw: QuantConfig(**kw), "QuantConfig.{}"),
                              (lambda **kw: UniQConfig(**kw), "UniQConfig.{}"),
                              (lambda **kw: resolve_config(kw), "option '{}'")):
            with pytest.raises(ValueError) as info:
                make(**{field: bad})
            assert str(info.value) == f"{name_as.format(field)} {expected}"

    cfg = resolve_config({"arch": "resnet20", "bits": 3, "step_init": "0.1", "last_bits": "32",
                          "overrides": "layer2.*=4,32", "method": "lsq", "weight_granularity": "layer"})
    bundle = DataBundle(train=None, eval=None, train_transform=None, eval_transform=None, id2label={0: "a", 1: "b"},
                        num_channels=1, image_size=28, mean=[0.5], std=[0.5], num_train=0)
    model = build_model(cfg, bundle)
    assert {name: getattr(model.config, name) for name in QUANT_FIELDS} == cfg.quant_options()
    assert model.config.quant_config() == QuantConfig(**cfg.quant_options())
    assert cfg.step_init == 0.1 and cfg.overrides == {"layer2.*": [4, 32]} and cfg.last_bits == 32

    old = tmp_path / "old.json"
    old.write_text(json.dumps({"arch": "resnet20", "bits": 2, "init": "lsq", "in_chans": 1, "calibration_batches": 7}))
    cfg = resolve_config(config_file=old)
    assert (cfg.step_init, cfg.num_channels, cfg.calib_batches) == ("lsq", 1, 7)
    old.write_text(json.dumps({"bits": 2, "init": "lsq", "step_init": "mse"}))
    with pytest.raises(ValueError, match=r"old.json: 'init' \(an older name of 'step_init'\) is 'lsq' but"):
        resolve_config(config_file=old)
