"""Loading a UniQ checkpoint: where its files are, and the strict checks before any tensor is used.

``UniQPreTrainedModel.from_pretrained`` (and the timm model) read the safetensors files found by
:func:`checkpoint_files`, check each from its header (``packing.check_header``) and then every
tensor with :func:`load_checked_state_dict`, which also unpacks the release format: a model built
from ``config.json`` receives exactly the tensors it expects, or a :class:`CheckpointError` says why not.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers.utils import cached_file

from .files import ClassifierMismatchError
from .packing import (
    CHECKSUM_KEY,
    PACKED_SUFFIX,
    CheckpointError,
    check_values,
    expected_layout,
    index_shards,
    is_packed,
    state_dict_checksum,
    unpack_state_dict,
    weight_files,
)

PREFIX = "model."  # the state-dict prefix of the architecture (``base_model_prefix``)
# Hub arguments of from_pretrained (the config and the weight files are resolved with them), and its
# loading arguments, which transformers takes apart from the config overrides.
HUB_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "subfolder")
LOADER_KWARGS = (
    "ignore_mismatched_sizes", "weights_only", "fusion_config", "disable_mmap", "tqdm_class", "output_loading_info",
    "_from_pipeline", "dtype", "torch_dtype", "device_map", "max_memory", "offload_folder", "offload_buffers",
    "quantization_config", "adapter_kwargs", "adapter_name", "generation_config", "distributed_config",
    "device_mesh", "tp_plan", "tp_size", "trust_remote_code", "allow_all_kernels", "use_kernels", "kernel_config",
    "key_mapping", "low_cpu_mem_usage", "_fast_init", "_commit_hash",
)


def checkpoint_files(name: str | os.PathLike, hub: dict[str, Any]) -> list[Path]:
    """The safetensors weight files of a model folder (each inside it, :func:`weight_files`) or of a
    Hub repo (``model.safetensors``, else the shards its index lists), downloaded with ``hub``'s
    arguments (``cached_file``'s)."""
    folder = os.path.join(name, hub.get("subfolder") or "")
    if os.path.isdir(folder):
        files = weight_files(folder)
        if not files:
            raise OSError(f"Error no file named model.safetensors found in directory {folder} (UniQ checkpoints "
                          "are safetensors only)")
        return files
    single = cached_file(name, "model.safetensors", _raise_exceptions_for_missing_entries=False, **hub)
    if single is not None:
        return [Path(single)]
    index = cached_file(name, "model.safetensors.index.json", _raise_exceptions_for_missing_entries=False, **hub)
    if index is None:
        raise OSError(f"{name} does not appear to have a file named model.safetensors or "
                      "model.safetensors.index.json (UniQ checkpoints are safetensors only)")
    return [Path(cached_file(name, shard, **hub)) for shard in index_shards(index)]


def _without_classifier(
    model: nn.Module,
    state: dict[str, Tensor],
    layout: dict[str, tuple[tuple[int, ...], torch.dtype]],
    path: str | None,
    ignore_mismatched_sizes: bool,
    what: str,
) -> tuple[dict[str, Tensor], dict[str, tuple[tuple[int, ...], torch.dtype]]]:
    """``state`` and ``layout`` less the classifier's tensors where they are not to be loaded:
    always for the base model; for a classifier whose tensors do not fit the config (new labels)
    when ``ignore_mismatched_sizes`` says so (they are then initialised), else an error."""
    head = f"{PREFIX}{model.model.last_layer}."
    drop = not has_classifier(model.model)
    if not drop:
        misfits = [
            f"{key} {'missing' if key not in state else tuple(state[key].shape)} (config: {shape})"
            for key, (shape, _) in layout.items()
            if key.startswith(head) and (key not in state or tuple(state[key].shape) != shape)
        ]
        if misfits and not ignore_mismatched_sizes:
            raise ClassifierMismatchError(
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


def has_classifier(arch: nn.Module) -> bool:
    """Whether ``arch`` holds its classifier (the base model and a headless timm model replace it by ``Identity``)."""
    return not isinstance(arch.get_submodule(arch.last_layer), nn.Identity)


def load_checked_state_dict(
    model: nn.Module, state: dict[str, Tensor], path: str | None, ignore_mismatched_sizes: bool = False
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
    layout = expected_layout(model.model, PREFIX, packed)
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
    return unpack_state_dict(state, model.model, prefix=PREFIX, path=path) if packed else state


__all__ = ["HUB_KWARGS", "LOADER_KWARGS", "PREFIX", "checkpoint_files", "has_classifier", "load_checked_state_dict"]
