"""pytorchcv -> our architectures: built without weights, converted, identical float outputs."""

from __future__ import annotations

import pytest
import torch
from pytorchcv.model_provider import get_model

from uniq_hub import create_model
from uniq_hub.training.convert import convert_pytorchcv_model, convert_state_dict


def _randomised(name: str) -> torch.nn.Module:
    """pytorchcv's model without downloaded weights, BatchNorm made non-trivial, eval mode."""
    torch.manual_seed(0)
    model = get_model(name, pretrained=False)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_(1.0, 0.2)
            m.bias.data.normal_(0.0, 0.2)
    return model.eval()


@pytest.mark.parametrize("name,size", [("preresnet18", 64), ("mobilenetv2_w1", 64), ("preresnet20_cifar10", 32)])
def test_pytorchcv_conversion_identical_outputs(name, size):
    cv = _randomised(name)
    ours = convert_pytorchcv_model(name, cv).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        features_cv = cv.features[:-1](x)  # everything but the final pool
        features = ours.forward_features(x)
        assert torch.equal(features, features_cv)  # bit-identical up to the pool
        pooled = features.mean((2, 3))
        if "mobilenet" in name:  # pytorchcv's classifier is a 1x1 conv: same numbers, other summation order
            assert torch.equal(ours.classifier.weight, cv.output.weight.flatten(1))
            torch.testing.assert_close(ours.classifier(pooled), cv.output(pooled[..., None, None]).flatten(1),
                                       rtol=1e-4, atol=1e-5)
        else:
            assert torch.equal(ours.fc(pooled), cv.output(pooled))
        if size == 32:  # CIFAR: pytorchcv's own end-to-end forward (its pool sums in another order)
            torch.testing.assert_close(ours(x), cv(x), rtol=1e-5, atol=1e-5)
    if "mobilenet" in name:
        assert torch.count_nonzero(ours.classifier.bias) == 0  # the 1x1-conv classifier had no bias


def test_conversion_shape_mismatch_is_named():
    cv = get_model("preresnet20_cifar10", pretrained=False)
    with pytest.raises(ValueError, match="shape mismatch converting pytorchcv 'output.weight' .* 'fc.weight'"):
        convert_state_dict(cv.state_dict(), create_model("resnet20", num_classes=100))
    misaligned = r"'features.stage2.unit1.body.conv1.conv.weight' \(32, 16, 3, 3\) to 'layer1.3"
    with pytest.raises(ValueError, match=misaligned):
        convert_state_dict(cv.state_dict(), create_model("resnet32", num_classes=10))  # deeper: misaligned
    truncated = dict(list(cv.state_dict().items())[:-1])
    with pytest.raises(ValueError, match="ran out of entries at our 'fc.bias'"):
        convert_state_dict(truncated, create_model("resnet20", num_classes=10))
    extra = {**cv.state_dict(), "extra.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="1 pytorchcv entries left unmapped, the first is 'extra.weight'"):
        convert_state_dict(extra, create_model("resnet20", num_classes=10))
    with pytest.raises(ValueError, match="no conversion for pytorchcv model 'resnet50'"):
        convert_pytorchcv_model("resnet50", cv)


def test_pytorchcv_weights_that_cannot_be_fetched_end_uniq_hub_train_in_one_line(tmp_path, monkeypatch):
    """Offline, pytorchcv's download fails (here: its get_model raising what requests raises without a
    network); ``uniq-hub train --init-from pytorchcv:...`` then ends with one line naming the model."""
    import pytorchcv.model_provider
    import requests

    from train_helpers import make_tiny_dataset
    from uniq_hub.cli import main

    def offline(name, pretrained=False, **kwargs):
        raise requests.exceptions.ConnectionError("Max retries exceeded with url: preresnet18-0972.pth.zip")

    monkeypatch.setattr(pytorchcv.model_provider, "get_model", offline)
    tiny = make_tiny_dataset(tmp_path / "tiny", train=40, test=8)
    with pytest.raises(SystemExit) as err:
        main(["train", "--dataset", str(tiny), "--arch", "resnet18", "--init-from", "pytorchcv:preresnet18",
              "--epochs", "1", "--batch-size", "8", "--num-workers", "0", "--val-split", "8", "--log-with", "none",
              "--no-progress", "--no-export", "--output-dir", str(tmp_path / "run")])
    message = str(err.value.code)
    assert message.startswith("uniq-hub train: OSError: could not get pytorchcv weights for 'preresnet18' "
                              "(ConnectionError: Max retries") and "\n" not in message, message
