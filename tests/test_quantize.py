"""The precision policy of quantize_, per-layer overrides, granularity, and every architecture."""

import pytest
import torch
from torch import nn

import uniq_hub as U
from uniq_hub.model.modules import QConv2d, QLinear

R18_CONVS = ["stem.conv"] + [
    f"layer{s}.{b}.{c}"
    for s in range(1, 5)
    for b in range(2)
    for c in (["conv1", "conv2"] + (["downsample"] if s > 1 and b == 0 else []))
] + ["fc"]


def test_resnet18_layer_bits_at_w2a2_follow_the_paper():
    model = U.quantize_(U.create_model("resnet18"), U.QuantConfig(w_bits=2, a_bits=2))
    modules = dict(model.named_modules())
    seen = {n for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert seen == set(R18_CONVS) and len(R18_CONVS) == 21
    for name in R18_CONVS:
        m = modules[name]
        assert isinstance(m, (QConv2d, QLinear)), name
        expected = 8 if name in ("stem.conv", "fc") else 2
        assert (m.weight_quantizer.bits, m.input_quantizer.bits) == (expected, expected), name
        assert m.input_quantizer.scheme == ("symmetric" if name == "stem.conv" else "unsigned"), name
        assert m.weight_quantizer.scheme == "symmetric"


def test_resnet18_layer_bits_at_w1a1_keep_first_last_and_shortcuts_fp():
    model = U.quantize_(U.create_model("resnet18"), U.QuantConfig(w_bits=1, a_bits=1))
    modules = dict(model.named_modules())
    fp = {"stem.conv", "fc", "layer2.0.downsample", "layer3.0.downsample", "layer4.0.downsample"}
    for name in R18_CONVS:
        m = modules[name]
        if name in fp:
            assert type(m) in (nn.Conv2d, nn.Linear), name
        else:
            assert isinstance(m, QConv2d) and (m.weight_quantizer.bits, m.input_quantizer.bits) == (1, 1), name


def test_mixed_bits_overrides_and_granularity():
    cfg = U.QuantConfig(w_bits=2, a_bits=4, overrides={"layer4.*": (3, None), "layer1.0.conv1": (None, None)})
    model = U.quantize_(U.create_model("resnet18"), cfg)
    m = dict(model.named_modules())
    assert (m["layer2.1.conv2"].weight_quantizer.bits, m["layer2.1.conv2"].input_quantizer.bits) == (2, 4)
    assert m["layer4.1.conv1"].weight_quantizer.bits == 3 and m["layer4.1.conv1"].input_quantizer is None
    assert type(m["layer1.0.conv1"]) is nn.Conv2d
    assert m["layer2.1.conv2"].weight_quantizer.step.shape == (128, 1, 1, 1)  # kernel-wise default
    assert m["layer2.1.conv2"].input_quantizer.step.shape == ()  # layer-wise activations
    layer = U.quantize_(U.create_model("resnet18"), U.QuantConfig(weight_granularity="layer"))
    assert dict(layer.named_modules())["layer2.1.conv2"].weight_quantizer.step.shape == ()


def test_mobilenetv2_is_layer_wise_and_signed_inputs_are_optional():
    paper = U.quantize_(U.create_model("mobilenetv2", num_classes=10), U.QuantConfig(4, 4))
    m = dict(paper.named_modules())
    assert m["blocks.3.expand.conv"].weight_quantizer.step.shape == ()
    assert m["blocks.3.expand.conv"].input_quantizer.scheme == "unsigned"  # the paper's setting
    assert m["classifier"].weight_quantizer.bits == 8 and m["stem.conv"].input_quantizer.scheme == "symmetric"
    signed = U.quantize_(U.create_model("mobilenetv2", num_classes=10), U.QuantConfig(4, 4, signed_inputs=True))
    s = dict(signed.named_modules())
    assert s["blocks.3.expand.conv"].input_quantizer.scheme == "symmetric"
    assert s["blocks.0.expand.conv"].input_quantizer.scheme == "unsigned"  # reads a ReLU6 output
    assert s["blocks.3.dw.conv"].input_quantizer.scheme == "unsigned"


def test_quantize_reuses_parameters_and_lsq_method():
    model = U.create_model("resnet20", num_classes=10)
    weight = model.layer1[0].conv1.weight
    U.quantize_(model, U.QuantConfig(3, 3, method="lsq"))
    assert model.layer1[0].conv1.weight is weight
    assert model.layer1[0].conv1.weight_quantizer.scheme == "twos_complement"


def test_config_validation():
    with pytest.raises(ValueError, match="w_bits"):
        U.QuantConfig(w_bits=9)
    with pytest.raises(ValueError, match="weight_granularity"):
        U.QuantConfig(weight_granularity="kernel")
    with pytest.raises(ValueError, match="unknown architecture 'resnet50'"):
        U.create_model("resnet50")


ARCH_INPUT = {"resnet18": (3, 32), "resnet34": (3, 32), "resnet20": (1, 28), "resnet32": (3, 16),
              "mobilenetv2": (3, 32)}


@pytest.mark.parametrize("granularity", ["channel", "layer"])
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("arch", sorted(ARCH_INPUT))
def test_every_architecture_trains_at_every_bit_width(arch, bits, granularity):
    torch.manual_seed(0)
    chans, size = ARCH_INPUT[arch]
    model = U.create_model(arch, num_classes=7, num_channels=chans)
    U.quantize_(model, U.QuantConfig(bits, bits, weight_granularity=granularity))
    x = torch.randn(4, chans, size, size)
    U.calibrate(model, [x])
    out = model(x)
    assert out.shape == (4, 7) and torch.isfinite(out).all()
    torch.nn.functional.cross_entropy(out, torch.arange(4) % 7).backward()
    steps = {n for n, _ in model.named_parameters() if n.endswith(".step")}
    assert steps, "no step size was created"
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if name.endswith(".step"):
            assert p.grad.abs().sum() > 0, f"step {name} got a zero gradient"
