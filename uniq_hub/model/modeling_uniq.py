"""The transformers models: ``UniQForImageClassification`` and the base model ``UniQModel``.

* ``model.model`` is a registered architecture after ``quantize_`` (state-dict keys ``model.<layer>...``);
  ``UniQModel`` is the same network without its classifier (pooled features, for retrieval or a
  custom head), and ``AutoModel.from_pretrained(<classifier folder>)`` loads it from a classifier.
* ``save_pretrained`` / ``push_to_hub`` write the packed release format (see ``packing.py``) plus
  ``config.json``, ``preprocessor_config.json`` and this code (``auto_map`` for both auto classes,
  for ``trust_remote_code``); ``save_pretrained(..., packed=False)`` keeps the latent float weights.
* ``from_pretrained`` reads both formats from safetensors only (never pickle), checks every key,
  shape and dtype against the config, verifies the checksum, and loads strictly: a missing tensor
  is an error, never a silent re-initialisation, so reloading is bit-exact. The one exception is
  asked for: ``ignore_mismatched_sizes=True`` with new labels (``num_labels`` / ``id2label``)
  re-initialises the classifier (its quantizers at the config's bits, ready for calibration).
* ``_init_weights`` initialises every parameter and buffer as a new model is (the architecture's
  ``init_module``, BatchNorm, weight steps from the weights, activation steps uncalibrated) with
  transformers' guarded init functions, which leave loaded tensors alone: meta-device
  construction followed by ``init_weights()`` gives a complete model.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
from contextlib import contextmanager
from typing import Any, ClassVar, Iterable, Iterator, Mapping

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention, ImageClassifierOutputWithNoAttention

from .configuration_uniq import UniQConfig
from .image_processing_uniq import UniQImageProcessor

# Imported for their side effect: they fill the architecture registry (this file also runs as
# remote code, without uniq_hub's __init__).
from .mobilenetv2 import mobilenetv2  # noqa: F401
from .modules import UniQQuantizer
from .packing import (
    PACKED_SUFFIX,
    CheckpointError,
    check_header,
    check_values,
    expected_layout,
    is_packed,
    pack_state_dict,
    record_computation,
    unpack_state_dict,
    weight_files,
)
from .preresnet import resnet18  # noqa: F401
from .quantize import quantize_
from .registry import create_model

logger = logging.getLogger(__name__)
CHECKSUM_KEY = "uniq_hub.sha256"  # uint8[32]: sha256 over every other tensor (see state_dict_checksum)
_PREFIX = "model."
# Written into every saved config.json, so that the remote code serves both auto classes.
AUTO_MAP = {
    "AutoModel": "modeling_uniq.UniQModel",
    "AutoModelForImageClassification": "modeling_uniq.UniQForImageClassification",
}


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


def _drop_stale_graph(folder: str | os.PathLike) -> None:
    """After new weights were saved into ``folder``: an ``onnx/model.onnx`` there that was not
    exported from them is removed (it would run other weights), and the log says so; one exported
    from these very weights is kept. Without uniq_hub's ONNX tools (remote code) it is removed."""
    path = os.path.join(folder, "onnx", "model.onnx")
    if not os.path.lexists(path):
        return
    try:  # by name, as the export above (optional dependencies)
        importlib.import_module("uniq_hub.deploy.onnx_runtime").check_graph(folder)
        logger.info("%s: kept; it was exported from the weights just saved", path)
        return
    except Exception as err:  # noqa: BLE001 (any failure: stale, corrupted, or the tools missing)
        reason = str(err).splitlines()[0]
    os.remove(path)
    logger.warning("%s: removed: it was not exported from the weights just saved (%s); re-export it with "
                   "`uniq-hub export-onnx %s` or save_pretrained(..., onnx=True)", path, reason, folder)


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
    base_model_prefix = "uniq"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    accepts_loss_kwargs = False  # the loss is a plain mean (as ConvNext): the Trainer scales it for accumulation
    has_classifier: ClassVar[bool] = True  # False: the checkpoint's classifier tensors are not loaded

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
        onnx: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """Save config, code, weights and preprocessor config.

        ``packed`` (default ``True``, or what ``push_to_hub(packed=...)`` asked): write the release
        format (packed low-bit codes); ``False`` keeps the latent float weights (training
        checkpoints). ``save_image_processor`` also writes ``preprocessor_config.json`` derived
        from the config. ``onnx`` (default ``False``, or what ``push_to_hub(onnx=...)`` asked): also write
        the exact integer graph ``onnx/model.onnx`` (``uniq_hub.deploy.onnx_export``). Other arguments are
        ``PreTrainedModel.save_pretrained``'s.
        """
        packed = getattr(self, "_uniq_push_packed", True) if packed is None else packed
        onnx = getattr(self, "_uniq_push_onnx", False) if onnx is None else onnx
        if push_to_hub:  # save here, then upload through push_to_hub so every file goes up
            hub_keys = ("repo_id", "commit_message", "commit_description", "private", "token", "revision", "create_pr")
            hub = {k: kwargs.pop(k) for k in hub_keys if k in kwargs}
            self.save_pretrained(
                save_directory, is_main_process, state_dict, packed=packed,
                save_image_processor=save_image_processor, onnx=onnx, **kwargs,
            )
            if not is_main_process:
                return None
            repo_id = hub.pop("repo_id", os.path.basename(os.path.normpath(save_directory)))
            shard = kwargs.get("max_shard_size", "50GB")
            return self.push_to_hub(repo_id, packed=packed, onnx=onnx, max_shard_size=shard, **hub)
        if state_dict is None:
            state_dict = self.packed_state_dict() if packed else dict(self.state_dict())
            state_dict[CHECKSUM_KEY] = state_dict_checksum(state_dict)
        if is_main_process and save_image_processor:
            os.makedirs(save_directory, exist_ok=True)
            UniQImageProcessor.from_model_config(self.config).save_pretrained(save_directory)
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **AUTO_MAP}
        out = super().save_pretrained(save_directory, is_main_process, state_dict, False, **kwargs)
        if is_main_process:  # bits, method, granularity, policy into the safetensors metadata (packing.py)
            record_computation(save_directory, self.config, self.model)
        if is_main_process and onnx:  # by name: remote code copies relative imports, and this one needs onnx
            exporter = importlib.import_module("uniq_hub.deploy.onnx_export")
            exporter.export_onnx(self, os.path.join(save_directory, "onnx", "model.onnx"))
            logger.info("%s: wrote onnx/model.onnx, exported from these weights", save_directory)
        elif is_main_process:
            _drop_stale_graph(save_directory)
        return out

    def push_to_hub(self, *args: Any, packed: bool = True, onnx: bool = False, **kwargs: Any) -> Any:
        """``PreTrainedModel.push_to_hub``, uploading the release format unless ``packed=False``,
        with ``onnx/model.onnx`` when ``onnx=True``."""
        self._uniq_push_packed, self._uniq_push_onnx = packed, onnx
        try:
            return super().push_to_hub(*args, **kwargs)
        finally:
            del self._uniq_push_packed, self._uniq_push_onnx

    # ------------------------------------------------------------------------------------------
    # Loading
    # ------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> Any:
        """``PreTrainedModel.from_pretrained`` restricted to safetensors, loading both formats strictly.

        New labels (``num_labels=`` / ``id2label=``) need ``ignore_mismatched_sizes=True``: the
        classifier is then re-initialised and everything else loads exactly.
        """
        if kwargs.get("use_safetensors") is False:
            raise ValueError("UniQ checkpoints are safetensors only; use_safetensors=False (pickle) is refused")
        if kwargs.get("gguf_file"):
            raise ValueError("UniQ checkpoints are safetensors only; gguf files are not supported")
        kwargs["use_safetensors"] = True
        name = pretrained_model_name_or_path
        if isinstance(name, (str, os.PathLike)) and os.path.isdir(os.path.join(name, kwargs.get("subfolder") or "")):
            weight_files(os.path.join(name, kwargs.get("subfolder") or ""))  # nothing read from outside the folder
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @staticmethod
    def _load_pretrained_model(model, state_dict, checkpoint_files, load_config, expected_keys=None):  # noqa: ANN001
        """Read the files ourselves (safetensors only), unpack, check, then hand over a full state dict
        (less a classifier being re-initialised, which transformers then initialises with ``_init_weights``)."""
        if state_dict is None:
            for file in checkpoint_files or []:  # names and recorded quantization, from the header (packing.py)
                check_header(file, model.config, model.model, _PREFIX, extra_keys=(CHECKSUM_KEY,))
            state_dict, origin = read_safetensors(checkpoint_files or [])
            where = os.fspath(checkpoint_files[0]) if checkpoint_files and len(checkpoint_files) == 1 else None
        else:
            state_dict, origin, where = dict(state_dict), {}, "<state_dict>"
        where = where or ", ".join(sorted(set(origin.values())))
        state_dict = load_checked_state_dict(model, state_dict, where, load_config.ignore_mismatched_sizes)
        return PreTrainedModel._load_pretrained_model(model, state_dict, None, load_config, expected_keys)


