"""uniq_hub: UniQ low-bit image classifiers for the Hugging Face Hub."""

from . import mobilenetv2, preresnet  # noqa: F401  (register the architectures)
from .calibrate import calibrate
from .modules import QConv2d, QLinear, QuantSpec, UniQQuantizer
from .quantize import QuantConfig, layer_bits, quantize_, quantizers
from .registry import create_model, list_models

__all__ = [
    "QConv2d", "QLinear", "QuantConfig", "QuantSpec", "UniQQuantizer",
    "calibrate", "create_model", "layer_bits", "list_models", "quantize_", "quantizers",
]
