"""uniq_hub: UniQ low-bit image classifiers for the Hugging Face Hub.

Names are imported on first use (``uniq_hub.quantize_`` ...), so that the torch-free deployment
runtime (``uniq_hub.OnnxImageClassifier``, ``uniq_hub.deploy.onnx_runtime``) never imports torch.
The transformers auto classes (AutoConfig, AutoModelForImageClassification, AutoImageProcessor)
learn model_type "uniq" as soon as both uniq_hub and transformers are imported, in either order:
``import uniq_hub`` is all ``from_pretrained`` / ``pipeline`` need. Likewise timm learns the UniQ
architectures (``uniq_resnet20`` ..., :mod:`uniq_hub.timm_models`) once both uniq_hub and timm are imported,
so that ``timm.create_model("hf-hub:...")`` loads UniQ repos.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from typing import Any

# public name -> submodule that defines it
_EXPORTS = {
    "QConv2d": "model.modules", "QLinear": "model.modules", "QuantSpec": "model.modules",
    "UniQQuantizer": "model.modules", "QuantConfig": "model.quantize", "layer_bits": "model.quantize",
    "quantize_": "model.quantize", "quantizers": "model.quantize", "create_model": "model.registry",
    "list_models": "model.registry", "UniQConfig": "model.configuration_uniq",
    "UniQImageProcessor": "model.image_processing_uniq", "UniQForImageClassification": "model.modeling_uniq",
    "UniQModel": "model.modeling_uniq", "CheckpointError": "model.packing",
    "calibrate": "training.calibrate", "reestimate_batchnorm": "training.calibrate", "imagenet_id2label": "labels",
    "export_onnx": "deploy.onnx_export", "OnnxImageClassifier": "deploy.onnx_runtime",
}
_TORCH_FREE = {"deploy.onnx_runtime"}
__all__ = sorted(_EXPORTS)
_state = {"registered": False, "timm": False}
_WATCHED = ("transformers", "timm")  # registration follows the import of these (see _register_when_ready)


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
    _drop_hook_when_done()


def register_timm_models() -> None:
    """Register the UniQ architectures with timm's model registry (idempotent; see uniq_hub.timm_models)."""
    if _state["timm"]:
        return
    _state["timm"] = True
    register_auto_classes()
    importlib.import_module(".timm_models", __name__)
    _drop_hook_when_done()


def _drop_hook_when_done() -> None:
    if _state["registered"] and _state["timm"] and _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'uniq_hub' has no attribute {name!r}")
    if module not in _TORCH_FREE:
        register_auto_classes()
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


def _initializing(name: str) -> bool:
    spec = getattr(sys.modules.get(name), "__spec__", None)
    return bool(getattr(spec, "_initializing", False))


def _register_when_ready(just_loaded: str) -> None:
    """Register once transformers (timm) is imported and no uniq_hub module is half-initialised
    (registering from inside a uniq_hub module's own import would be a circular import)."""
    flags = {"transformers": "registered", "timm": "timm"}
    todo = [m for m, flag in flags.items() if m in sys.modules and not _state[flag]]
    if not todo:
        return
    busy = [n for n in list(sys.modules) if (n in _WATCHED or n.startswith(__name__ + ".")) and n != just_loaded]
    if not any(_initializing(n) for n in busy) and not _initializing(__name__):
        register_auto_classes()
        if "timm" in todo:
            register_timm_models()


class _Loader(importlib.abc.Loader):
    """Wraps a loader: after the module executes, registers the auto classes when ready."""

    def __init__(self, loader: Any, name: str) -> None:
        self._loader, self._name = loader, name

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._loader, attr)

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        _register_when_ready(self._name)


class _AfterImportHook(importlib.abc.MetaPathFinder):
    """Watches the imports of transformers, timm and uniq_hub's modules (see register_auto_classes)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name not in _WATCHED and not name.startswith(__name__ + "."):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader, name)
                return spec
        return None


_HOOK = _AfterImportHook()
sys.meta_path.insert(0, _HOOK)
if "transformers" in sys.modules:
    register_auto_classes()
if "timm" in sys.modules:
    register_timm_models()
