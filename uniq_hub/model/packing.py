"""The release checkpoint format: quantized weights as bit-packed integer codes.

A packed ``model.safetensors`` holds, for every layer whose weight has a quantizer:

* ``<layer>.weight.packed``: ``uint8``, 1-D, ``ceil(numel * bits / 8)`` bytes. The weight's codes
  (``quantize_codes`` with the layer's step and scheme, ``0 .. 2**bits - 1``), in row-major order
  of the weight, written as a little-endian bit stream (:mod:`.bitpack`).
* ``<layer>.weight_quantizer.step`` (float32) and every other tensor of the model's state dict
  (BatchNorm, activation steps, biases, full-precision layers, ``initialized`` flags) unchanged.

Shapes come from ``config.json`` (the same config builds the model that reads it). Everything
that changes the computation is also recorded in the file's safetensors metadata
(:func:`computation_metadata`: the config's quantization fields and each quantizer's bits, role,
method and granularity) and checked against ``config.json`` at load, from the header, before
any tensor data is read (:func:`check_header`), together with the tensor names: a file is
refused when its header declares a tensor the model does not expect. A file without this
metadata (written before it existed) is still checked by its byte counts, so codes written at
2 bits are refused under a 4-bit config. Loading also refuses step sizes that are not positive
and finite and negative BatchNorm variances (:func:`check_values`). Unpacking gives exactly the fake-quantized
weights the model was evaluated with; the weight quantizer maps them onto themselves, so the
logits are bit-identical. A file is recognised as packed by its ``.weight.packed`` keys.

Every file ``save_pretrained`` writes also holds :data:`CHECKSUM_KEY`, a sha256 over all its
other tensors (:func:`state_dict_checksum`), verified before anything is loaded.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import math
import os
import struct
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from .atomic import atomic_path
from .bitpack import pack_bits, packed_nbytes, unpack_bits
from .constants import CHECKSUM_KEY, MAX_NUM_LABELS
from .files import CheckpointError, check_inside, index_shards, weight_files
from .modules import MIN_STEP, QuantizedMixin, UniQQuantizer
from .quant import dequantize_codes, quantize_codes
from .quantize import quantizers

logger = logging.getLogger(__name__)

PACKED_SUFFIX = ".weight.packed"


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


def quantized_layers(model: nn.Module) -> dict[str, tuple[QuantizedMixin, UniQQuantizer]]:
    """``{layer name: (layer, weight quantizer)}`` for every layer with a quantized weight."""
    return {
        name: (m, m.weight_quantizer)
        for name, m in model.named_modules()
        if isinstance(m, QuantizedMixin) and m.weight_quantizer is not None
    }


def _effective(step: Tensor) -> Tensor:
    """The step a quantizer's forward uses: kept positive (``clamp_min(MIN_STEP)``, as ``UniQQuantizer.forward``)."""
    return step.detach().clamp_min(MIN_STEP)


@torch.no_grad()
def pack_state_dict(model: nn.Module, prefix: str = "") -> dict[str, Tensor]:
    """The model's state dict with every quantized weight replaced by its packed codes.

    The codes are those of the weight the layer computes with; packing checks that they decode
    to it exactly.
    ``prefix`` is prepended to the layer names (e.g. "model." for a wrapped architecture).
    """
    # Steps as the forward uses them (kept positive): identical bytes for any step training left positive.
    state = {prefix + k: _effective(v) if k.endswith("_quantizer.step") else v for k, v in model.state_dict().items()}
    for name, (layer, wq) in quantized_layers(model).items():
        # Codes of the weight the layer computes with (its quantizer's own output), so that
        # the file reproduces exactly what the model was evaluated with.
        fake = wq(layer.weight.detach()).detach()
        step = _effective(wq.step).to(fake.dtype)
        codes = quantize_codes(fake, step, wq.bits, wq.scheme)
        decoded = dequantize_codes(codes, step, wq.bits, wq.scheme)
        if not torch.equal(decoded, fake):
            bad = (decoded != fake).sum().item()
            raise RuntimeError(f"{prefix}{name}: {bad} packed weights do not decode to the fake-quantized weight")
        del state[f"{prefix}{name}.weight"]
        state[f"{prefix}{name}{PACKED_SUFFIX}"] = pack_bits(codes, wq.bits)
    return state


