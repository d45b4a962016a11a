"""``UniQImageProcessor``: any image in, the model's normalised input out.

Resize the shortest edge to ``size["shortest_edge"]``, centre-crop ``crop_size``, scale to [0, 1],
normalise with ``image_mean`` / ``image_std``: the torchvision backend of transformers does that.
What this class adds is the input side: every PIL mode (1, L, LA, P, PA, RGB, RGBA, CMYK,
YCbCr, I;16*, I, F ...), arrays and tensors of uint8 / uint16 / float, file paths and URLs become
an image with the model's ``num_channels`` (1 or 3) channels (uint8 for 8-bit images going to an
RGB model, so resizing takes torchvision's uint8 path as in transformers; float otherwise).

8-bit PIL modes are converted the way transformers' ``load_image`` (and so ``pipeline``)
converts them, with PIL's ``convert("RGB")``: alpha is dropped, not composited (a transparent
pixel keeps its colour), palettes and CMYK follow PIL. Colour becomes grayscale with ITU-R 601
luma (PIL's integer weights 299/587/114, so an RGB copy of a gray image gives back exactly its
gray), grayscale is repeated to RGB, and 16-bit images are scaled by 255 / 65535 (not clipped).
Images with NaN / infinite pixels or no pixels are refused; URLs are fetched with a timeout
(``fetch_timeout`` seconds). The modes, dtypes and file / URL opening are :mod:`.image_inputs`'s,
shared with the torch-free ONNX classifier.

This is the one preprocessing contract: the training and evaluation transforms of
:mod:`uniq_hub.training.data` are built from it, so ``uniq-hub evaluate``, ``pipeline`` and training see
the same tensor for the same image.

Value ranges (what maps to white): uint8 255; uint16 / int16 and PIL "I;16*" 65535; PIL "I"
and int32 / int64 arrays 65535, or 255 when no value exceeds 255 (``convert("I")`` of an 8-bit
image); float arrays / tensors and PIL "F" 1.0; bool 1.

Note: transformers' ``ImageClassificationPipeline`` converts PIL images and paths to 8-bit RGB
with PIL before any image processor runs (PIL clips 16-bit values there). To keep a 16-bit image's
range through the pipeline, pass it as an array: ``pipe(np.asarray(image))``. The pipeline fetches
URLs itself, with no timeout unless given one: ``pipe(url, timeout=10)``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_utils import ChannelDimension, PILImageResampling, infer_channel_dimension_format
from transformers.processing_utils import ImagesKwargs

from .constants import IMAGENET_MEAN, IMAGENET_STD, MAX_IMAGE_SIZE
from .image_inputs import FETCH_TIMEOUT, LUMA, array_white, normalization, open_image, pil_to_array


class UniQImageProcessorKwargs(ImagesKwargs, total=False):
    """``num_channels``: channels of the model input (1 grayscale, 3 RGB)."""

    num_channels: int | None


def to_image_tensor(image: Any, num_channels: int, input_data_format: Any = None) -> Tensor:
    """Any supported image -> ``(num_channels, H, W)`` tensor in 0..255: ``uint8`` for 8-bit images
    going to an RGB model (resizing then takes torchvision's fast uint8 path, as in every
    transformers processor), else ``float32``.

    Raises ``ValueError`` for an image without pixels or with NaN / infinite pixels."""
    if isinstance(image, Image.Image):
        array, white = pil_to_array(image)
        layout = ChannelDimension.LAST
    else:
        if isinstance(image, Tensor):
            image = image.detach().cpu()
            array = (image.float() if image.dtype == torch.bfloat16 else image).numpy()  # numpy has no bfloat16
        else:
            array = np.asarray(image)
        white, layout = array_white(array), input_data_format
    if array.ndim == 2:
        array, layout = array[None], ChannelDimension.FIRST
    if array.ndim != 3:
        raise ValueError(f"an image must have 2 or 3 dimensions (H, W[, C] or C, H, W), got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"an image must have pixels, got an empty one of shape {array.shape}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError(f"the image holds NaN or infinite pixel values (shape {array.shape})")
    if layout is None:
        layout = infer_channel_dimension_format(array, num_channels=(1, 2, 3, 4))
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:  # PIL's buffers are read-only; a tensor must own writable memory
        array = array.copy()
    x = torch.from_numpy(array)
    if ChannelDimension(layout) == ChannelDimension.LAST:
        x = x.permute(2, 0, 1)
    if x.dtype != torch.uint8:
        x = x.to(torch.float32).clamp(0, white) * (255.0 / white)
    return match_channels(x, num_channels)


def match_channels(x: Tensor, num_channels: int) -> Tensor:
    """``(C, H, W)`` with C in 1 (L), 2 (LA), 3 (RGB), 4 (RGBA), values 0..255 -> ``num_channels``.

    Alpha is dropped, as PIL's ``convert("RGB")`` drops it. RGB output keeps ``uint8``; gray output
    is float (the luma of an RGB image is, and a gray image must give what its RGB copy gives, which
    is what ``pipeline`` feeds the processor)."""
    if x.shape[0] in (2, 4):
        x = x[:-1]
    if x.shape[0] not in (1, 3):
        raise ValueError(f"an image must have 1-4 channels (L, LA, RGB, RGBA), got {x.shape[0]}")
    if num_channels == 3:
        return x.contiguous() if x.shape[0] == 3 else x.expand(3, -1, -1).contiguous()
    x = x.to(torch.float32)
    if x.shape[0] == 1:
        return x.contiguous()
    return (torch.tensordot(torch.tensor(LUMA, dtype=x.dtype), x, dims=1) / 1000.0)[None]


def processor_fields(config: Any) -> dict[str, Any]:
    """The processor settings a model config (``UniQConfig`` or its ``config.json`` dict) describes."""
    get = config.get if isinstance(config, dict) else lambda name: getattr(config, name)
    side = int(get("image_size"))
    channels = int(get("num_channels"))

    def per_channel(value: Any) -> list[float]:  # a float or a list, as transformers allows
        return [value] * channels if isinstance(value, (int, float)) and not isinstance(value, bool) else list(value)

    return {
        "size": {"shortest_edge": int(round(side / get("crop_pct")))},
        "crop_size": {"height": side, "width": side},
        "image_mean": per_channel(get("image_mean")),
        "image_std": per_channel(get("image_std")),
        "num_channels": channels,
    }


class UniQImageProcessor(TorchvisionBackend):
    """Resize, centre-crop and normalise images of any mode for a UniQ classifier."""

    valid_kwargs = UniQImageProcessorKwargs
    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BILINEAR
    size = {"shortest_edge": 256}
    crop_size = {"height": 224, "width": 224}
    image_mean = IMAGENET_MEAN
    image_std = IMAGENET_STD
    do_resize = True
    do_center_crop = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = False  # channel conversion is ``num_channels``'s job
    num_channels = 3
    fetch_timeout = FETCH_TIMEOUT

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.num_channels not in (1, 3):
            raise ValueError(f"UniQImageProcessor.num_channels must be 1 or 3, got {self.num_channels!r}")
        per_channel = normalization(self.image_mean, self.image_std, self.num_channels, "UniQImageProcessor")
        for name, values in zip(("image_mean", "image_std"), per_channel):  # a number: one for every channel
            if isinstance(getattr(self, name), (int, float)):
                setattr(self, name, values)
        sides = {"size.shortest_edge": getattr(self.size, "shortest_edge", None),
                 "crop_size.height": getattr(self.crop_size, "height", None),
                 "crop_size.width": getattr(self.crop_size, "width", None)}
        for name, side in sides.items():  # refused before an image of that size is ever allocated
            if side is not None and not (isinstance(side, int) and 1 <= side <= MAX_IMAGE_SIZE):
                raise ValueError(f"UniQImageProcessor.{name} must be in 1..{MAX_IMAGE_SIZE} pixels, got {side!r}")

    @classmethod
    def from_model_config(cls, config: Any) -> "UniQImageProcessor":
        """The processor a ``UniQConfig`` describes (sizes, channels, mean / std)."""
        return cls(**processor_fields(config))

    @classmethod
    def from_dict(cls, image_processor_dict: dict[str, Any], **kwargs: Any) -> Any:
        """As the base class; a model ``config.json`` (model_type "uniq") gives the processor it describes.

        transformers' ``AutoImageProcessor`` (and so ``pipeline``) reads a local folder's ``config.json``
        instead of its ``preprocessor_config.json`` when the config carries timm's ``pretrained_cfg``
        (it takes the folder for a timm checkpoint); every UniQ config.json carries it (timm loading)."""
        if image_processor_dict.get("model_type") == "uniq":
            image_processor_dict = processor_fields(image_processor_dict)
        return super().from_dict(image_processor_dict, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """As the base class, with ``auto_map`` in its per-backend form.

        ``{"AutoImageProcessor": {"torchvision": ref, "pil": ref}}`` loads the same class as the plain
        string form. The string form makes ``pipeline()`` (which also probes for a video processor
        and derives ``UniQVideoProcessor`` from that string) stop and ask on stdin whether to
        trust remote code, even when uniq_hub is imported; the per-backend form does not.
        """
        out = super().to_dict()
        auto_map = out.get("auto_map") or {}
        ref = auto_map.get("AutoImageProcessor")
        if isinstance(ref, str):
            out["auto_map"] = {**auto_map, "AutoImageProcessor": {"torchvision": ref, "pil": ref}}
        return out

    def fetch_images(self, images: Any) -> Any:
        """Open paths with PIL (keeping their mode), fetch URLs (with ``fetch_timeout``); pass images through."""
        if isinstance(images, (list, tuple)):
            return [self.fetch_images(x) for x in images]
        if isinstance(images, (str, os.PathLike)):
            return open_image(images, self.fetch_timeout)
        return images

    def _prepare_images_structure(self, images: Any, expected_ndims: int = 3) -> list[Any]:
        """A flat list of images; unlike the base class, 2-D arrays (H, W) count as one image.

        An array with 2 or 3 dimensions is one image, with 4 a batch; lists may nest one level.
        """
        def flatten(item: Any, depth: int) -> list[Any]:
            if isinstance(item, Image.Image):
                return [item]
            if isinstance(item, (np.ndarray, Tensor)):
                if item.ndim in (2, 3):
                    return [item]
                if item.ndim == 4:
                    return list(item)
                raise ValueError(
                    f"an image array must have 2, 3 or 4 (batch) dimensions, got shape {tuple(item.shape)}")
            if isinstance(item, (list, tuple)) and depth < 2:
                return [img for x in item for img in flatten(x, depth + 1)]
            raise ValueError(
                f"expected an image (PIL image, numpy array, torch tensor or file path) or a list of them, "
                f"got {type(item).__name__}"
            )

        flat = flatten(self.fetch_images(images), 0)
        if not flat:
            raise ValueError("no images given: expected an image or a non-empty list of images")
        return flat

    def _prepare_image_like_inputs(self, images: Any, *args: Any, **kwargs: Any) -> list[Any]:
        """As the base class; a batch mixing uint8 and float images is all float (they are stacked)."""
        prepared = super()._prepare_image_like_inputs(images, *args, **kwargs)
        if isinstance(prepared, list) and len({getattr(x, "dtype", None) for x in prepared}) > 1:
            prepared = [x.to(torch.float32) for x in prepared]
        return prepared

    def process_image(
        self, image: Any, num_channels: int | None = None, input_data_format: Any = None,
        device: Any = None, **kwargs: Any,
    ) -> Tensor:
        out = to_image_tensor(image, num_channels or self.num_channels, input_data_format)
        return out if device is None else out.to(device)


UniQImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = [
    "UniQImageProcessor", "match_channels", "processor_fields", "to_image_tensor",
]
