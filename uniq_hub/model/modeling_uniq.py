"""The transformers models: ``UniQForImageClassification`` and the base model ``UniQModel``.

* ``model.model`` is a registered architecture after ``quantize_`` (state-dict keys ``model.<layer>...``);
  ``UniQModel`` is the same network without its classifier (pooled features, for retrieval or a
  custom head), and ``AutoModel.from_pretrained(<classifier folder>)`` loads it from a classifier.
* ``save_pretrained`` / ``push_to_hub`` write the packed release format (see ``packing.py``) plus
  ``config.json``, ``preprocessor_config.json`` and this code (``auto_map`` for both auto classes,
  for ``trust_remote_code``); ``save_pretrained(..., packed=False)`` keeps the latent float weights.
  The exact ONNX graph is the deployment tooling's (``uniq_hub.export_onnx`` after saving); a graph
  left in the folder is removed when the weights saved there change.
* ``from_pretrained`` reads both formats from safetensors only (never pickle), checks every key,
  shape and dtype against the config, verifies the checksum, and loads strictly: a missing tensor
  is an error, never a silent re-initialisation, so reloading is bit-exact. The one exception is
  asked for: ``ignore_mismatched_sizes=True`` with new labels (``num_labels`` / ``id2label``)
  re-initialises the classifier (its quantizers at the config's bits, ready for calibration).
  The checked, unpacked tensors go through transformers' documented ``state_dict=`` path.
* ``_init_weights`` initialises every parameter and buffer as a new model is (the architecture's
  ``init_module``, BatchNorm, weight steps from the weights, activation steps uncalibrated) with
  transformers' guarded init functions, which leave loaded tensors alone: meta-device
  construction followed by ``init_weights()`` gives a complete model.
"""

from __future__ import annotations

import copy
import inspect
import logging
import os
import tempfile
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention, ImageClassifierOutputWithNoAttention

from .configuration_uniq import UniQConfig
from .constants import ONNX_FILE
from .files import read_checksum
from .image_processing_uniq import UniQImageProcessor
from .loading import HUB_KWARGS, LOADER_KWARGS, PREFIX, checkpoint_files, load_checked_state_dict

# Imported for their side effect: they fill the architecture registry (this file also runs as
# remote code, without uniq_hub's __init__).
from .mobilenetv2 import mobilenetv2  # noqa: F401
from .modules import UniQQuantizer
from .packing import (
    CHECKSUM_KEY,
    check_header,
    pack_state_dict,
    read_safetensors,
    record_computation,
    state_dict_checksum,
)
from .preresnet import resnet18  # noqa: F401
from .quantize import quantize_
from .registry import create_model

logger = logging.getLogger(__name__)
# Written into every saved config.json, so that the remote code serves both auto classes.
AUTO_MAP = {
    "AutoModel": "modeling_uniq.UniQModel",
    "AutoModelForImageClassification": "modeling_uniq.UniQForImageClassification",
}


def build_architecture(config: UniQConfig) -> nn.Module:
    """The registered architecture of ``config``, after ``quantize_`` unless full precision."""
    arch = create_model(config.arch, num_classes=config.num_labels, num_channels=config.num_channels)
    quant_config = config.quant_config()
    if quant_config is not None:
        quantize_(arch, quant_config)
    return arch


@contextmanager
def collect_hidden_states(arch: nn.Module, enabled: bool) -> Iterator[list[Tensor] | None]:
    """While active, the outputs of ``arch.feature_layers`` (stem, then each stage) in forward order."""
    if not enabled:
        yield None
        return
    outputs: list[Tensor] = []
    hooks = [
        arch.get_submodule(name).register_forward_hook(lambda _module, _args, output: outputs.append(output))
        for name in arch.feature_layers
    ]
    try:
        yield outputs
    finally:
        for hook in hooks:
            hook.remove()


