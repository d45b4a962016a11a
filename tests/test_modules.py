"""UniQQuantizer init rules, gradient scaling, positivity, and QConv2d / QLinear swaps."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from uniq_hub.model.modules import QConv2d, QLinear, QuantSpec, UniQQuantizer
from uniq_hub.model.quant import fake_quant_activation, fake_quant_weight, grad_scale_factor, optimal_step


def test_weight_init_is_optimal_unit_step_times_channel_std():
    w = torch.randn(8, 3, 3, 3) * torch.linspace(0.1, 2.0, 8).reshape(8, 1, 1, 1)
    q = UniQQuantizer(QuantSpec(2, "weight", per_channel=True), channels=8)
    q.init_from(w)
    expected = optimal_step(2, "weight")[0] * w.reshape(8, -1).std(dim=1)
    assert q.step.shape == (8, 1, 1, 1)
    torch.testing.assert_close(q.step.flatten(), expected)
    layer = UniQQuantizer(QuantSpec(3, "weight"))
    layer.init_from(w)
    assert layer.step.shape == ()
    assert float(layer.step) == pytest.approx(optimal_step(3, "weight")[0] * float(w.std()), rel=1e-5)


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
    q = UniQQuantizer(QuantSpec(2, "activation", step_init=init))
    q.init_from(torch.full((16,), 0.5))
    assert float(q.step) == pytest.approx(expected)


def test_bad_specs_are_rejected():
    with pytest.raises(ValueError, match="step_init must be"):
        QuantSpec(2, step_init="max")
    with pytest.raises(ValueError, match="positive"):
        QuantSpec(2, step_init=-0.1)
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
    q = QConv2d.from_float(conv, QuantSpec(2, "weight", per_channel=True), QuantSpec(3, "activation", step_init=0.25))
    assert q.weight is conv.weight and q.bias is conv.bias
    x = torch.rand(2, 3, 6, 6)
    q.input_quantizer.init_from(x)
    qx, qw = fake_quant_activation(x, 0.25, 3), fake_quant_weight(conv.weight, q.weight_quantizer.step, 2)
    expected = F.conv2d(qx, qw, conv.bias, padding=1)
    torch.testing.assert_close(q(x), expected)


def test_qlinear_with_only_an_input_quantizer():
    lin = nn.Linear(5, 3)
    q = QLinear.from_float(lin, None, QuantSpec(4, "signed", step_init=0.1))
    assert q.weight_quantizer is None
    x = torch.randn(7, 5)
    torch.testing.assert_close(q(x), F.linear(fake_quant_weight(x, 0.1, 4), lin.weight, lin.bias))