class UniQModel(UniQPreTrainedModel):
    """The backbone of a UniQ classifier: ``forward(pixel_values)`` gives the last feature map
    (``last_hidden_state``), its global average (``pooler_output``, what the classifier reads)
    and, on request, ``hidden_states`` (stem output, then one per stage)."""

    has_classifier = False

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


def _without_classifier(
    model: UniQPreTrainedModel,
    state: dict[str, Tensor],
    layout: dict[str, tuple[tuple[int, ...], torch.dtype]],
    path: str | None,
    ignore_mismatched_sizes: bool,
    what: str,
) -> tuple[dict[str, Tensor], dict[str, tuple[tuple[int, ...], torch.dtype]]]:
    """``state`` and ``layout`` less the classifier's tensors where they are not to be loaded:
    always for the base model; for a classifier whose tensors do not fit the config (new labels)
    when ``ignore_mismatched_sizes`` says so (they are then initialised), else an error."""
    head = f"{_PREFIX}{model.model.last_layer}."
    drop = not model.has_classifier
    if not drop:
        misfits = [
            f"{key} {'missing' if key not in state else tuple(state[key].shape)} (config: {shape})"
            for key, (shape, _) in layout.items()
            if key.startswith(head) and (key not in state or tuple(state[key].shape) != shape)
        ]
        if misfits and not ignore_mismatched_sizes:
            raise CheckpointError(
                path,
                f"the classifier does not fit the config ({what}): {'; '.join(misfits[:3])}. For new labels pass "
                "ignore_mismatched_sizes=True to from_pretrained: the classifier is then re-initialised",
            )
        drop = bool(misfits)
    if not drop:
        return state, layout
    return (
        {k: v for k, v in state.items() if not k.startswith(head)},
        {k: v for k, v in layout.items() if not k.startswith(head)},
    )