class UniQPreTrainedModel(PreTrainedModel):
    """What both UniQ models share: weight init, the packed release format and strict loading."""

    config_class = UniQConfig
    config: UniQConfig
    base_model_prefix = "model"  # the architecture; its keys are ``model.<layer>`` in both classes
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    accepts_loss_kwargs = False  # the loss is a plain mean (as ConvNext): the Trainer scales it for accumulation

    # ------------------------------------------------------------------------------------------
    # Forward helpers
    # ------------------------------------------------------------------------------------------

    def _check_inputs(self, pixel_values: Tensor) -> Tensor:
        """``pixel_values`` checked (shape, not empty, float, finite at inference) and cast to the weights' dtype."""
        if torch.jit.is_tracing():
            raise RuntimeError(
                "torch.jit.trace is not supported for UniQ models (TorchScript is deprecated, and the quantizers' "
                "custom autograd functions and weight cache do not trace); use torch.export.export(model, "
                "(pixel_values,)) instead, or the exact ONNX export (uniq_hub.export_onnx)"
            )
        if pixel_values.dim() != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values must have shape (batch, {self.config.num_channels}, height, width), "
                f"got {tuple(pixel_values.shape)}"
            )
        if pixel_values.numel() == 0:
            raise ValueError(f"pixel_values is empty (shape {tuple(pixel_values.shape)}): no images to classify")
        if not pixel_values.is_floating_point():
            raise ValueError(f"pixel_values must be a floating-point tensor (the image processor's output), "
                             f"got {pixel_values.dtype}")
        if not (self.training or torch.compiler.is_compiling()) and not torch.isfinite(pixel_values).all():
            raise ValueError("pixel_values holds NaN or infinite values")
        return pixel_values.to(self.dtype)

    def _flags(self, output_hidden_states: bool | None, return_dict: bool | None) -> tuple[bool, bool]:
        config = self.config
        return (
            config.output_hidden_states if output_hidden_states is None else output_hidden_states,
            config.return_dict if return_dict is None else return_dict,
        )

    # ------------------------------------------------------------------------------------------
    # Initialisation
    # ------------------------------------------------------------------------------------------

    def _init_weights(self, module: nn.Module) -> None:
        """Initialise ``module`` as a new model is; transformers calls it bottom-up (children first).

        Only transformers' guarded init functions write, so a tensor loaded from a checkpoint
        (flagged ``_is_hf_initialized``) is never changed.
        """
        if isinstance(module, UniQQuantizer):  # as constructed: uncalibrated
            init.constant_(module.step, 1.0 if isinstance(module.spec.step_init, str) else module.spec.step_init)
            init.zeros_(module.initialized)
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            self.model.init_module(module)
            quantizer = getattr(module, "weight_quantizer", None)
            if quantizer is not None:  # weight steps come from the weights, as quantize_ sets them
                init.copy_(quantizer.step, quantizer.estimate_step(module.weight))
                init.ones_(quantizer.initialized)
        else:
            super()._init_weights(module)  # BatchNorm: weight 1, bias 0, running statistics 0 / 1

    # ------------------------------------------------------------------------------------------
    # Saving
    # ------------------------------------------------------------------------------------------

    def packed_state_dict(self) -> dict[str, Tensor]:
        """The release state dict: packed codes for quantized weights, every other tensor as is."""
        return pack_state_dict(self.model, prefix=PREFIX)

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
        from the config. An ``onnx/model.onnx`` already in the folder is kept only when the weights
        saved are the ones it was beside (same checksum), else removed with a warning to re-export
        it (:func:`drop_stale_graph`). Other arguments are ``PreTrainedModel.save_pretrained``'s.
        """
        packed = True if packed is None else packed
        if push_to_hub:  # save here, then upload the release through push_to_hub (its own arguments go there)
            hub = {k: kwargs.pop(k) for k in _PUSH_ARGUMENTS if k in kwargs}
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
        graph = is_main_process and os.path.lexists(os.path.join(save_directory, ONNX_FILE))
        before = stored_checksum(save_directory) if graph else None
        # read before saving: transformers empties the state dict as it writes the shards
        saved = bytes(state_dict[CHECKSUM_KEY].tolist()) if graph and CHECKSUM_KEY in state_dict else None
        if is_main_process and save_image_processor:
            os.makedirs(save_directory, exist_ok=True)
            UniQImageProcessor.from_model_config(self.config).save_pretrained(save_directory)
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **AUTO_MAP}
        out = super().save_pretrained(save_directory, is_main_process, state_dict, False, **kwargs)
        if is_main_process:  # bits, method, granularity, policy into the safetensors metadata (packing.py)
            record_computation(save_directory, self.config, self.model)
            drop_stale_graph(save_directory, before, saved)
        return out

    def push_to_hub(
        self,
        repo_id: str,
        *,
        packed: bool = True,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: bool | str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str | None = "50GB",
        tags: list[str] | None = None,
    ) -> Any:
        """``PreTrainedModel.push_to_hub``'s arguments and steps (create the repo, its tagged model card,
        upload the saved folder), saving the release format unless ``packed=False``: transformers' own saves
        through a ``save_pretrained`` call that cannot say ``packed``. Returns the commit info."""
        from huggingface_hub import HfApi
        from transformers.utils.hub import create_and_tag_model_card

        api = HfApi(token=token if isinstance(token, str) else None)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        card = create_and_tag_model_card(repo_id, tags, token=token if isinstance(token, str) else None)
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, packed=packed, max_shard_size=max_shard_size)
            card.save(os.path.join(tmp, "README.md"))
            return api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message or "Upload model",
                                     commit_description=commit_description, revision=revision, create_pr=create_pr)

    # ------------------------------------------------------------------------------------------
    # Loading
    # ------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *model_args: Any, **kwargs: Any) -> Any:
        """``PreTrainedModel.from_pretrained`` restricted to safetensors, loading both formats strictly.

        The config and the weight files are resolved here (a folder, or the Hub with ``cache_dir``,
        ``revision``, ``token`` ...), every file is checked from its header, read, checked against
        the config and unpacked (:func:`load_checked_state_dict`); transformers then builds the model
        from the config and loads these tensors (its documented ``state_dict=`` path, which also
        serves ``dtype``, ``device_map`` and ``output_loading_info``). New labels (``num_labels=`` /
        ``id2label=``) need ``ignore_mismatched_sizes=True``: the classifier is then re-initialised
        and everything else loads exactly.
        """
        if kwargs.get("use_safetensors") is False:
            raise ValueError("UniQ checkpoints are safetensors only; use_safetensors=False (pickle) is refused")
        for key in ("gguf_file", "variant"):
            if kwargs.get(key):
                raise ValueError(f"UniQ checkpoints are model.safetensors (or its shards) only; no {key}=")
        name, state = pretrained_model_name_or_path, kwargs.pop("state_dict", None)
        if state is not None and name is not None:
            raise ValueError("`state_dict` cannot be passed together with a model name; pass None as the name")
        kwargs.pop("use_safetensors", None)
        hub = {key: kwargs.pop(key) for key in HUB_KWARGS if key in kwargs}
        config = kwargs.pop("config", None)
        if not isinstance(config, PreTrainedConfig):  # as transformers: config overrides (num_labels=...) apply
            loader = {key: kwargs.pop(key) for key in LOADER_KWARGS if key in kwargs}
            config, kwargs = cls.config_class.from_pretrained(
                name if config is None else config, return_unused_kwargs=True, **hub, **kwargs)
            kwargs.update(loader)
        with torch.device("meta"):  # the architecture the checks need, without memory or initialisation
            skeleton = cls(copy.deepcopy(config))
        if state is None:
            files = checkpoint_files(name, hub)
            for file in files:  # names and recorded quantization, from the header (packing.py)
                check_header(file, config, skeleton.model, PREFIX, extra_keys=(CHECKSUM_KEY,))
            state, origin = read_safetensors(files)
            where = os.fspath(files[0]) if len(files) == 1 else ", ".join(sorted(set(origin.values())))
        else:
            state, where = dict(state), "<state_dict>"
        state = load_checked_state_dict(skeleton, state, where, kwargs.get("ignore_mismatched_sizes", False))
        loaded = super().from_pretrained(None, *model_args, config=config, state_dict=state, **kwargs)
        if name is not None:  # transformers names the config after the (None) name it was given
            (loaded[0] if isinstance(loaded, tuple) else loaded).config.name_or_path = os.fspath(name)
        return loaded


def stored_checksum(folder: str | os.PathLike) -> bytes | None:
    """The checksum stored in a saved folder's weights (:func:`read_checksum`); ``None`` when it has none,
    or no readable weights."""
    try:
        return read_checksum(folder) or None
    except Exception:  # noqa: BLE001 (no folder, a broken index or file: nothing to compare with)
        return None


def drop_stale_graph(folder: str | os.PathLike, before: bytes | None, saved: bytes | None) -> None:
    """After weights (checksum ``saved``) were saved into ``folder``: its ``onnx/model.onnx`` is kept
    when they are the weights it was beside (checksum ``before``), else removed, as it would run other weights."""
    path = os.path.join(folder, ONNX_FILE)
    if not os.path.lexists(path):
        return
    if before is not None and saved == before:
        logger.info("%s: kept; the weights saved are the ones it was beside (same checksum)", path)
        return
    os.remove(path)
    logger.warning("%s: removed: it was not exported from the weights just saved; re-export it with "
                   "`uniq-hub export-onnx %s` or uniq_hub.export_onnx(model, %r)", path, folder, path)


class UniQModel(UniQPreTrainedModel):
    """The backbone of a UniQ classifier: ``forward(pixel_values)`` gives the last feature map
    (``last_hidden_state``), its global average (``pooler_output``, what the classifier reads)
    and, on request, ``hidden_states`` (stem output, then one per stage)."""

    def __init__(self, config: UniQConfig) -> None:
        super().__init__(config)
        # Quantized with the classifier in place, so that every layer has the classifier model's
        # precision (the policy knows the last layer), then the classifier is dropped.
        self.model = build_architecture(config)
        parent, _, name = self.model.last_layer.rpartition(".")
        setattr(self.model.get_submodule(parent), name, nn.Identity())
        self.post_init()

    def forward(
        self,
        pixel_values: Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPoolingAndNoAttention | tuple:
        pixel_values = self._check_inputs(pixel_values)
        output_hidden_states, return_dict = self._flags(output_hidden_states, return_dict)
        with collect_hidden_states(self.model, output_hidden_states) as hidden:
            features = self.model.forward_features(pixel_values)
        pooled = F.adaptive_avg_pool2d(features, 1).flatten(1)
        hidden_states = None if hidden is None else tuple(hidden)
        if not return_dict:
            return (features, pooled) + (() if hidden_states is None else (hidden_states,))
        return BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=features, pooler_output=pooled, hidden_states=hidden_states
        )


class UniQForImageClassification(UniQPreTrainedModel):
    """A UniQ low-bit image classifier: ``forward(pixel_values, labels=None)``.

    The loss follows ``config.problem_type`` as in every transformers classifier (regression,
    single-label or multi-label classification; inferred from ``num_labels`` and the labels'
    dtype when unset), through ``self.loss_function``.
    """

    def __init__(self, config: UniQConfig) -> None:
        super().__init__(config)
        self.model = build_architecture(config)
        self.post_init()

    def forward(
        self,
        pixel_values: Tensor,
        labels: Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> ImageClassifierOutputWithNoAttention | tuple:
        pixel_values = self._check_inputs(pixel_values)
        output_hidden_states, return_dict = self._flags(output_hidden_states, return_dict)
        with collect_hidden_states(self.model, output_hidden_states) as hidden:
            logits = self.model(pixel_values)
        loss = None if labels is None else self.loss_function(labels, logits, self.config)
        hidden_states = None if hidden is None else tuple(hidden)
        if not return_dict:
            output = (logits,) + (() if hidden_states is None else (hidden_states,))
            return output if loss is None else (loss,) + output
        return ImageClassifierOutputWithNoAttention(loss=loss, logits=logits, hidden_states=hidden_states)


UniQModel.register_for_auto_class("AutoModel")
UniQForImageClassification.register_for_auto_class("AutoModelForImageClassification")

__all__ = [
    "AUTO_MAP", "UniQForImageClassification", "UniQModel", "UniQPreTrainedModel", "build_architecture",
    "drop_stale_graph", "stored_checksum",
]


# push_to_hub's own arguments: what save_pretrained(push_to_hub=True, ...) forwards to it
_PUSH_ARGUMENTS = tuple(n for n in inspect.signature(UniQForImageClassification.push_to_hub).parameters
                        if n not in ("self", "packed", "max_shard_size"))
