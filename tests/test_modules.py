"""UniQQuantizer init rules, gradient scaling, positivity, and QConv2d / QLinear swaps."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from uniq_hub.modules import QConv2d, QLinear, QuantSpec, UniQQuantizer
from uniq_hub.quant import fake_quant_activation, fake_quant_weight, grad_scale_factor, optimal_step


def test_weight_init_is_optimal_unit_step_times_channel_std():
    w = torch.randn(8, 3, 3, 3) * torch.linspace(0.1, 2.0, 8).reshape(8, 1, 1, 1)
    q = UniQQuantizer(QuantSpec(2, "weight", per_channel=True), channels=8)
    q.init_from(w)
    expected = optimal_step(2, "weight")[0] * w.reshape(8, -1).std(dim=1)
    assert q.step.shape == (8, 1, 1, 1)
    torch.testing.assert_close(q.step.flatten(), expected)
    layer = UniQQuantizer(QuantSpec(3, "weight"))
    layer.init_from(w)
    assert layer.step.shape == () and float(layer.step) == pytest.approx(optimal_step(3, "weight")[0] * float(w.std()), rel=1e-5)


def test_activation_init_takes_max_over_batches():
    q = UniQQuantizer(QuantSpec(2, "activation"))
    q.calibrating = True
    batches = [torch.rand(4, 10) * s for s in (1.0, 5.0, 2.0)]
    for b in batches:
        q(b)
    expected = max(optimal_step(2, "activation")[0] * math.sqrt(2 * float(b.pow(2).mean())) for b in batches)
    assert float(q.step) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("init,expected", [("lsq", 2 * 0.5 / math.sqrt(3)), (0.2, 0.2)])
def test_lsq_and_constant_inits(init, expected):
    q = UniQQuantizer(QuantSpec(2, "activation", init=init))
    q.init_from(torch.full((16,), 0.5))
    assert float(q.step) == pytest.approx(expected)


def test_bad_specs_are_rejected():
    with pytest.raises(ValueError, match="step init"):
        QuantSpec(2, init="max")
    with pytest.raises(ValueError, match="positive"):
        QuantSpec(2, init=-0.1)
    with pytest.raises(ValueError, match="bits"):
        QuantSpec(0)


@pytest.mark.parametrize("grad_scale", [True, False])
def test_step_gradient_scaling_switch(grad_scale):
    x = torch.randn(2, 3, 5, 5)
    q = UniQQuantizer(QuantSpec(2, "activation", grad_scale=grad_scale))
    q.init_from(x.relu())
    q(x).sum().backward()
    s = q.step.detach().clone().requires_grad_(True)
    fake_quant_activation(x, s, 2).sum().backward()
    factor = grad_scale_factor(3 * 5 * 5, 2, "activation") if grad_scale else 1.0
    assert float(q.step.grad) == pytest.approx(float(s.grad) * factor, rel=1e-5)


def test_step_is_kept_positive():
    q = UniQQuantizer(QuantSpec(2, "weight"))
    with torch.no_grad():
        q.step.fill_(-1.0)
    out = q(torch.randn(100))
    assert torch.isfinite(out).all()


def test_qconv2d_reuses_parameters_and_quantizes_both_sides():
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=True)
    q = QConv2d.from_float(conv, QuantSpec(2, "weight", per_channel=True), QuantSpec(3, "activation", init=0.25))
    assert q.weight is conv.weight and q.bias is conv.bias
    x = torch.rand(2, 3, 6, 6)
    q.input_quantizer.init_from(x)
    expected = F.conv2d(fake_quant_activation(x, 0.25, 3), fake_quant_weight(conv.weight, q.weight_quantizer.step, 2), conv.bias, padding=1)
    torch.testing.assert_close(q(x), expected)


def test_qlinear_with_only_an_input_quantizer():
    lin = nn.Linear(5, 3)
    q = QLinear.from_float(lin, None, QuantSpec(4, "signed", init=0.1))
    assert q.weight_quantizer is None
    x = torch.randn(7, 5)
    torch.testing.assert_close(q(x), F.linear(fake_quant_weight(x, 0.1, 4), lin.weight, lin.bias))


# --- a ReLU before an unsigned quantizer is skipped: same values, same gradients -------------------


def test_unsigned_quantizer_statistics_ignore_a_skipped_relu():
    x = torch.randn(64, 8, 5, 5) * 1.7 + 0.3
    act = UniQQuantizer(QuantSpec(3, "activation"))
    signed = UniQQuantizer(QuantSpec(3, "signed"))
    assert act.clips_at_zero and not signed.clips_at_zero
    assert UniQQuantizer(QuantSpec(3, "activation", method="lsq")).clips_at_zero
    assert not UniQQuantizer(QuantSpec(3, "weight", method="lsq")).clips_at_zero
    for init in ("mse", "lsq"):
        q = UniQQuantizer(QuantSpec(3, "activation", init=init))
        assert torch.equal(q.estimate_step(x), q.estimate_step(F.relu(x)))
    assert not torch.equal(signed.estimate_step(x), signed.estimate_step(F.relu(x)))


@pytest.mark.parametrize("bits", [2, 1])
def test_preact_resnet_skips_absorbed_relus_with_identical_results(bits, monkeypatch):
    import uniq_hub.preresnet as preresnet
    from uniq_hub import QuantConfig, calibrate, create_model, quantize_

    torch.manual_seed(0)
    net = create_model("resnet20", num_classes=10, in_chans=1)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    quantize_(net, QuantConfig(w_bits=bits, a_bits=bits))
    calibrate(net, [x])
    block = net.layer2[0]  # a downsampling block: conv1 and the 1x1 shortcut read the same ReLU
    assert block.conv1.absorbs_relu and block.conv2.absorbs_relu
    assert getattr(block.downsample, "absorbs_relu", False) is (bits > 1)  # at 1 bit: a full-precision shortcut

    skipped = []
    real = preresnet.relu_unless_absorbed
    # skipped: the negative values of the BatchNorm output pass through (real ReLUs run in place)
    monkeypatch.setattr(preresnet, "relu_unless_absorbed",
                        lambda t, *c: (out := real(t.clone(), *c), skipped.append(bool((out < 0).any())))[0])
    calibrate(net, [x])
    steps_skipping = {n: p.detach().clone() for n, p in net.named_parameters() if n.endswith("step")}

    def run(relu):
        monkeypatch.setattr(preresnet, "relu_unless_absorbed", relu)
        net.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}

    loss_fast, grads_fast = run(real)
    monkeypatch.setattr(preresnet, "relu_unless_absorbed", lambda t, *c: F.relu(t))
    calibrate(net, [x])  # the init sees relu(x) now: the same steps
    assert all(torch.equal(p, steps_skipping[n]) for n, p in net.named_parameters() if n.endswith("step"))
    loss_ref, grads_ref = run(lambda t, *c: F.relu(t))
    assert torch.equal(loss_fast, loss_ref)
    for name, grad in grads_ref.items():
        torch.testing.assert_close(grads_fast[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    # every block ReLU was skipped, except the 1-bit model's before a full-precision shortcut
    assert skipped.count(True) == (2 * 9 if bits > 1 else 2 * 9 - 2) and len(skipped) == 2 * 9
