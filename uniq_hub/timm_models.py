"""timm integration: every UniQ architecture in timm's registry, and the Hub repos through timm.

``import uniq_hub`` registers ``uniq_<arch>`` with timm (``uniq_resnet18``, ``uniq_resnet20``,
``uniq_mobilenetv2`` ...; as soon as both are imported, in either order, so that the torch-free
ONNX runtime of uniq_hub never imports timm), each with a default pretrained cfg (mean, std, input
size, crop, interpolation, classes, channels) from :class:`UniQConfig`'s defaults.

Every ``config.json`` that ``save_pretrained`` / ``push_to_hub`` writes carries timm's keys beside
transformers' (:meth:`UniQConfig.timm_keys`): ``architecture``, ``num_classes``, ``label_names``,
``pretrained_cfg`` and the quantization as ``model_args``. So
``timm.create_model("hf-hub:uniq/resnet20-fashion-mnist-w2a2", pretrained=True)`` builds the quantized
model and loads its packed ``model.safetensors`` through timm's documented custom load
(``pretrained_cfg["custom_load"] = "hf"`` calls :meth:`UniQTimmModel.load_pretrained`), with the
checks of ``from_pretrained``: a tampered or mismatched file is the same :class:`CheckpointError`.
``num_classes=`` other than the checkpoint's re-initialises the classifier only (as
``ignore_mismatched_sizes=True`` does; its input step then needs ``calibrate(..., uninitialized_only=True)``),
``num_classes=0`` drops it (pooled features). ``local-dir:PATH`` loads a saved folder the same way.

The model is the architecture that :class:`UniQForImageClassification` holds (state-dict keys
``model.<layer>``, the same tensors), behind timm's interface: ``forward(x)`` gives the logits,
``forward_features`` / ``forward_head`` / ``get_classifier`` / ``reset_classifier``.
"""

from __future__ import annotations

import os
from typing import Any

import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor, nn

from .model.configuration_uniq import TIMM_PREFIX, UniQConfig
from .model.loading import PREFIX, load_checked_state_dict
from .model.modeling_uniq import build_architecture
from .model.packing import CHECKSUM_KEY, CheckpointError, check_header, read_safetensors
from .model.registry import list_models, model_info

__all__ = ["UniQTimmModel"]


