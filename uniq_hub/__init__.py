"""uniq_hub: UniQ low-bit image classifiers for the Hugging Face Hub.

``import uniq_hub`` registers model_type "uniq" with the transformers auto classes (AutoConfig,
AutoModel, AutoModelForImageClassification, AutoImageProcessor) and, when timm is installed, the UniQ
architectures with timm (``uniq_resnet20`` ..., :mod:`uniq_hub.timm_models`), so that ``from_pretrained``,
``pipeline`` and ``timm.create_model("hf-hub:...")`` load UniQ repos. Where torch or transformers cannot
be imported (the deployment runtime: numpy, PIL and an ONNX backend), registration is skipped and the
torch-free ``uniq_hub.OnnxImageClassifier`` (``uniq_hub.deploy.onnx_runtime``) works alone. Public names
are imported on first use; reading one has no other effect.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> submodule that defines it
_EXPORTS = {
    "QConv2d": "model.modules", "QLinear": "model.modules", "QuantSpec": "model.modules",
    "UniQQuantizer": "model.modules", "QuantConfig": "model.quantize", "layer_bits": "model.quantize",
    "quantize_": "model.quantize", "quantizers": "model.quantize", "create_model": "model.registry",
    "list_models": "model.registry", "UniQConfig": "model.configuration_uniq",
    "UniQImageProcessor": "model.image_processing_uniq", "UniQForImageClassification": "model.modeling_uniq",
    "UniQModel": "model.modeling_uniq", "CheckpointError": "model.packing",
    "ClassifierMismatchError": "model.files",
    "calibrate": "training.calibrate", "reestimate_batchnorm": "training.calibrate", "imagenet_id2label": "labels",
    "export_onnx": "deploy.onnx_export", "OnnxImageClassifier": "deploy.onnx_runtime",
}
__all__ = sorted(_EXPORTS)
_state = {"registered": False, "timm": False}


def register_auto_classes() -> None:
    """Register model_type "uniq" with the transformers auto classes (idempotent)."""
    if _state["registered"]:
        return
    _state["registered"] = True
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

    from .model import mobilenetv2, preresnet  # noqa: F401  (register the architectures)
    from .model.configuration_uniq import UniQConfig
    from .model.image_processing_uniq import UniQImageProcessor
    from .model.modeling_uniq import UniQForImageClassification, UniQModel

    AutoConfig.register(UniQConfig.model_type, UniQConfig, exist_ok=True)
    AutoModelForImageClassification.register(UniQConfig, UniQForImageClassification, exist_ok=True)
    AutoModel.register(UniQConfig, UniQModel, exist_ok=True)
    AutoImageProcessor.register(UniQConfig, image_processor_classes={"torchvision": UniQImageProcessor}, exist_ok=True)


def register_timm_models() -> None:
    """Register the UniQ architectures with timm's model registry (idempotent; see uniq_hub.timm_models)."""
    if _state["timm"]:
        return
    _state["timm"] = True
    register_auto_classes()
    importlib.import_module(".timm_models", __name__)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'uniq_hub' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


# Explicit registration, once, at import: skipped only where the libraries cannot be imported.
if _importable("torch") and _importable("transformers"):
    register_auto_classes()
    if _importable("timm"):
        register_timm_models()
