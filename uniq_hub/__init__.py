"""uniq_hub: UniQ low-bit image classifiers for the Hugging Face Hub."""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

from . import mobilenetv2, preresnet  # noqa: F401  (register the architectures)
from .calibrate import calibrate
from .modules import QConv2d, QLinear, QuantSpec, UniQQuantizer
from .quantize import QuantConfig, layer_bits, quantize_, quantizers
from .registry import create_model, list_models

# Hugging Face classes, registered with the auto classes (AutoConfig, AutoModelForImageClassification,
# AutoImageProcessor) so that from_pretrained / pipeline resolve model_type "uniq" without remote code.
from .configuration_uniq import UniQConfig
from .image_processing_uniq import UniQImageProcessor
from .labels import imagenet_id2label
from .modeling_uniq import UniQForImageClassification, UniQModel
from .packing import CheckpointError

AutoConfig.register(UniQConfig.model_type, UniQConfig, exist_ok=True)
AutoModelForImageClassification.register(UniQConfig, UniQForImageClassification, exist_ok=True)
AutoModel.register(UniQConfig, UniQModel, exist_ok=True)
AutoImageProcessor.register(UniQConfig, image_processor_classes={"torchvision": UniQImageProcessor}, exist_ok=True)

__all__ = [
    "QConv2d", "QLinear", "QuantConfig", "QuantSpec", "UniQQuantizer",
    "calibrate", "create_model", "layer_bits", "list_models", "quantize_", "quantizers",
    "CheckpointError", "UniQConfig", "UniQForImageClassification", "UniQImageProcessor", "UniQModel", "imagenet_id2label",
]
