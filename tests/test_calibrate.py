"""calibrate() sets every step to the Section 4.2 formula on the inputs each quantizer saw."""

import math

import pytest
import torch
from torch import nn

import uniq_hub as U
from uniq_hub.model.quant import optimal_step


def test_calibration_sets_steps_to_the_formula_on_known_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    U.quantize_(model, U.QuantConfig(2, 3, first_bits=4, last_bits=5))
    seen: dict[str, list[torch.Tensor]] = {}
    for name, q in U.quantizers(model).items():
        q.register_forward_pre_hook(
            lambda mod, args, name=name: seen.setdefault(name, []).append(args[0].detach().clone()))
    running_mean = model[1].running_mean.clone()
    model.eval()
    batches = [torch.randn(8, 1, 6, 6) * s for s in (1.0, 3.0, 2.0, 10.0)]
    assert U.calibrate(model, batches, num_batches=3) == 3
    assert not model.training and torch.equal(model[1].running_mean, running_mean)

    first = model[0].input_quantizer  # signed image input: D_w^u(bits) * std, max over batches
    assert len(seen["0.input_quantizer"]) == 3
    assert torch.equal(seen["0.input_quantizer"][1], batches[1])
    expected = max(optimal_step(4, "weight")[0] * float(b.std()) for b in batches[:3])
    assert float(first.step) == pytest.approx(expected, rel=1e-5)

    last = model[4].input_quantizer  # unsigned: D_a^u(bits) * sqrt(2 E[x^2]), max over batches
    unit = optimal_step(5, "activation")[0]
    expected = max(unit * math.sqrt(2 * float(x.pow(2).mean())) for x in seen["4.input_quantizer"])
    assert float(last.step) == pytest.approx(expected, rel=1e-5)

    w = model[4].weight  # weights: D_w^u * per-output-channel std
    expected_w = optimal_step(5, "weight")[0] * w.detach().std(dim=1)
    torch.testing.assert_close(model[4].weight_quantizer.step.flatten(), expected_w)
    assert not any(q.calibrating for q in U.quantizers(model).values())


def test_calibration_without_batches_is_an_error():
    model = U.quantize_(nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2)), U.QuantConfig(2, 2))
    with pytest.raises(ValueError, match="no batch"):
        U.calibrate(model, [])


def test_reestimate_batchnorm_matches_the_batch_statistics_of_the_quantized_model():
    """After re-estimation each BatchNorm's running mean is the average of what its input batches had
    under the current quantized weights; steps and weights are unchanged, the mode restored."""
    import uniq_hub as U

    torch.manual_seed(0)
    model = U.quantize_(U.create_model("resnet20", num_classes=4, num_channels=1), U.QuantConfig(2, 2))
    batches = [torch.randn(16, 1, 28, 28) for _ in range(3)]
    U.calibrate(model, batches, 3)
    bn = model.layer1[0].bn2  # reads the output of a 2-bit conv
    seen = []
    hook = bn.register_forward_hook(lambda m, inp, out: seen.append(inp[0].mean(dim=(0, 2, 3))))
    params = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    model.eval()
    assert U.reestimate_batchnorm(model, batches, num_batches=2) == 2
    hook.remove()
    assert not model.training
    assert torch.allclose(bn.running_mean, torch.stack(seen).mean(0), atol=1e-6)
    assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == 2
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in params.items())
    with pytest.raises(ValueError, match="got no batch"):
        U.reestimate_batchnorm(model, [], num_batches=2)
