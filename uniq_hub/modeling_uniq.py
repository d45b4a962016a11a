"""``UniQForImageClassification``: a quantized architecture from the registry as a transformers model.

* ``model.model`` is the architecture after ``quantize_`` (state-dict keys ``model.<layer>...``).
* ``save_pretrained`` / ``push_to_hub`` write the packed release format (see ``packing.py``) plus
  ``config.json``, ``preprocessor_config.json`` and this code (``auto_map``, for
  ``trust_remote_code``); ``save_pretrained(..., packed=False)`` keeps the latent float weights.
* ``from_pretrained`` reads both formats from safetensors only (never pickle), checks every key,
  shape and dtype against the config, verifies the checksum, and loads strictly.
* ``_init_weights`` is a no-op: a new model is initialised by its architecture and ``quantize_``,
  and a loaded one gets every tensor from its file (a missing tensor is an error, never a silent
  re-initialisation), so reloading is bit-exact.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import Tensor
from transformers import PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutputWithNoAttention

from .configuration_uniq import UniQConfig
from .image_processing_uniq import UniQImageProcessor

# Imported for their side effect: they fill the architecture registry (this file also runs as
# remote code, without uniq_hub's __init__).
from .mobilenetv2 import mobilenetv2  # noqa: F401
from .packing import PACKED_SUFFIX, CheckpointError, expected_layout, is_packed, pack_state_dict, unpack_state_dict
from .preresnet import resnet18  # noqa: F401
from .quantize import quantize_
from .registry import create_model

CHECKSUM_KEY = "uniq_hub.sha256"  # uint8[32]: sha256 over every other tensor (see state_dict_checksum)
_PREFIX = "model."


def state_dict_checksum(state: Mapping[str, Tensor]) -> Tensor:
    """sha256 over the sorted keys, dtypes, shapes and bytes of every tensor but the checksum."""
    digest = hashlib.sha256()
    for key in sorted(k for k in state if k != CHECKSUM_KEY):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{str(tensor.dtype).removeprefix('torch.')}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return torch.frombuffer(bytearray(digest.digest()), dtype=torch.uint8)


def read_safetensors(files: Iterable[str | os.PathLike]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors of safetensors files and the file each key came from; unreadable files raise
    :class:`CheckpointError` naming the file; other formats (pickle) are refused."""
    state: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    for path in map(os.fspath, files):
        if not path.endswith(".safetensors"):
            raise CheckpointError(path, "UniQ checkpoints are read from safetensors only (pickle files are refused)")
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                for key in f.keys():
                    state[key] = f.get_tensor(key)
                    origin[key] = path
        except FileNotFoundError as err:
            raise CheckpointError(path, "file not found") from err
        except Exception as err:  # safetensors raises its own error type for every format problem
            raise CheckpointError(path, f"not a valid safetensors file (truncated or corrupted?): {err}") from err
    return state, origin