def is_packed(keys: Iterable[str]) -> bool:
    """Whether a state dict (its keys) is in the packed release format."""
    return any(k.endswith(PACKED_SUFFIX) for k in keys)


def unpack_state_dict(
    state: Mapping[str, Tensor], model: nn.Module, prefix: str = "", path: str | os.PathLike | None = None
) -> dict[str, Tensor]:
    """Turn a packed state dict back into the model's: packed codes -> fake-quantized float weights.

    ``model`` supplies the layers' shapes, bits and schemes (it may live on the meta device).
    Every mismatch raises :class:`CheckpointError` naming ``path`` and the key.
    """
    out = dict(state)
    layers = quantized_layers(model)
    for key in [k for k in state if k.endswith(PACKED_SUFFIX)]:
        name = key[len(prefix) : -len(PACKED_SUFFIX)] if key.startswith(prefix) else None
        if name not in layers:
            raise CheckpointError(path, f"{key!r} holds packed codes but the model has no quantized layer {name!r}")
        layer, wq = layers[name]
        step_key = f"{prefix}{name}.weight_quantizer.step"
        if step_key not in state:
            raise CheckpointError(path, f"{key!r} has no step size {step_key!r} to decode it with")
        packed, step = state[key], state[step_key]
        shape, bits, numel = tuple(layer.weight.shape), wq.bits, layer.weight.numel()
        if packed.dtype != torch.uint8 or packed.dim() != 1:
            raise CheckpointError(path, f"{key!r} must be a 1-D uint8 tensor, got {packed.dtype} {tuple(packed.shape)}")
        if packed.numel() != packed_nbytes(numel, bits):
            stored = packed.numel() * 8 / numel
            raise CheckpointError(
                path,
                f"{key!r} holds {packed.numel()} bytes, i.e. ~{stored:g} bits for each of the {numel} weights of "
                f"shape {shape}, but the config gives this layer {bits} bits ({packed_nbytes(numel, bits)} bytes): "
                "config.json and the weights disagree (bit width or shape)",
            )
        if tuple(step.shape) != tuple(wq.step.shape):
            raise CheckpointError(path, f"{step_key!r} has shape {tuple(step.shape)}, expected {tuple(wq.step.shape)}")
        if not torch.isfinite(step).all():
            raise CheckpointError(path, f"{step_key!r} holds non-finite step sizes")
        codes = unpack_bits(packed, bits, numel).view(shape)
        if codes.numel() and int(codes.max()) > (1 << bits) - 1:  # impossible by construction; kept as a guard
            raise CheckpointError(path, f"{key!r} decodes to codes above {(1 << bits) - 1}")
        step = _effective(step.to(torch.float32))
        del out[key]
        out[f"{prefix}{name}.weight"] = dequantize_codes(codes, step, bits, wq.scheme)
    return out


