"""Quantizer dynamics (Figure 4): the probe's numbers against a direct computation, side effects."""

from __future__ import annotations

import math

import pytest
import torch

from train_helpers import eager_kernels  # noqa: F401
from uniq_hub import QuantConfig, calibrate, create_model, quantize_, quantizers
from uniq_hub.model.quant import optimal_step
from uniq_hub.training.dynamics import DynamicsRecorder, quantizer_stats


def test_quantizer_stats_by_hand():
    model = quantize_(create_model("resnet20", num_classes=10, num_channels=1), QuantConfig(2, 2))
    q = quantizers(model)["layer1.0.conv1.input_quantizer"]
    x = torch.relu(torch.randn(4, 16, 8, 8))
    q.init_from(x)
    stats = quantizer_stats(q, x, q(x))
    noise = (x - q(x)).pow(2).mean()
    assert stats["sqnr"] == pytest.approx(10 * math.log10(x.var().item() / noise.item()), rel=1e-5)
    assert stats["std"] == pytest.approx(x.std().item(), rel=1e-5)
    unit, sqnr_opt = optimal_step(2, "activation")
    assert stats["sqnr_opt"] == pytest.approx(sqnr_opt)
    assert stats["step"] == pytest.approx(stats["step_opt"], rel=1e-5) == unit * math.sqrt(2 * x.pow(2).mean().item())
    w = quantizers(model)["layer1.0.conv1.weight_quantizer"]  # kernel-wise: the mean of per-channel optima
    weight = model.layer1[0].conv1.weight
    ws = quantizer_stats(w, weight, w(weight))
    expected = optimal_step(2, "weight")[0] * weight.flatten(1).std(1).mean().item()
    assert ws["step_opt"] == pytest.approx(expected, rel=1e-5)
    assert ws["step"] == pytest.approx(ws["step_opt"], rel=1e-4)  # initialised from these weights


def test_probe_records_all_quantizers_without_side_effects():
    torch.manual_seed(0)
    model = quantize_(create_model("resnet20", num_classes=10, num_channels=1), QuantConfig(3, 3))
    x = torch.randn(4, 1, 16, 16)
    calibrate(model, [x], 1)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recorder = DynamicsRecorder(model)
    values = recorder.probe(x)
    assert len(recorder.quantizers) == len(quantizers(model)) and len(values) == 5 * len(recorder.quantizers)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # BN running stats kept
    assert not model.training and all(not q._forward_hooks for q in quantizers(model).values())
    assert values["layer2.0.conv1.input_quantizer/sqnr_opt"] == pytest.approx(optimal_step(3, "activation")[1])
    assert values["stem.conv.input_quantizer/sqnr_opt"] == pytest.approx(optimal_step(8, "weight")[1])
    # right after calibration on this very batch the activation steps are the running maxima:
    # at least the MSE optimum of this batch, which is the batch they came from
    for name in quantizers(model):
        if name.endswith("input_quantizer"):
            assert values[f"{name}/step"] == pytest.approx(values[f"{name}/step_opt"], rel=1e-4), name
    only = DynamicsRecorder(model, include=("layer3",)).probe(x)
    assert only and all(k.startswith("layer3") for k in only)
