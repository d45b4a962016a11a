"""Packed release format: bit packing, the state-dict transform, exact decoding, file sizes."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from tiny_models import tiny_model
from uniq_hub import UniQConfig, UniQForImageClassification
from uniq_hub.model.bitpack import pack_bits, packed_nbytes, unpack_bits
from uniq_hub.model.packing import (
    PACKED_SUFFIX,
    information_bytes,
    is_packed,
    pack_state_dict,
    quantized_layers,
    unpack_state_dict,
)


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 8), n=st.integers(0, 300), seed=st.integers(0, 2**31 - 1))
def test_pack_unpack_round_trip(bits, n, seed):
    codes = torch.randint(0, 1 << bits, (n,), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (packed_nbytes(n, bits),) == ((n * bits + 7) // 8,)
    assert torch.equal(unpack_bits(packed, bits, n), codes)


def test_bit_order_is_little_endian_stream():
    # code i occupies stream bits i*b .. i*b+b-1, LSB first; stream bit j is bit j % 8 of byte j // 8
    assert pack_bits(torch.tensor([1, 0, 0, 0, 0, 0, 0, 0, 1]), 1).tolist() == [1, 1]
    assert pack_bits(torch.tensor([3, 0, 1]), 2).tolist() == [0b010011]
    assert pack_bits(torch.tensor([5, 6, 7]), 3).tolist() == [0b11110101, 0b1]
    assert pack_bits(torch.tensor([0xA, 0x5]), 4).tolist() == [0x5A]
    assert pack_bits(torch.tensor([200, 7]), 8).tolist() == [200, 7]


def test_chunked_packing_matches_reference():
    n, bits = (1 << 22) + 1001, 3  # crosses the internal chunk boundary
    codes = torch.randint(0, 8, (n,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    packed = pack_bits(codes, bits)
    stream = ((codes.to(torch.int64)[:, None] >> torch.arange(bits)) & 1).reshape(-1)
    stream = torch.nn.functional.pad(stream, (0, -stream.numel() % 8)).view(-1, 8)
    assert torch.equal(packed, (stream << torch.arange(8)).sum(1).to(torch.uint8))
    assert torch.equal(unpack_bits(packed, bits, n), codes)


def test_pack_bits_rejects_out_of_range_codes_and_wrong_lengths():
    with pytest.raises(ValueError, match="codes must lie in 0..3"):
        pack_bits(torch.tensor([4]), 2)
    with pytest.raises(ValueError, match="expected a 1-D uint8 tensor of 3 bytes"):
        unpack_bits(torch.zeros(2, dtype=torch.uint8), 3, 8)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(w_bits=2, a_bits=2),
        dict(w_bits=1, a_bits=1),
        dict(w_bits=3, a_bits=4, weight_granularity="layer"),
        dict(w_bits=4, a_bits=4, method="lsq"),
        dict(w_bits=5, a_bits=32, overrides={"layer2.*": [None, 3]}),
    ],
    ids=["w2a2", "w1a1", "w3a4-layer", "w4a4-lsq", "w5-mixed"],
)
def test_packed_state_dict_decodes_to_the_fake_quantized_weights(kwargs):
    model = tiny_model(num_labels=7, image_size=32, calibration=(2, 16), **kwargs)
    arch = model.model
    packed = pack_state_dict(arch)
    layers = quantized_layers(arch)
    assert layers and is_packed(packed)
    for name, (layer, wq) in layers.items():
        assert f"{name}.weight" not in packed
        codes = packed[f"{name}{PACKED_SUFFIX}"]
        assert codes.dtype == torch.uint8 and codes.numel() == packed_nbytes(layer.weight.numel(), wq.bits)
    # Full-precision weights (e.g. the 1-bit policy's first / last / shortcut layers) stay float.
    fp = {k for k, v in arch.state_dict().items() if k.endswith("weight") and k[: -len(".weight")] not in layers}
    assert all(packed[k].dtype == torch.float32 for k in fp)

    unpacked = unpack_state_dict(packed, arch)
    assert set(unpacked) == set(arch.state_dict())
    with torch.no_grad():
        for name, (layer, wq) in layers.items():
            assert torch.equal(unpacked[f"{name}.weight"], wq(layer.weight))  # exactly, not approximately
            assert torch.equal(wq(unpacked[f"{name}.weight"]), unpacked[f"{name}.weight"])  # idempotent
        for key, value in arch.state_dict().items():
            if key[: -len(".weight")] not in layers:
                assert torch.equal(unpacked[key], value), key


def test_resnet18_file_sizes_within_2_percent_of_information_theoretic(tmp_path):
    """The measured numbers of docs/sizes.md (scripts/measure_sizes.py writes the table)."""
    rows = []
    for bits in (4, 3, 2, 1):
        model = UniQForImageClassification(UniQConfig(arch="resnet18", w_bits=bits, a_bits=bits, num_labels=1000))
        folder = tmp_path / f"w{bits}"
        model.save_pretrained(folder, save_image_processor=False)
        size, info = os.path.getsize(folder / "model.safetensors"), information_bytes(model.model)
        rows.append((bits, size, info))
        assert info <= size <= 1.02 * info, (bits, size, info)
        with safe_open(folder / "model.safetensors", "pt") as f:
            assert sum(k.endswith(PACKED_SUFFIX) for k in f.keys()) == len(quantized_layers(model.model))
    fp32 = sum(p.numel() * 4 for p in model.model.parameters()) / 1e6
    print("\nresnet18 model.safetensors: FP32 params ~%.2f MB" % fp32)
    for bits, size, info in rows:
        print(f"  w{bits}a{bits}: {size / 1e6:.2f} MB (information-theoretic {info / 1e6:.2f} MB, "
              f"+{100 * (size / info - 1):.2f}%)")
    sizes = dict((b, s) for b, s, _ in rows)
    assert sizes[4] > sizes[3] > sizes[2]  # 1 bit keeps first / last / shortcut layers in FP32
    assert sizes[2] < fp32 * 1e6 / 12