def load_checked_state_dict(
    model: UniQPreTrainedModel, state: dict[str, Tensor], path: str | None, ignore_mismatched_sizes: bool = False
) -> dict[str, Tensor]:
    """Verify the checksum, check every key / shape / dtype against ``model``, unpack if packed.

    The classifier's tensors are left out for the base model, and for new labels with
    ``ignore_mismatched_sizes`` (see :func:`_without_classifier`); nothing else may be missing.
    """
    if not state:
        raise CheckpointError(path, "the checkpoint holds no tensors")
    checksum = state.pop(CHECKSUM_KEY, None)
    if checksum is not None and not torch.equal(checksum, state_dict_checksum(state)):
        raise CheckpointError(
            path, "checksum mismatch: the tensor data is corrupted (sha256 differs from the stored one)")
    packed = is_packed(state)
    layout = expected_layout(model.model, _PREFIX, packed)
    config = model.config
    what = f"arch={config.arch}, w_bits={config.w_bits}, a_bits={config.a_bits}, num_labels={config.num_labels}"
    state, layout = _without_classifier(model, state, layout, path, ignore_mismatched_sizes, what)
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
    check_values(state, path, positive_steps=packed)  # steps > 0 (release files), BatchNorm variances >= 0
    return unpack_state_dict(state, model.model, prefix=_PREFIX, path=path) if packed else state


UniQModel.register_for_auto_class("AutoModel")
UniQForImageClassification.register_for_auto_class("AutoModelForImageClassification")

__all__ = [
    "AUTO_MAP", "CHECKSUM_KEY", "UniQForImageClassification", "UniQModel", "UniQPreTrainedModel",
    "build_architecture", "load_checked_state_dict", "read_safetensors",
]