class UniQForImageClassification(PreTrainedModel):
    """A UniQ low-bit image classifier: ``forward(pixel_values, labels=None)``."""

    config_class = UniQConfig
    config: UniQConfig
    base_model_prefix = "uniq"
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def __init__(self, config: UniQConfig) -> None:
        super().__init__(config)
        self.model = create_model(config.arch, num_classes=config.num_labels, in_chans=config.in_chans)
        quant_config = config.quant_config()
        if quant_config is not None:
            quantize_(self.model, quant_config)
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        """No-op on purpose (see the module docstring): nothing is ever re-initialised."""

    def forward(
        self, pixel_values: Tensor, labels: Tensor | None = None, return_dict: bool | None = None, **kwargs: Any
    ) -> ImageClassifierOutputWithNoAttention | tuple:
        if pixel_values.dim() != 4 or pixel_values.shape[1] != self.config.in_chans:
            raise ValueError(
                f"pixel_values must have shape (batch, {self.config.in_chans}, height, width), "
                f"got {tuple(pixel_values.shape)}"
            )
        logits = self.model(pixel_values)
        loss = None if labels is None else F.cross_entropy(logits, labels.to(logits.device).view(-1))
        if return_dict is False or return_dict is None and not self.config.return_dict:
            return (logits,) if loss is None else (loss, logits)
        return ImageClassifierOutputWithNoAttention(loss=loss, logits=logits)

    # ------------------------------------------------------------------------------------------
    # Saving
    # ------------------------------------------------------------------------------------------

    def packed_state_dict(self) -> dict[str, Tensor]:
        """The release state dict: packed codes for quantized weights, every other tensor as is."""
        return pack_state_dict(self.model, prefix=_PREFIX)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        is_main_process: bool = True,
        state_dict: dict | None = None,
        push_to_hub: bool = False,
        *,
        packed: bool | None = None,
        save_image_processor: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Save config, code, weights and preprocessor config.

        ``packed`` (default ``True``, or what ``push_to_hub(packed=...)`` asked): write the release
        format (packed low-bit codes); ``False`` keeps the latent float weights (training
        checkpoints). ``save_image_processor`` also writes ``preprocessor_config.json`` derived
        from the config. Other arguments are ``PreTrainedModel.save_pretrained``'s.
        """
        packed = getattr(self, "_uniq_push_packed", True) if packed is None else packed
        if push_to_hub:  # save here, then upload through push_to_hub so every file goes up
            hub_keys = ("repo_id", "commit_message", "commit_description", "private", "token", "revision", "create_pr")
            hub = {k: kwargs.pop(k) for k in hub_keys if k in kwargs}
            self.save_pretrained(
                save_directory, is_main_process, state_dict, packed=packed,
                save_image_processor=save_image_processor, **kwargs,
            )
            if not is_main_process:
                return None
            repo_id = hub.pop("repo_id", os.path.basename(os.path.normpath(save_directory)))
            return self.push_to_hub(repo_id, packed=packed, max_shard_size=kwargs.get("max_shard_size", "50GB"), **hub)
        if state_dict is None:
            state_dict = self.packed_state_dict() if packed else dict(self.state_dict())
            state_dict[CHECKSUM_KEY] = state_dict_checksum(state_dict)
        if is_main_process and save_image_processor:
            os.makedirs(save_directory, exist_ok=True)
            UniQImageProcessor.from_model_config(self.config).save_pretrained(save_directory)
        return super().save_pretrained(save_directory, is_main_process, state_dict, False, **kwargs)

    def push_to_hub(self, *args: Any, packed: bool = True, **kwargs: Any) -> Any:
        """``PreTrainedModel.push_to_hub``, uploading the release format unless ``packed=False``."""
        self._uniq_push_packed = packed
        try:
            return super().push_to_hub(*args, **kwargs)
        finally:
            del self._uniq_push_packed

    # ------------------------------------------------------------------------------------------
    # Loading
    # ------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> Any:
        """``PreTrainedModel.from_pretrained`` restricted to safetensors, loading both formats strictly."""
        if kwargs.get("use_safetensors") is False:
            raise ValueError("UniQ checkpoints are safetensors only; use_safetensors=False (pickle) is refused")
        if kwargs.get("gguf_file"):
            raise ValueError("UniQ checkpoints are safetensors only; gguf files are not supported")
        kwargs["use_safetensors"] = True
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @staticmethod
    def _load_pretrained_model(model, state_dict, checkpoint_files, load_config, expected_keys=None):  # noqa: ANN001
        """Read the files ourselves (safetensors only), unpack, check, then hand over a full state dict."""
        if state_dict is None:
            state_dict, origin = read_safetensors(checkpoint_files or [])
            where = os.fspath(checkpoint_files[0]) if checkpoint_files and len(checkpoint_files) == 1 else None
        else:
            state_dict, origin, where = dict(state_dict), {}, "<state_dict>"
        where = where or ", ".join(sorted(set(origin.values())))
        state_dict = load_checked_state_dict(model, state_dict, where)
        return PreTrainedModel._load_pretrained_model(model, state_dict, None, load_config, expected_keys)


def load_checked_state_dict(
    model: UniQForImageClassification, state: dict[str, Tensor], path: str | None
) -> dict[str, Tensor]:
    """Verify the checksum, check every key / shape / dtype against ``model``, unpack if packed."""
    if not state:
        raise CheckpointError(path, "the checkpoint holds no tensors")
    checksum = state.pop(CHECKSUM_KEY, None)
    if checksum is not None and not torch.equal(checksum, state_dict_checksum(state)):
        raise CheckpointError(path, "checksum mismatch: the tensor data is corrupted (sha256 differs from the stored one)")
    packed = is_packed(state)
    layout = expected_layout(model.model, _PREFIX, packed)
    config = model.config
    what = f"arch={config.arch}, w_bits={config.w_bits}, a_bits={config.a_bits}, num_labels={config.num_labels}"
    missing, unexpected = sorted(set(layout) - set(state)), sorted(set(state) - set(layout))
    if missing or unexpected:
        problems = [f"{'packed' if packed else 'latent'} checkpoint"]
        if missing:
            problems.append(f"{len(missing)} tensors the model needs are missing (e.g. {missing[:3]})")
        if unexpected:
            problems.append(f"{len(unexpected)} tensors are not part of the model (e.g. {unexpected[:3]})")
        raise CheckpointError(path, f"{'; '.join(problems)}; does the file belong to this config.json ({what})?")
    for key, (shape, dtype) in layout.items():
        got = state[key]
        if key.endswith(PACKED_SUFFIX):
            continue  # byte counts are checked by unpacking, after the plain tensors
        if tuple(got.shape) != shape:
            raise CheckpointError(path, f"{key!r} has shape {tuple(got.shape)} but the config ({what}) builds {shape}")
        if got.dtype != dtype and not (got.is_floating_point() and dtype.is_floating_point):
            raise CheckpointError(path, f"{key!r} has dtype {got.dtype}, expected {dtype}")
        if got.is_floating_point() and not torch.isfinite(got).all():
            raise CheckpointError(path, f"{key!r} holds NaN or infinite values")
    return unpack_state_dict(state, model.model, prefix=_PREFIX, path=path) if packed else state


UniQForImageClassification.register_for_auto_class("AutoModelForImageClassification")

__all__ = ["CHECKSUM_KEY", "UniQForImageClassification", "load_checked_state_dict", "read_safetensors"]
