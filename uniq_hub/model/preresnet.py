"""Pre-activation ResNets (He et al., 2016): ImageNet ResNet-18/34 and CIFAR ResNet-20/32.

Layer names and registration order follow pytorchcv's ``preresnet*`` (``bn`` before ``conv``)
so its weights convert by order. Policy hooks for :func:`uniq_hub.quantize_`: ``first_layer``,
``last_layer``, ``shortcut_layers`` (the 1x1 downsampling convs) and ``signed_input_layers``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .registry import register_model


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3 twice; the 1x1 ``downsample`` conv sees the first pre-activation."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, 1, 1, bias=False)
        resize = stride != 1 or in_chs != out_chs
        self.downsample = nn.Conv2d(in_chs, out_chs, 1, stride, bias=False) if resize else None

    def forward(self, x: Tensor) -> Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        return out + (x if self.downsample is None else self.downsample(pre))


class PreActResNet(nn.Module):
    """Pre-activation ResNet with basic blocks.

    ``stem="imagenet"``: 7x7/2 conv, BN, ReLU, 3x3/2 max-pool. ``stem="cifar"``: a bare 3x3 conv.
    """

    def __init__(
        self,
        layers: tuple[int, ...],
        channels: tuple[int, ...],
        stem: str = "imagenet",
        stem_chs: int = 64,
        num_classes: int = 1000,
        num_channels: int = 3,
    ) -> None:
        super().__init__()
        self.num_classes, self.num_channels = num_classes, num_channels
        if stem == "imagenet":
            self.stem = nn.Sequential()
            self.stem.add_module("conv", nn.Conv2d(num_channels, stem_chs, 7, 2, 3, bias=False))
            self.stem.add_module("bn", nn.BatchNorm2d(stem_chs))
            self.stem.add_module("act", nn.ReLU(inplace=True))
            self.stem.add_module("pool", nn.MaxPool2d(3, 2, 1))
        elif stem == "cifar":
            self.stem = nn.Sequential()
            self.stem.add_module("conv", nn.Conv2d(num_channels, stem_chs, 3, 1, 1, bias=False))
        else:
            raise ValueError(f"unknown stem {stem!r}; expected 'imagenet' or 'cifar'")
        in_chs, self.stage_names = stem_chs, []
        for i, (depth, chs) in enumerate(zip(layers, channels)):
            blocks = [PreActBlock(in_chs if j == 0 else chs, chs, 2 if j == 0 and i > 0 else 1) for j in range(depth)]
            self.stage_names.append(f"layer{i + 1}")
            self.add_module(self.stage_names[-1], nn.Sequential(*blocks))
            in_chs = chs
        self.norm = nn.BatchNorm2d(in_chs)
        self.fc = nn.Linear(in_chs, num_classes)
        self.num_features = in_chs

        self.first_layer, self.last_layer = "stem.conv", "fc"
        self.shortcut_layers = [n for n, m in self.named_modules() if n.endswith("downsample") and m is not None]
        self.signed_input_layers = [self.first_layer]
        self.weight_per_channel = True
        self.feature_layers = ["stem", *self.stage_names]  # whose outputs are the hidden states
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                self.init_module(m)

    @staticmethod
    def init_module(m: nn.Module) -> None:
        """Initialise one layer: He-normal convs (fan out); Linear as torch does."""
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            m.reset_parameters()

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return F.relu(self.norm(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.forward_features(x), 1).flatten(1))


@register_model(display_name="pre-activation ResNet-18", input_size=224)
def resnet18(**kwargs) -> PreActResNet:
    """Pre-activation ResNet-18 (ImageNet stem), as pytorchcv ``preresnet18``."""
    return PreActResNet((2, 2, 2, 2), (64, 128, 256, 512), **kwargs)


@register_model(display_name="pre-activation ResNet-34", input_size=224)
def resnet34(**kwargs) -> PreActResNet:
    """Pre-activation ResNet-34 (ImageNet stem), as pytorchcv ``preresnet34``."""
    return PreActResNet((3, 4, 6, 3), (64, 128, 256, 512), **kwargs)


@register_model(display_name="pre-activation ResNet-20", input_size=32, stride=4)
def resnet20(**kwargs) -> PreActResNet:
    """Pre-activation ResNet-20 for small images, as pytorchcv ``preresnet20_cifar10``."""
    return PreActResNet((3, 3, 3), (16, 32, 64), stem="cifar", stem_chs=16, **kwargs)


@register_model(display_name="pre-activation ResNet-32", input_size=32, stride=4)
def resnet32(**kwargs) -> PreActResNet:
    """Pre-activation ResNet-32 for small images (the paper's CIFAR-100 model)."""
    return PreActResNet((5, 5, 5), (16, 32, 64), stem="cifar", stem_chs=16, **kwargs)
