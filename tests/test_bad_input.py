"""Bad checkpoints and bad images: every one raises an error naming the file and the problem; no pickle."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageClassification, pipeline

from tiny_models import tiny_model
from uniq_hub import CheckpointError, UniQForImageClassification, UniQImageProcessor
from uniq_hub.model.packing import CHECKSUM_KEY, allow_missing_metadata, state_dict_checksum


def _save(folder, **kwargs) -> str:
    tiny_model(num_labels=3, image_size=32, calibration=(2, 16), **kwargs).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("pristine") / "model", w_bits=2, a_bits=2)


@pytest.fixture()
def folder(tmp_path, pristine):
    """A fresh copy of a good checkpoint folder, for one test to damage."""
    return str(shutil.copytree(pristine, tmp_path / "model"))


def weights(folder) -> str:
    return os.path.join(folder, "model.safetensors")


@pytest.fixture(autouse=True)
def no_pickle(monkeypatch):
    """Loading must never unpickle anything."""
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called: a pickle fallback")

    monkeypatch.setattr(torch, "load", refuse)


def _load_error(folder, match: str, error=CheckpointError, path=None):
    with pytest.raises(error) as info:
        AutoModelForImageClassification.from_pretrained(folder)
    message = str(info.value)
    assert (path or weights(folder)) in message, message
    assert match in message, message
    return message


def test_truncated_file(folder):
    data = open(weights(folder), "rb").read()
    with open(weights(folder), "wb") as f:
        f.write(data[: len(data) // 2])
    _load_error(folder, "not a valid safetensors file (truncated or corrupted?)")


def test_corrupted_header(folder):
    data = bytearray(open(weights(folder), "rb").read())
    data[8:40] = b"\xff" * 32
    open(weights(folder), "wb").write(bytes(data))
    _load_error(folder, "not a valid safetensors file")


def test_corrupted_tensor_data_fails_the_checksum(folder):
    data = bytearray(open(weights(folder), "rb").read())
    data[-1000] ^= 0x40  # one flipped bit inside the tensor data
    open(weights(folder), "wb").write(bytes(data))
    _load_error(folder, "checksum mismatch: the tensor data is corrupted")


def test_empty_file(folder):
    open(weights(folder), "wb").close()
    _load_error(folder, "not a valid safetensors file")


def _edit_config(folder, **changes) -> None:
    config_path = os.path.join(folder, "config.json")
    config = json.loads(open(config_path).read())
    config.update(changes)
    open(config_path, "w").write(json.dumps(config))


def _metadata(folder) -> dict:
    with safe_open(weights(folder), framework="pt") as f:
        return f.metadata()


def _resave(folder, state, metadata) -> None:
    """Write tensors back with a fresh checksum and the given header metadata."""
    state.pop(CHECKSUM_KEY, None)
    state[CHECKSUM_KEY] = state_dict_checksum(state)
    save_file(state, weights(folder), metadata=metadata)


def test_w2_codes_under_a_w4_config(folder):
    _edit_config(folder, w_bits=4, a_bits=4)
    message = _load_error(folder, "metadata 'uniq_hub.w_bits' is 2 but config.json gives 4")
    assert "config.json and the weights disagree" in message
    # a file without the metadata (older, or re-saved with plain safetensors) is refused as such ...
    _resave(folder, load_file(weights(folder)), {"format": "pt"})
    _load_error(folder, "no uniq_hub.* metadata")
    # ... and `uniq-hub migrate`, which loads it by its byte counts, still catches the edited config
    with allow_missing_metadata():
        message = _load_error(folder, "config.json and the weights disagree")
    assert "~2 bits" in message and "gives this layer 4 bits" in message


@pytest.mark.parametrize("field, value, key", [
    ("a_bits", 4, "'uniq_hub.a_bits' is 2 but config.json gives 4"),  # same bytes: only the metadata tells
    ("method", "lsq", "'uniq_hub.method' is \"uniq\" but config.json gives \"lsq\""),
    ("weight_granularity", "layer", "'uniq_hub.weight_granularity' is null but config.json gives \"layer\""),
    ("first_bits", 4, "'uniq_hub.first_bits' is 8 but config.json gives 4"),
    ("signed_inputs", True, "'uniq_hub.signed_inputs' is false but config.json gives true"),
])
def test_config_edits_that_change_the_computation_are_refused(folder, field, value, key):
    _edit_config(folder, **{field: value})
    _load_error(folder, f"metadata {key}")


def test_recorded_per_layer_plan_is_checked(folder):
    """A per-layer difference the config fields do not show (e.g. another policy in the code)."""
    metadata = _metadata(folder)
    plan = json.loads(metadata["uniq_hub.quantizers"])
    assert plan["fc.weight_quantizer"] == "8-bit weight uniq per-channel"
    plan["fc.weight_quantizer"] = "4-bit weight uniq per-channel"
    _resave(folder, load_file(weights(folder)), {**metadata, "uniq_hub.quantizers": json.dumps(plan)})
    _load_error(folder, "metadata 'uniq_hub.quantizers'['fc.weight_quantizer'] is '4-bit weight uniq per-channel' "
                        "but config.json builds '8-bit weight uniq per-channel'")


def test_metadata_leaves_the_tensors_byte_identical(folder):
    """The release file is what it was before the metadata existed, header metadata apart."""
    model = UniQForImageClassification.from_pretrained(folder)
    state = model.packed_state_dict()
    state[CHECKSUM_KEY] = state_dict_checksum(state)
    plain = os.path.join(folder, "plain.safetensors")
    save_file(state, plain, metadata={"format": "pt"})

    def data_and_layout(path):
        raw = open(path, "rb").read()
        size = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + size])
        header.pop("__metadata__")
        return raw[8 + size :], header

    assert data_and_layout(weights(folder)) == data_and_layout(plain)
    assert set(_metadata(folder)) > {"format", "uniq_hub.w_bits", "uniq_hub.quantizers"}


@pytest.mark.parametrize("key, value, problem", [
    ("model.layer1.0.conv1.input_quantizer.step", 0.0, "step sizes that are not positive and finite (e.g. 0.0)"),
    ("model.fc.weight_quantizer.step", -0.5, "step sizes that are not positive and finite (e.g. -0.5)"),
    ("model.layer1.0.bn1.running_var", -1.0, "a negative BatchNorm variance (-1.0)"),
])
def test_impossible_values_are_refused(folder, key, value, problem):
    state = load_file(weights(folder))
    state[key].reshape(-1)[0] = value
    _resave(folder, state, _metadata(folder))
    _load_error(folder, f"{key!r} holds {problem}")


def test_unexpected_tensor_is_refused_from_the_header(folder):
    """An undeclared tensor is refused before any data is read: here the data is also corrupt,
    and the error is about the header, not the checksum."""
    state = load_file(weights(folder))
    state["model.extra.payload"] = torch.zeros(1000)
    _resave(folder, state, _metadata(folder))
    data = bytearray(open(weights(folder), "rb").read())
    data[-100] ^= 0xFF  # corrupt tensor data: reading it would fail the checksum
    open(weights(folder), "wb").write(bytes(data))
    message = _load_error(folder, "1 tensors are not part of the model (e.g. ['model.extra.payload'])")
    assert "no tensor data was read" in message and "checksum" not in message


def test_wrong_key_names(folder):
    state = load_file(weights(folder))
    state.pop(CHECKSUM_KEY)
    state = {k.replace("model.", "backbone.", 1): v for k, v in state.items()}
    state[CHECKSUM_KEY] = state_dict_checksum(state)
    save_file(state, weights(folder), metadata={"format": "pt"})
    message = _load_error(folder, "does the file belong to this config.json")
    assert "backbone." in message and "tensors the model needs are missing" in message


def test_weights_of_another_shape(folder):
    config_path = os.path.join(folder, "config.json")
    config = json.loads(open(config_path).read())
    config["id2label"] = {str(i): f"c{i}" for i in range(5)}
    config["label2id"] = {f"c{i}": i for i in range(5)}
    open(config_path, "w").write(json.dumps(config))
    _load_error(folder, "the classifier does not fit the config (arch=resnet20, w_bits=2, a_bits=2, num_labels=5): "
                        "model.fc.bias (3,) (config: (5,))")
    with pytest.raises(RuntimeError, match="the classifier does not fit"):  # what transformers raises there
        AutoModelForImageClassification.from_pretrained(folder)


def test_nan_weights(folder):
    metadata = _metadata(folder)
    state = load_file(weights(folder))
    state["model.fc.bias"][0] = float("nan")
    state[CHECKSUM_KEY] = state_dict_checksum(state)
    save_file(state, weights(folder), metadata=metadata)
    _load_error(folder, "'model.fc.bias' holds NaN or infinite values")


def test_missing_weights_file_and_pickle_is_refused(folder):
    state = UniQForImageClassification.from_pretrained(folder).state_dict()
    os.remove(weights(folder))
    with pytest.raises(OSError, match=r"no file named model\.safetensors found in directory") as info:
        UniQForImageClassification.from_pretrained(folder)
    assert folder in str(info.value)
    torch.save(state, os.path.join(folder, "pytorch_model.bin"))  # (the real torch.save: writing is fine)
    with pytest.raises(OSError, match=r"model\.safetensors"):
        AutoModelForImageClassification.from_pretrained(folder)
    with pytest.raises(ValueError, match=r"safetensors only; use_safetensors=False \(pickle\) is refused"):
        AutoModelForImageClassification.from_pretrained(folder, use_safetensors=False)


def test_missing_config(folder):
    os.remove(os.path.join(folder, "config.json"))
    with pytest.raises(OSError, match="config.json") as info:
        UniQForImageClassification.from_pretrained(folder)
    assert folder in str(info.value)


def test_missing_folder(tmp_path):
    with pytest.raises(OSError):
        UniQForImageClassification.from_pretrained(str(tmp_path / "nowhere"), local_files_only=True)


def test_not_an_image(tmp_path, folder):
    text, truncated = tmp_path / "notes.png", tmp_path / "cut.png"
    text.write_text("this is not an image")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    processor = UniQImageProcessor()
    for path, problem in ((text, "cannot identify image file"), (truncated, "")):
        with pytest.raises(ValueError) as info:
            processor(str(path))
        message = str(info.value)
        assert str(path) in message and "not a readable image file" in message and problem in message
    with pytest.raises(FileNotFoundError, match="no such image file"):
        processor(str(tmp_path / "missing.png"))
    with pytest.raises(ValueError, match="expected an image .* got dict"):
        processor({"pixel_values": 1})
    with pytest.raises(ValueError, match="unsupported image array dtype complex128"):
        processor(torch.zeros(4, 4, dtype=torch.complex128).numpy())
    with pytest.raises(ValueError, match="an image must have 1-4 channels"):
        processor(torch.zeros(6, 8, 8, dtype=torch.uint8).numpy(), input_data_format="channels_first")
    pipe = pipeline("image-classification", model=folder)
    with pytest.raises(Exception) as info:  # raised by transformers' own image loading
        pipe(str(text))
    assert str(text) in str(info.value) and "cannot identify image file" in str(info.value)


@pytest.mark.parametrize("key, value", [("image_std", [0.0]), ("image_std", [-0.5]), ("image_mean", [float("nan")])])
def test_processor_config_with_impossible_normalisation_is_refused(folder, key, value):
    """A zero / negative std (division by it) or a NaN mean in preprocessor_config.json is refused at load."""
    from uniq_hub import UniQImageProcessor

    path = os.path.join(folder, "preprocessor_config.json")
    with open(path) as f:
        config = json.load(f)
    config[key] = value * len(config[key])
    with open(path, "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match=f"{key} must be"):
        UniQImageProcessor.from_pretrained(folder)


def test_a_huge_declared_shape_is_refused_from_the_header(folder):
    """A sparse file (no data on disk) whose header declares ``fc.bias`` as [2^31] floats is refused before any
    tensor is read: no 8 GiB allocation, and the error names the key and both shapes, not the checksum."""
    import resource
    import struct

    path = weights(folder)
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    huge, kept, start = 2 ** 31 * 4, b"", 0
    for key, info in sorted(header.items(), key=lambda kv: kv[1].get("data_offsets", [0])[0]):
        if key in ("__metadata__", "model.fc.bias"):
            continue
        begin, end = info["data_offsets"]
        kept += data[begin:end]
        info["data_offsets"], start = [start, start + end - begin], start + end - begin
    data = kept  # fc.bias last: the only tensor whose bytes are not on disk
    header["model.fc.bias"]["shape"] = [2 ** 31]
    header["model.fc.bias"]["data_offsets"] = [len(data), len(data) + huge]
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)
        f.truncate(8 + len(text) + len(data) + huge)  # sparse: nothing written
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    message = _load_error(folder, "'model.fc.bias' is declared with shape [2147483648], but the config")
    assert "builds [3]" in message and "no tensor data was read" in message and "checksum" not in message
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 1024 * 1024  # KiB: under 1 GiB more
