"""The bit stream of the release format: integer codes of ``bits`` bits packed into bytes.

Code ``i`` occupies stream bits ``i*bits .. i*bits + bits - 1`` (least significant bit first),
stream bit ``j`` is bit ``j % 8`` of byte ``j // 8``; the last byte is zero-padded. Which tensors
are packed, and how a checkpoint holds them, is :mod:`.packing`'s.
"""

from __future__ import annotations

import torch
from torch import Tensor

_CHUNK = 1 << 21  # codes per chunk when packing / unpacking (a multiple of 8; bounds the temporaries)


def packed_nbytes(numel: int, bits: int) -> int:
    """Bytes of ``numel`` codes at ``bits`` bits each."""
    return (numel * bits + 7) // 8


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")


def pack_bits(codes: Tensor, bits: int) -> Tensor:
    """Pack integer codes ``0 .. 2**bits - 1`` (any shape, any device) into a 1-D ``uint8`` bit
    stream on the same device.

    Groups of 8 codes form one little-endian integer of ``bits`` bytes (``sum code_j << j*bits``).
    """
    _check_bits(bits)
    flat = codes.reshape(-1)
    n = flat.numel()
    if n and (int(flat.min()) < 0 or int(flat.max()) >= 1 << bits):
        lo, hi = int(flat.min()), int(flat.max())
        raise ValueError(f"codes must lie in 0..{(1 << bits) - 1} for {bits} bits, got {lo}..{hi}")
    out = torch.empty(-(-n // 8) * bits, dtype=torch.uint8, device=flat.device)
    code_shifts = torch.arange(8, dtype=torch.int64, device=flat.device) * bits
    byte_shifts = torch.arange(bits, dtype=torch.int64, device=flat.device) * 8
    for start in range(0, n, _CHUNK):
        group = flat[start : start + _CHUNK].to(torch.int64)
        group = torch.nn.functional.pad(group, (0, -group.numel() % 8)).view(-1, 8)
        words = (group << code_shifts).sum(1)
        chunk = ((words[:, None] >> byte_shifts) & 0xFF).to(torch.uint8).reshape(-1)
        out[start * bits // 8 : start * bits // 8 + chunk.numel()] = chunk
    nbytes = packed_nbytes(n, bits)
    return out if out.numel() == nbytes else out[:nbytes].clone()


def unpack_bits(packed: Tensor, bits: int, numel: int) -> Tensor:
    """Inverse of :func:`pack_bits`: ``numel`` codes as a 1-D ``uint8`` tensor on ``packed``'s device."""
    _check_bits(bits)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != packed_nbytes(numel, bits):
        raise ValueError(
            f"expected a 1-D uint8 tensor of {packed_nbytes(numel, bits)} bytes ({numel} codes at {bits} bits), "
            f"got {packed.dtype} of shape {tuple(packed.shape)}"
        )
    out = torch.empty(-(-numel // 8) * 8, dtype=torch.uint8, device=packed.device)
    code_shifts = torch.arange(8, dtype=torch.int64, device=packed.device) * bits
    byte_shifts = torch.arange(bits, dtype=torch.int64, device=packed.device) * 8
    mask = (1 << bits) - 1
    step = _CHUNK // 8 * bits  # bytes per chunk: a whole number of 8-code groups
    for start in range(0, packed.numel(), step):
        chunk = packed[start : start + step].to(torch.int64)
        chunk = torch.nn.functional.pad(chunk, (0, -chunk.numel() % bits)).view(-1, bits)
        words = (chunk << byte_shifts).sum(1)
        codes = ((words[:, None] >> code_shifts) & mask).to(torch.uint8).reshape(-1)
        first = start // bits * 8
        out[first : first + codes.numel()] = codes
    return out[:numel]


__all__ = ["pack_bits", "packed_nbytes", "unpack_bits"]