class UniQTimmModel(nn.Module):
    """A UniQ classifier with timm's model interface (built by ``timm.create_model("uniq_<arch>", ...)``).

    ``arch``: a registered architecture; ``num_classes`` (0: no classifier), ``in_chans``; ``quant``: the
    quantization fields of :class:`UniQConfig` (``w_bits``, ``a_bits``, ...; 32 / 32 is the float model).
    """

    def __init__(self, arch: str, num_classes: int = 1000, in_chans: int = 3, **quant: Any) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        self.config = UniQConfig(arch=arch, num_labels=max(num_classes, 1), num_channels=in_chans, **quant)
        self.model = build_architecture(self.config)
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = self._classifier().in_features
        if num_classes == 0:
            self.reset_classifier(0)

    # timm's model interface ----------------------------------------------------------------------

    def _classifier(self) -> nn.Module:
        return self.model.get_submodule(self.model.last_layer)

    def get_classifier(self) -> nn.Module:
        return self._classifier()

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier for ``num_classes`` (0: none), quantized as the config says, uncalibrated."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"UniQ models pool by average only, got global_pool={global_pool!r}")
        if num_classes > 0:
            config = _with_classes(self.config, num_classes)
            head = build_architecture(config).get_submodule(self.model.last_layer)
            self.config = config
        else:
            head = nn.Identity()
        parent, _, name = self.model.last_layer.rpartition(".")
        setattr(self.model.get_submodule(parent) if parent else self.model, name, head)
        self.num_classes = num_classes

    def forward_features(self, x: Tensor) -> Tensor:
        return self.model.forward_features(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return x if pre_logits else self._classifier()(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    # loading -------------------------------------------------------------------------------------

    def checked_state_dict(self, state: dict[str, Tensor], path: str | None) -> dict[str, Tensor]:
        """A checkpoint's tensors checked against this model and unpacked (``load_checked_state_dict``);
        the classifier's are left out when this model's classes differ from the checkpoint's."""
        return load_checked_state_dict(self, dict(state), path, ignore_mismatched_sizes=self._new_head())

    def load_pretrained(self, path: str | os.PathLike) -> None:
        """Load a UniQ ``model.safetensors`` (packed or latent) strictly: timm's custom-load hook."""
        path = os.fspath(path)
        check_header(path, self.config, self.model, PREFIX, extra_keys=(CHECKSUM_KEY,))
        state, _ = read_safetensors([path])
        state = self.checked_state_dict(state, path)
        result = self.load_state_dict(state, strict=False)
        head = f"{PREFIX}{self.model.last_layer}."
        missing = [k for k in result.missing_keys if not (k.startswith(head) and self._new_head())]
        if missing or result.unexpected_keys:  # load_checked_state_dict refuses these first; kept as a guard
            raise CheckpointError(path, f"missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}")

    def _new_head(self) -> bool:
        """No classifier, or one for other classes than the checkpoint's (timm's ``pretrained_cfg``)."""
        pretrained = getattr(self, "pretrained_cfg", None) or {}
        return self.num_classes == 0 or self.num_classes != pretrained.get("num_classes", self.num_classes)


def _with_classes(config: UniQConfig, num_classes: int) -> UniQConfig:
    """``config`` with ``num_classes`` new labels."""
    return UniQConfig.from_dict(config.to_dict(), num_labels=num_classes)


def _filter_local_dir(state: dict[str, Tensor], model: UniQTimmModel) -> dict[str, Tensor]:
    """``local-dir:`` loads: timm read the folder's weights file itself; check and unpack it as the Hub path does."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    folder = cfg.get("file") if cfg.get("source") == "local-dir" else None
    path = os.path.join(folder, "model.safetensors") if folder else None
    if path is None or not os.path.isfile(path):  # never a state dict whose file the checks cannot see
        raise CheckpointError(path or cfg.get("hf_hub_id"), "UniQ weights load from a model.safetensors through "
                              "timm's hf-hub: or local-dir: (with from_pretrained's checks), not from this source")
    check_header(path, model.config, model.model, PREFIX, extra_keys=(CHECKSUM_KEY,))
    state, _ = read_safetensors([path])
    return model.checked_state_dict(state, path)


# pretrained_cfg keys that would make timm read weights from somewhere other than the repo or folder itself
_FOREIGN_SOURCES = ("file", "url", "state_dict")


def _gate(pretrained_cfg: Any) -> dict[str, Any]:
    """The one loading gate for timm: a Hub repo always loads through :meth:`UniQTimmModel.load_pretrained`
    (``custom_load="hf"``: the checks of ``from_pretrained``, whatever the repo's config says), and a repo's
    config may not name weights outside the repo (a local ``file``, a ``url``, a ``state_dict``)."""
    cfg = dict(pretrained_cfg.to_dict() if hasattr(pretrained_cfg, "to_dict") else pretrained_cfg or {})
    if cfg.get("source") != "hf-hub":
        return {}
    foreign = {k: cfg[k] for k in _FOREIGN_SOURCES if cfg.get(k)}
    if foreign:
        raise CheckpointError(cfg.get("hf_hub_id"), f"config.json's pretrained_cfg names weights outside the repo "
                              f"({', '.join(f'{k}={v!r}' for k, v in foreign.items())}); refused: a repo's weights "
                              "are its own model.safetensors")
    return {"custom_load": "hf"}


def _create(arch: str, pretrained: bool = False, **kwargs: Any) -> UniQTimmModel:
    variant = f"{TIMM_PREFIX}{arch}"
    if pretrained:
        overlay = {**(kwargs.pop("pretrained_cfg_overlay", None) or {}), **_gate(kwargs.get("pretrained_cfg"))}
        kwargs["pretrained_cfg_overlay"] = overlay or None
    # local-dir loads go through _filter_local_dir, whose load_checked_state_dict is the strict check (a new
    # classifier's tensors are left out there, which timm's own strict load_state_dict would refuse)
    return build_model_with_cfg(UniQTimmModel, variant, pretrained, arch=arch,
                                pretrained_filter_fn=_filter_local_dir, pretrained_strict=False, **kwargs)


def _default_cfg(arch: str) -> dict[str, Any]:
    info = model_info(arch)
    classes = 1000 if info.imagenet else 10  # ImageNet-1k, CIFAR-10
    cfg = UniQConfig(arch=arch, image_size=info.input_size, num_labels=classes).timm_keys()["pretrained_cfg"]
    cfg = {k: v for k, v in cfg.items() if k not in ("hf_hub_filename", "custom_load")}  # no weights by default
    return {**cfg, "input_size": tuple(cfg["input_size"]), "mean": tuple(cfg["mean"]), "std": tuple(cfg["std"]),
            "license": "apache-2.0"}


def _entrypoint(arch: str) -> Any:
    def entry(pretrained: bool = False, **kwargs: Any) -> UniQTimmModel:
        return _create(arch, pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = f"{TIMM_PREFIX}{arch}"
    entry.__module__ = __name__
    entry.__doc__ = f"UniQ {model_info(arch).display_name} (quantization from ``w_bits=``, ``a_bits=`` ...)."
    return entry


default_cfgs = generate_default_cfgs({f"{TIMM_PREFIX}{arch}": _default_cfg(arch) for arch in list_models()})
for _arch in list_models():
    globals()[f"{TIMM_PREFIX}{_arch}"] = register_model(_entrypoint(_arch))
