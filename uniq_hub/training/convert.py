"""pytorchcv state dicts -> our float architectures (the paper's FP initialisation).

Our architectures register their modules in pytorchcv's order, so the conversion pairs the two
state dicts entry by entry and checks every shape; the only layout difference is MobileNetV2's
classifier, a bias-free 1x1 conv in pytorchcv and an ``nn.Linear`` (zero bias) here.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..model.registry import create_model

__all__ = ["PYTORCHCV_ARCHS", "convert_state_dict", "convert_pytorchcv_model", "load_pytorchcv"]

# pytorchcv model name -> (our architecture, its keyword arguments)
PYTORCHCV_ARCHS: dict[str, tuple[str, dict]] = {
    "preresnet18": ("resnet18", {}),
    "preresnet34": ("resnet34", {}),
    "mobilenetv2_w1": ("mobilenetv2", {}),
    "preresnet20_cifar10": ("resnet20", {"num_classes": 10}),
    "preresnet20_cifar100": ("resnet20", {"num_classes": 100}),
}


def convert_state_dict(source: Mapping[str, Tensor], target: nn.Module) -> dict[str, Tensor]:
    """Map a pytorchcv state dict onto ``target``'s keys by registration order.

    Every pair must have the same shape, except a bias-free 1x1-conv classifier ``(C, F, 1, 1)``
    against a Linear ``(C, F)``: its weight is flattened and the Linear's bias set to zeros.
    Raises ``ValueError`` naming the first mismatching pair.
    """
    src = iter(source.items())
    out: dict[str, Tensor] = {}
    zero_bias: str | None = None  # the bias key a squeezed 1x1-conv classifier leaves without a source
    for key, ref in target.state_dict().items():
        if key == zero_bias:
            out[key] = torch.zeros_like(ref)
            continue
        src_key, value = next(src, (None, None))
        if src_key is None:
            raise ValueError(f"pytorchcv state dict ran out of entries at our {key!r} {tuple(ref.shape)}")
        if value.shape != ref.shape and value.dim() == 4 and value.shape[2:] == (1, 1) and value.shape[:2] == ref.shape:
            value = value.flatten(1)
            zero_bias = key.rsplit(".", 1)[0] + ".bias"
        if value.shape != ref.shape:
            raise ValueError(
                f"shape mismatch converting pytorchcv {src_key!r} {tuple(value.shape)} to {key!r} {tuple(ref.shape)}"
            )
        out[key] = value.detach().clone().to(ref.dtype)
    leftover = [k for k, _ in src]
    if leftover:
        raise ValueError(f"{len(leftover)} pytorchcv entries left unmapped, the first is {leftover[0]!r}")
    return out


def convert_pytorchcv_model(name: str, cv_model: nn.Module, **kwargs) -> nn.Module:
    """Our float architecture with the weights of pytorchcv model ``cv_model`` (named ``name``)."""
    if name not in PYTORCHCV_ARCHS:
        raise ValueError(f"no conversion for pytorchcv model {name!r}; expected one of {sorted(PYTORCHCV_ARCHS)}")
    arch, arch_kwargs = PYTORCHCV_ARCHS[name]
    model = create_model(arch, **{**arch_kwargs, **kwargs})
    model.load_state_dict(convert_state_dict(cv_model.state_dict(), model))
    return model


def load_pytorchcv(name: str, pretrained: bool = True, **kwargs) -> nn.Module:
    """Build pytorchcv's ``name`` (downloading its weights when ``pretrained``) and convert it."""
    try:
        from pytorchcv.model_provider import get_model
    except ImportError as e:  # pragma: no cover - dev extra
        raise ImportError("`--init-from pytorchcv:NAME` needs pytorchcv: pip install pytorchcv") from e
    try:
        cv_model = get_model(name, pretrained=pretrained)
    except Exception as e:  # noqa: BLE001 - pytorchcv fails with requests', urllib's or its own errors
        raise OSError(  # a missing file / network failure: `uniq-hub train` ends with this one line
            f"could not get pytorchcv weights for {name!r} ({type(e).__name__}: {e}); they are downloaded "
            "from github.com/osmr/imgclsmob on first use, so this needs network access, or put the "
            "file in ~/.torch/models"
        ) from e
    return convert_pytorchcv_model(name, cv_model, **kwargs)
