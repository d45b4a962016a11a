"""The architecture registry: entrypoints and their facts (display name, input size, granularity)."""

import pytest
import torch

from uniq_hub.model import registry
from uniq_hub.model.registry import ArchInfo, create_model, list_models, model_info


@pytest.mark.parametrize("name", list_models())
def test_facts_agree_with_the_built_model(name):
    info = model_info(name)
    assert info.name == name and info.display_name and info.display_name != name
    with torch.device("meta"):
        model = create_model(name, num_classes=10, num_channels=3)
    # The granularity the registry reports is the one the model declares to quantize_.
    assert getattr(model, "weight_per_channel", True) == (info.weight_granularity == "channel")
    # The recorded stride: ImageNet designs downsample 32x, CIFAR ResNets 4x, small-image MobileNetV2s 8x or 16x.
    features = model.forward_features(torch.empty(1, 3, info.input_size, info.input_size, device="meta"))
    assert features.shape[-1] == info.input_size // info.stride
    assert info.stride == {"resnet20": 4, "resnet32": 4, "mobilenetv2_cifar": 8, "mobilenetv2_small": 16}.get(name, 32)


def test_known_facts():
    assert model_info("resnet18").imagenet and not model_info("resnet20").imagenet
    assert model_info("mobilenetv2").weight_granularity == "layer"
    assert model_info("resnet32").input_size == 32


def test_unknown_architecture_is_named_in_the_error():
    with pytest.raises(ValueError, match="unknown architecture 'resnet99'.*resnet18"):
        model_info("resnet99")
    with pytest.raises(ValueError, match="unknown architecture 'resnet99'"):
        create_model("resnet99")


def test_register_model_with_and_without_facts(monkeypatch):
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))
    monkeypatch.setattr(registry, "_INFO", dict(registry._INFO))

    @registry.register_model
    def plain_net(**kwargs):
        return torch.nn.Linear(2, 2)

    @registry.register_model(display_name="Small net", input_size=16, weight_granularity="layer")
    def small_net(**kwargs):
        return torch.nn.Linear(2, 2)

    assert model_info("plain_net") == ArchInfo("plain_net", "plain_net")
    assert model_info("small_net") == ArchInfo("small_net", "Small net", 16, weight_granularity="layer")
    assert isinstance(create_model("small_net"), torch.nn.Linear)
    assert {"plain_net", "small_net"} <= set(list_models())