def expected_layout(
    model: nn.Module, prefix: str = "", packed: bool = False
) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """``{key: (shape, dtype)}`` of the state dict a checkpoint of ``model`` holds, packed or not
    (``model`` may live on the meta device)."""
    layout = {prefix + k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    if packed:
        for name, (layer, wq) in quantized_layers(model).items():
            del layout[f"{prefix}{name}.weight"]
            layout[f"{prefix}{name}{PACKED_SUFFIX}"] = ((packed_nbytes(layer.weight.numel(), wq.bits),), torch.uint8)
    return layout


def information_bytes(model: nn.Module) -> int:
    """Information-theoretic size of a release checkpoint: ``numel * bits / 8`` for each quantized
    weight plus the bytes of every other tensor of the state dict."""
    quantized = {
        f"{name}.weight": (layer.weight.numel(), wq.bits) for name, (layer, wq) in quantized_layers(model).items()
    }
    total = 0.0
    for key, tensor in model.state_dict().items():
        numel_bits = quantized.get(key)
        total += numel_bits[0] * numel_bits[1] / 8 if numel_bits else tensor.numel() * tensor.element_size()
    return math.ceil(total)


# ---------------------------------------------------------------------------------------------
# What changes the computation: recorded in the safetensors metadata, checked at load


METADATA_PREFIX = "uniq_hub."
# UniQConfig fields that decide how the network quantizes (bits, method, granularity, policy).
# Training-only fields (init, grad_scale) and those the tensor shapes already pin are left out.
POLICY_FIELDS = (
    "arch", "w_bits", "a_bits", "first_bits", "last_bits", "method", "weight_granularity",
    "binary_fp_layers", "signed_inputs", "overrides",
)
QUANTIZERS_KEY = METADATA_PREFIX + "quantizers"


def describe_quantizer(quantizer: UniQQuantizer) -> str:
    """One quantizer's contribution to the computation, e.g. ``"2-bit weight uniq per-channel"``."""
    spec = quantizer.spec
    return f"{spec.bits}-bit {spec.role} {spec.method} {'per-channel' if spec.per_channel else 'per-layer'}"


def computation_metadata(config: Any, model: nn.Module) -> dict[str, str]:
    """The safetensors metadata of a checkpoint of ``model`` (built from ``config``): every
    :data:`POLICY_FIELDS` value and each quantizer's :func:`describe_quantizer`, as JSON strings."""
    meta = {METADATA_PREFIX + name: json.dumps(getattr(config, name), sort_keys=True) for name in POLICY_FIELDS}
    meta[QUANTIZERS_KEY] = json.dumps({n: describe_quantizer(q) for n, q in quantizers(model).items()}, sort_keys=True)
    return meta


def add_metadata(path: str | os.PathLike, metadata: Mapping[str, str]) -> None:
    """Rewrite the safetensors file ``path`` with ``metadata`` added to its header; the tensors
    (names, dtypes, shapes, bytes and order) stay exactly as they were. Atomic (temp file + rename).

    transformers' ``save_pretrained`` writes only ``{"format": "pt"}`` (other metadata only
    through an ``hf_quantizer``), hence this second pass over the (small) release file. The
    metadata is written in sorted order: safetensors' serializer keeps it in a hash map, so the
    same model saved twice would otherwise differ in its header bytes.
    """
    with safe_open(os.fspath(path), framework="pt", device="cpu") as f:
        tensors = {key: f.get_tensor(key) for key in f.keys()}
        merged = {**(f.metadata() or {}), **metadata}
    with atomic_path(path) as tmp:
        save_file(tensors, os.fspath(tmp), metadata=merged)
        _sort_header_metadata(tmp)


def _sort_header_metadata(path: Path) -> None:
    """Rewrite the ``__metadata__`` of a safetensors header in sorted key order, in place (the
    header keeps its length, so the tensor bytes do not move)."""
    with open(path, "r+b") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > length:
            raise ValueError(f"{path}: the sorted safetensors header is longer than the original")
        f.seek(8)
        f.write(text.ljust(length, b" "))


def record_computation(folder: str | os.PathLike, config: Any, model: nn.Module) -> None:
    """Add :func:`computation_metadata` to every weight file of a folder ``save_pretrained`` wrote."""
    metadata = computation_metadata(config, model)
    for path in weight_files(folder):
        add_metadata(path, metadata)


MAX_HEAD_FEATURES = 65_536  # a classifier of another task read from the header: at most this many inputs


def _head_prefix(model: nn.Module, prefix: str) -> str | None:
    last = getattr(model, "last_layer", None)
    return f"{prefix}{last}." if last else None


_ALLOW_MISSING_METADATA: contextvars.ContextVar[bool] = contextvars.ContextVar("allow_missing_metadata",
                                                                                default=False)


@contextlib.contextmanager
def allow_missing_metadata() -> Iterator[None]:
    """While active, packed files without the computation metadata load (checked by their byte counts
    only): what ``uniq-hub migrate`` needs to re-save an older release with its metadata."""
    token = _ALLOW_MISSING_METADATA.set(True)
    try:
        yield
    finally:
        _ALLOW_MISSING_METADATA.reset(token)


def check_metadata(
    path: str | os.PathLike | None,
    metadata: Mapping[str, str],
    config: Any,
    model: nn.Module,
    prefix: str = "",
    packed: bool = True,
) -> None:
    """Compare a file's recorded computation (:func:`computation_metadata`) with what ``config``
    builds; the first difference raises :class:`CheckpointError` naming file, key, value and the
    expected value. The metadata is mandatory for a packed release file (without it an edited
    ``config.json`` could decode the codes as another model); a latent (training) file without it,
    or any file inside :func:`allow_missing_metadata`, is checked by its byte counts only."""
    if not any(k.startswith(METADATA_PREFIX) for k in metadata):
        if packed and not _ALLOW_MISSING_METADATA.get():
            folder = os.path.dirname(os.fspath(path)) if path else "FOLDER"
            raise CheckpointError(path, f"no {METADATA_PREFIX}* metadata (re-saved without it, or written by an older "
                                        "uniq_hub): config.json cannot be checked against the weights, so the file is "
                                        f"refused; re-save it with this version: `uniq-hub migrate {folder}`")
        logger.warning("%s: no %s* metadata (written by an older uniq_hub); the quantization recorded in config.json "
                       "cannot be checked against the weights beyond their byte counts", path, METADATA_PREFIX)
        return
    expected = computation_metadata(config, model)
    hint = ("config.json and the weights disagree: the weights were written for another quantization and would "
            "compute a different model; restore config.json or export the model again")
    for key in (METADATA_PREFIX + name for name in POLICY_FIELDS):
        if key not in metadata:
            raise CheckpointError(path, f"metadata key {key!r} is missing (expected {expected[key]})")
        if json.loads(metadata[key]) != json.loads(expected[key]):
            raise CheckpointError(
                path, f"metadata {key!r} is {metadata[key]} but config.json gives {expected[key]}; {hint}"
            )
    try:
        stored = json.loads(metadata[QUANTIZERS_KEY])
    except (KeyError, json.JSONDecodeError) as err:
        raise CheckpointError(path, f"metadata key {QUANTIZERS_KEY!r} is missing or not JSON ({err})") from err
    built = json.loads(expected[QUANTIZERS_KEY])
    # A base model (classifier dropped) lacks the head's quantizers, a base model's file too; whether a
    # classifier may be re-initialised is the loader's decision (ignore_mismatched_sizes).
    head = _head_prefix(model, "")
    for name in sorted(set(stored) | set(built)):
        headless = name not in built or name not in stored
        if stored.get(name) != built.get(name) and not (headless and head and name.startswith(head)):
            raise CheckpointError(
                path, f"metadata {QUANTIZERS_KEY!r}[{name!r}] is {stored.get(name, 'absent')!r} but config.json builds "
                f"{built.get(name, 'no such quantizer')!r}; {hint}",
            )


def check_header(
    path: str | os.PathLike,
    config: Any,
    model: nn.Module,
    prefix: str = "",
    extra_keys: Iterable[str] = (),
) -> dict[str, str]:
    """Check one safetensors file from its header alone (no tensor data is read): every tensor it
    declares must be one ``model`` expects (packed or latent layout, plus ``extra_keys``, e.g. a
    checksum; a base model without classifier also accepts the classifier's tensors), and its
    metadata must match ``config`` (:func:`check_metadata`). Returns the metadata."""
    try:
        with safe_open(os.fspath(path), framework="pt", device="cpu") as f:
            keys, metadata = list(f.keys()), dict(f.metadata() or {})
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
    except FileNotFoundError as err:
        raise CheckpointError(path, "file not found") from err
    except Exception as err:  # safetensors raises its own error type for every format problem
        raise CheckpointError(path, f"not a valid safetensors file (truncated or corrupted?): {err}") from err
    expected = expected_layout(model, prefix, packed=is_packed(keys))
    layout = set(expected) | set(extra_keys)
    head = _head_prefix(model, prefix)
    headless = head is not None and not any(k.startswith(head) for k in layout)
    unexpected = sorted(k for k in keys if k not in layout and not (headless and k.startswith(head)))
    what = ", ".join(f"{name}={getattr(config, name, None)}" for name in ("arch", "w_bits", "a_bits", "num_labels"))
    if unexpected:
        missing = sorted(layout - set(keys) - set(extra_keys))
        problems = [f"{'packed' if is_packed(keys) else 'latent'} checkpoint"]
        if missing:
            problems.append(f"{len(missing)} tensors the model needs are missing (e.g. {missing[:3]})")
        problems.append(f"{len(unexpected)} tensors are not part of the model (e.g. {unexpected[:3]})")
        raise CheckpointError(
            path, f"{'; '.join(problems)}; does the file belong to this config.json ({what})? "
            "(refused from the header; no tensor data was read)",
        )
    check_metadata(path, metadata, config, model, packed=is_packed(keys))
    for key, shape in shapes.items():  # declared shapes, before any tensor is allocated
        want = expected[key][0] if key in expected else None
        in_head = head is not None and key.startswith(head)
        ok = shape == want or (want is None and not in_head)  # extra keys (the checksum) are checked above
        if not ok and want is not None and key.endswith(PACKED_SUFFIX):  # codes of other bits: unpacking names them
            ok = len(shape) == 1 and 0 < shape[0] <= 8 * want[0]
        if not ok and in_head:  # another task's classifier (ignore_mismatched_sizes, a headless model): bounded
            ok = (0 < (shape or (1,))[0] <= MAX_NUM_LABELS and (want is None or shape[1:] == want[1:])
                  and math.prod(shape) <= MAX_NUM_LABELS * MAX_HEAD_FEATURES)
        if not ok:
            raise CheckpointError(path, f"{key!r} is declared with shape {list(shape)}, but the config ({what}) builds "
                                        f"{list(want) if want is not None else 'no such tensor'} (refused from the "
                                        "header; no tensor data was read)")
    return metadata


def check_values(
    state: Mapping[str, Tensor], path: str | os.PathLike | None = None, positive_steps: bool = True
) -> None:
    """Refuse step sizes that are not positive and finite and negative BatchNorm variances
    (the model would silently clamp or produce NaN), naming the file and key. ``positive_steps=False``
    (latent training checkpoints, whose raw steps the forward clamps) checks only finiteness."""
    for key, tensor in state.items():
        if key.endswith("_quantizer.step") and positive_steps:
            bad = ~(torch.isfinite(tensor) & (tensor > 0))
            if bool(bad.any()):
                value = tensor.reshape(-1)[bad.reshape(-1)][0].item()
                raise CheckpointError(
                    path, f"{key!r} holds step sizes that are not positive and finite (e.g. {value}); expected > 0"
                )
        elif key.endswith(".running_var") and tensor.is_floating_point() and bool((tensor < 0).any()):
            value = tensor[tensor < 0].reshape(-1)[0].item()
            raise CheckpointError(path, f"{key!r} holds a negative BatchNorm variance ({value}); expected >= 0")


__all__ = [
    "CHECKSUM_KEY", "CheckpointError", "METADATA_PREFIX", "PACKED_SUFFIX", "POLICY_FIELDS", "QUANTIZERS_KEY",
    "add_metadata", "allow_missing_metadata", "check_header", "check_inside", "check_metadata",
    "check_values", "computation_metadata", "describe_quantizer", "expected_layout",
    "index_shards", "information_bytes", "is_packed",
    "pack_state_dict", "quantized_layers", "read_safetensors", "record_computation", "state_dict_checksum",
    "unpack_state_dict", "weight_files",
]
