"""MobileNetV2 width 1.0 (Sandler et al., 2018), laid out as pytorchcv's ``mobilenetv2_w1``, and its
small-image variants: ``mobilenetv2_cifar`` (stride 1 at the stem and at the first strided stage, as
kuangliu/pytorch-cifar's: total stride 8, a 28 px input ends at 4x4 maps instead of 1x1) and
``mobilenetv2_small`` (stride 1 at the stem only: total stride 16, 2x2 maps at 28 px; 22.6 M
multiply-adds per 28 px image against 73.7 M, which made it the one trainable on 2 CPU cores).

As in pytorchcv, the first bottleneck keeps a 1x1 (32 -> 32) expansion conv. Expansion convs
after the first block and the head conv read a linear bottleneck (signed) output: they are
listed in ``signed_input_layers`` for the optional signed input quantizer.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .registry import register_model

# (expansion, out_channels, repeats, stride) per stage, after the stem.
_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class ConvBN(nn.Sequential):
    """Conv, BN and an optional ReLU6."""

    def __init__(self, in_chs: int, out_chs: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.add_module("conv", nn.Conv2d(in_chs, out_chs, k, stride, k // 2, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_chs))
        if act:
            self.add_module("act", nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise, linear 1x1 projection; residual when shapes allow."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid = in_chs * expansion
        self.use_res = stride == 1 and in_chs == out_chs
        self.expand = ConvBN(in_chs, mid)
        self.dw = ConvBN(mid, mid, 3, stride, groups=mid)
        self.project = ConvBN(mid, out_chs, act=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.dw(self.expand(x)))
        return out + x if self.use_res else out


class MobileNetV2(nn.Module):
    """MobileNetV2; ``stem_stride`` and ``stage2_stride`` (the first strided stage) are 1 in the
    small-image variants."""

    def __init__(self, num_classes: int = 1000, num_channels: int = 3, stem_chs: int = 32, head_chs: int = 1280,
                 stem_stride: int = 2, stage2_stride: int = 2):
        super().__init__()
        self.num_classes, self.num_channels = num_classes, num_channels
        self.stem = ConvBN(num_channels, stem_chs, 3, stem_stride)
        stages = tuple((t, c, n, stage2_stride if i == 1 else s) for i, (t, c, n, s) in enumerate(_STAGES))
        blocks, in_chs = [], stem_chs
        for t, c, n, s in stages:
            for j in range(n):
                blocks.append(InvertedResidual(in_chs, c, s if j == 0 else 1, t))
                in_chs = c
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBN(in_chs, head_chs)
        self.classifier = nn.Linear(head_chs, num_classes)
        self.num_features = head_chs

        self.first_layer, self.last_layer = "stem.conv", "classifier"
        self.shortcut_layers: list[str] = []
        self.signed_input_layers = [self.first_layer, "head.conv"] + [
            f"blocks.{i}.expand.conv" for i in range(1, len(blocks))
        ]
        self.weight_per_channel = False
        ends = [sum(n for *_, n, _ in _STAGES[: i + 1]) - 1 for i in range(len(_STAGES))]
        self.feature_layers = ["stem"] + [f"blocks.{i}" for i in ends]  # stem, then the end of each stage
        for m in self.modules():
            self.init_module(m)

    @staticmethod
    def init_module(m: nn.Module) -> None:
        """Initialise one layer: He-normal convs (fan out); the classifier N(0, 0.01), zero bias."""
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(F.adaptive_avg_pool2d(self.forward_features(x), 1).flatten(1))


@register_model(display_name="MobileNetV2 (width 1.0)", input_size=224, weight_granularity="layer")
def mobilenetv2(**kwargs) -> MobileNetV2:
    """MobileNetV2, width 1.0."""
    return MobileNetV2(**kwargs)


@register_model(display_name="MobileNetV2 (width 1.0, CIFAR stem: stride 1 at the stem and stage 2)",
                input_size=32, stride=8, weight_granularity="layer")
def mobilenetv2_cifar(**kwargs) -> MobileNetV2:
    """MobileNetV2, width 1.0, kuangliu/pytorch-cifar's small-image strides (total stride 8: 28 px -> 4x4 maps)."""
    return MobileNetV2(stem_stride=1, stage2_stride=1, **kwargs)


@register_model(display_name="MobileNetV2 (width 1.0, small-image stem: stride 1 at the stem)",
                input_size=32, stride=16, weight_granularity="layer")
def mobilenetv2_small(**kwargs) -> MobileNetV2:
    """MobileNetV2, width 1.0, stride 1 at the stem only (total stride 16: 28 px -> 2x2 maps)."""
    return MobileNetV2(stem_stride=1, **kwargs)
