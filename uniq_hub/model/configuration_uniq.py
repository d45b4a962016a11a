"""``UniQConfig``: a transformers config for UniQ low-bit image classifiers (model_type "uniq").

The quantization fields are :class:`uniq_hub.QuantConfig`'s schema, with its names and checks
(``quantize.check_quant_fields``): 32 means full precision, ``w_bits = a_bits = 32`` is the float
model (no ``quantize_``). Everything is validated on construction and every problem raises a
``ValueError`` that names the field, the value and what was expected. A ``config.json`` written
with older key names (``init``, ``in_chans``) loads under the current ones.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

from transformers import PreTrainedConfig

from .constants import FP_BITS, IMAGENET_MEAN, IMAGENET_STD, MAX_IMAGE_SIZE, MAX_NUM_LABELS, SMALL_IMAGE

# Imported for their side effect: they fill the architecture registry (kept explicit so that
# the copy of this file saved next to a checkpoint, loaded as remote code, sees every arch).
from .mobilenetv2 import mobilenetv2  # noqa: F401
from .preresnet import resnet18  # noqa: F401
from .quantize import LEGACY_NAMES, QUANT_FIELDS, QuantConfig, check_quant_fields, rename_legacy
from .registry import list_models

GRAY_MEAN, GRAY_STD = (0.5,), (0.5,)
TIMM_PREFIX = "uniq_"  # timm model names: uniq_resnet20, ... (uniq_hub.timm_models registers them)


class UniQConfig(PreTrainedConfig):
    r"""Configuration of a :class:`UniQForImageClassification`.

    arch (`str`): a registered architecture (resnet18, resnet34, resnet20, resnet32, mobilenetv2).
    w_bits, a_bits, first_bits, last_bits, method, weight_granularity, step_init, grad_scale,
        binary_fp_layers, signed_inputs, overrides: the quantization schema, shared with
        :class:`uniq_hub.QuantConfig` and the training options (``quantize.QUANT_FIELD_HELP`` says
        what each one means); bit widths 1..8, or 32 for full precision.
    num_channels (`int`): 1 (grayscale) or 3 (RGB) input channels.
    image_size (`int`): side of the square model input.
    crop_pct (`float`): preprocessing resizes the shortest edge to ``image_size / crop_pct`` and
        centre-crops ``image_size`` (ImageNet: 224 / 0.875 = 256). Default 0.875 for inputs of
        at least 128 pixels, 1.0 below.
    image_mean, image_std (`list[float]` or `float`): per-channel normalisation (default: ImageNet
        for RGB, 0.5 / 0.5 for grayscale); a single number applies to every channel, as in image processors.
    num_labels / id2label / label2id / problem_type: as in every transformers classifier. Passed to
        ``from_pretrained``, a ``num_labels`` or ``id2label`` that differs from the saved labels
        replaces them (with ``ignore_mismatched_sizes=True``, for a new classifier).
    architecture, num_classes, label_names, pretrained_cfg, model_args: timm's keys (:meth:`timm_keys`),
        derived from the fields above and written into every ``config.json``; given values are replaced.
    """

    model_type = "uniq"

    arch: str = "resnet18"
    w_bits: int = 2
    a_bits: int = 2
    first_bits: int = 8
    last_bits: int = 8
    method: str = "uniq"
    weight_granularity: str | None = None
    step_init: str | float = "mse"
    grad_scale: bool = True
    binary_fp_layers: bool = True
    signed_inputs: bool = False
    overrides: dict | None = None
    num_channels: int = 3
    image_size: int | None = None
    crop_pct: float | None = None
    image_mean: list | None = None
    image_std: list | None = None
    # timm's keys, which timm.create_model("hf-hub:...") reads from config.json (see timm_keys): derived
    # from the fields above on construction and on every save; values read from a file are replaced.
    architecture: str | None = None
    num_classes: int | None = None
    label_names: list | None = None
    pretrained_cfg: dict | None = None
    model_args: dict | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        self._take_legacy_names(kwargs)
        self._refuse_misspelled_fields(kwargs)
        num_labels = kwargs.get("num_labels")
        if num_labels is not None:
            if isinstance(num_labels, bool) or not isinstance(num_labels, int) or not 1 <= num_labels <= MAX_NUM_LABELS:
                raise ValueError(f"UniQConfig.num_labels must be an int in 1..{MAX_NUM_LABELS}, got {num_labels!r}")
            if self.id2label is not None and len(self.id2label) != num_labels:
                raise ValueError(
                    f"UniQConfig: id2label has {len(self.id2label)} labels but num_labels={num_labels}"
                )
        if self.id2label is not None:
            if not self.id2label:
                raise ValueError("UniQConfig.id2label is empty; a classifier needs at least one label")
            if len(self.id2label) > MAX_NUM_LABELS:
                raise ValueError(f"UniQConfig.id2label has {len(self.id2label)} labels, more than {MAX_NUM_LABELS}")
            try:
                ids = sorted(int(k) for k in self.id2label)
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"UniQConfig.id2label keys must be class indices, got {list(self.id2label)[:5]}") from err
            if ids != list(range(len(ids))):
                raise ValueError(f"UniQConfig.id2label keys must be 0..{len(ids) - 1}, got {ids[:5]}...")
        super().__post_init__(**kwargs)
        if self.label2id is None and self.id2label is not None:
            self.label2id = {label: i for i, label in self.id2label.items()}
        self._validate_and_fill()

    def _refuse_misspelled_fields(self, kwargs: dict[str, Any]) -> None:
        """An unknown key that is a near miss of a field (``abits`` for ``a_bits``) would be kept and
        ignored, the model built with the default instead: refused, naming the field meant."""
        fields = [name for name in vars(type(self)) if not name.startswith("_") and name in self.__annotations__]
        for key in kwargs:
            if key in fields or hasattr(PreTrainedConfig, key):
                continue
            squashed = key.replace("_", "").replace("-", "").lower()
            meant = [f for f in fields if f.replace("_", "") == squashed] or difflib.get_close_matches(key, fields, 1,
                                                                                                      0.85)
            if meant:
                raise ValueError(f"UniQConfig: unknown key {key!r} (did you mean {meant[0]!r}?); it would be ignored "
                                 f"and the model built with {meant[0]}={getattr(self, meant[0])!r}")

    def _take_legacy_names(self, kwargs: dict[str, Any]) -> None:
        """Older key names (``init``, ``in_chans``) set the current field, through ``rename_legacy``; a
        current field counts as given when it differs from its default."""
        legacy = {old: kwargs.pop(old) for old, new in LEGACY_NAMES.items()
                  if old in kwargs and hasattr(type(self), new)}
        given = {new: getattr(self, new) for old, new in LEGACY_NAMES.items()
                 if old in legacy and getattr(self, new) != getattr(type(self), new)}
        for name, value in rename_legacy({**legacy, **given}, "UniQConfig").items():
            setattr(self, name, value)

    def _validate_and_fill(self) -> None:
        if self.arch not in list_models():
            raise ValueError(f"UniQConfig.arch: unknown architecture {self.arch!r}; expected one of {list_models()}")
        checked = check_quant_fields({name: getattr(self, name) for name in QUANT_FIELDS}, "UniQConfig.{}")
        for name, value in checked.items():
            setattr(self, name, value)
        if self.num_channels not in (1, 3) or isinstance(self.num_channels, bool):
            raise ValueError(f"UniQConfig.num_channels must be 1 (grayscale) or 3 (RGB), got {self.num_channels!r}")
        if self.image_size is None:
            self.image_size = 224
        if (isinstance(self.image_size, bool) or not isinstance(self.image_size, int)
                or not 1 <= self.image_size <= MAX_IMAGE_SIZE):
            raise ValueError(f"UniQConfig.image_size must be an int in 1..{MAX_IMAGE_SIZE}, got {self.image_size!r}")
        if self.crop_pct is None:
            self.crop_pct = 0.875 if self.image_size >= SMALL_IMAGE else 1.0
        if isinstance(self.crop_pct, bool) or not isinstance(self.crop_pct, (int, float)) or not 0 < self.crop_pct <= 1:
            raise ValueError(f"UniQConfig.crop_pct must be in (0, 1], got {self.crop_pct!r}")
        rgb = self.num_channels == 3
        self.image_mean = self._checked_stats("image_mean", self.image_mean, IMAGENET_MEAN if rgb else GRAY_MEAN)
        self.image_std = self._checked_stats("image_std", self.image_std, IMAGENET_STD if rgb else GRAY_STD)
        if min(self.image_std) <= 0:
            raise ValueError(f"UniQConfig.image_std must be positive, got {self.image_std}")
        self._fill_timm_keys()

    def _checked_stats(self, name: str, value: Any, default: tuple[float, ...]) -> list[float]:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value] * self.num_channels
        value = list(default if value is None else value)
        if len(value) != self.num_channels or not all(isinstance(v, (int, float)) for v in value):
            raise ValueError(
                f"UniQConfig.{name} must hold {self.num_channels} numbers (one per channel), got {value!r}")
        return [float(v) for v in value]

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> Any:
        """As the base class, but new labels passed as ``id2label`` / ``num_labels`` replace the saved
        ones (the base class would pair a new ``num_labels`` with the old ``id2label``)."""
        config_dict = dict(config_dict)
        if kwargs.get("id2label") is not None:
            config_dict["id2label"] = kwargs.pop("id2label")
            config_dict["label2id"] = kwargs.pop("label2id", None)
        elif kwargs.get("num_labels") is not None and len(config_dict.get("id2label") or ()) != kwargs["num_labels"]:
            config_dict.pop("id2label", None)
            config_dict.pop("label2id", None)
        return super().from_dict(config_dict, **kwargs)

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path: Any, **kwargs: Any) -> tuple[dict, dict]:
        """As the base class, but a missing ``config.json`` or another ``model_type`` is an error
        (the base class would quietly fall back to the defaults)."""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if not config_dict:
            raise OSError(f"{pretrained_model_name_or_path}: no config.json found; a UniQ model needs its config.json")
        if config_dict.get("model_type") != cls.model_type:
            raise ValueError(
                f"{pretrained_model_name_or_path}: config.json has model_type {config_dict.get('model_type')!r}, "
                f"expected {cls.model_type!r}"
            )
        return config_dict, kwargs

    def timm_keys(self) -> dict[str, Any]:
        """The keys timm's Hub loader reads from ``config.json`` (``timm.models._hub``), beside transformers':
        the registered architecture (``uniq_<arch>``, see ``uniq_hub.timm_models``), the classes, the
        preprocessing (``timm.data.resolve_data_config``) and the quantization as ``model_args``; the
        weights are the packed ``model.safetensors``, read by the model's own ``load_pretrained``
        (timm's ``custom_load``)."""
        side = int(self.image_size)
        crop_pct = float(self.crop_pct)
        if math.floor(side / crop_pct) != self.resize_size:  # timm floors side / crop_pct where we round it
            crop_pct = side / (self.resize_size + 1e-6)
        return {
            "architecture": f"{TIMM_PREFIX}{self.arch}",
            "num_classes": self.num_labels,
            "label_names": [str(self.id2label[i]) for i in range(self.num_labels)],
            "model_args": {name: getattr(self, name) for name in QUANT_FIELDS},
            "pretrained_cfg": {
                "input_size": [int(self.num_channels), side, side],
                "interpolation": "bilinear",
                "crop_pct": crop_pct,
                "crop_mode": "center",
                "mean": self._per_channel(self.image_mean),
                "std": self._per_channel(self.image_std),
                "num_classes": self.num_labels,
                "hf_hub_filename": "model.safetensors",
                "custom_load": "hf",
            },
        }

    def _per_channel(self, value: Any) -> list[float]:
        """A float (set after construction, as transformers allows) or a list, as one value per channel."""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return [float(value)] * int(self.num_channels)
        return [float(v) for v in value]

    def _fill_timm_keys(self) -> None:
        for name, value in self.timm_keys().items():
            setattr(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """As the base class, with timm's keys brought up to date (labels may have changed since construction).

        A config saved with remote code (``auto_map``) also names the image processor there: transformers'
        ``AutoImageProcessor`` takes a local folder whose config.json has timm's ``pretrained_cfg`` for a
        timm checkpoint and reads the processor from config.json (``UniQImageProcessor.from_dict`` reads it)."""
        self._fill_timm_keys()
        out = super().to_dict()
        if out.get("auto_map") and "AutoImageProcessor" not in out["auto_map"]:
            ref = "image_processing_uniq.UniQImageProcessor"  # per-backend form, as preprocessor_config.json's
            out["auto_map"] = {**out["auto_map"], "AutoImageProcessor": {"torchvision": ref, "pil": ref}}
        return out

    @property
    def full_precision(self) -> bool:
        return self.w_bits == FP_BITS and self.a_bits == FP_BITS

    @property
    def resize_size(self) -> int:
        """Shortest-edge size before the centre crop (ImageNet: 256 for 224)."""
        return int(round(self.image_size / self.crop_pct))

    def quant_config(self) -> QuantConfig | None:
        """The :class:`QuantConfig` ``quantize_`` applies, or ``None`` for a full-precision model."""
        if self.full_precision:
            return None
        return QuantConfig(**{name: getattr(self, name) for name in QUANT_FIELDS})


UniQConfig.register_for_auto_class()

__all__ = ["FP_BITS", "TIMM_PREFIX", "UniQConfig"]
