"""Preprocessing and pipeline("image-classification"): any PIL mode, any size, files, grayscale models."""

from __future__ import annotations

import builtins
import functools

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images
from transformers import AutoImageProcessor, pipeline

from tiny_models import tiny_model
from uniq_hub import UniQConfig, UniQForImageClassification, UniQImageProcessor, imagenet_id2label

MODES = ["RGB", "L", "LA", "RGBA", "P", "PA", "CMYK", "YCbCr", "1", "I;16", "I", "F"]
SIZES = [(1, 1), (7, 300), (45, 33)]
LABELS = {0: "cat", 1: "dog", 2: "bird", 3: "fish"}


@functools.lru_cache(maxsize=None)
def _photo(size=(45, 33)) -> Image.Image:
    """A real photo (scikit-learn's sample image), resized."""
    return Image.fromarray(load_sample_images().images[1]).resize(size)


def as_mode(image: Image.Image, mode: str) -> Image.Image:
    """``image`` in PIL ``mode``; 16-bit / float modes keep the full range of the 8-bit values."""
    gray = np.asarray(image.convert("L"), dtype=np.float64)
    if mode == "I;16":
        return Image.fromarray((gray * 257).astype(np.uint16))
    if mode == "I":
        return Image.fromarray((gray * 257).astype(np.int32))
    if mode == "F":
        return Image.fromarray((gray / 255).astype(np.float32))
    if mode == "PA":
        return image.convert("RGBA").convert("PA")
    if mode == "P":
        return image.convert("P", palette=Image.Palette.ADAPTIVE)
    return image.convert(mode)


def _save(folder, num_channels: int) -> str:
    model = tiny_model(id2label=LABELS, num_channels=num_channels, image_size=28 if num_channels == 1 else 32,
                       image_mean=[0.3] * num_channels, image_std=[0.35] * num_channels)
    model.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def rgb_folder(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("rgb"), 3)


@pytest.fixture(scope="module")
def gray_folder(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("gray"), 1)


def _check(result, labels=LABELS):
    assert [sorted(r) for r in result] == [["label", "score"]] * len(labels)
    assert {r["label"] for r in result} == set(labels.values())
    assert abs(sum(r["score"] for r in result) - 1) < 1e-5


# ---------------------------------------------------------------------------------------------
# The image processor
# ---------------------------------------------------------------------------------------------


def test_processor_saved_with_explicit_sizes_and_type(rgb_folder, gray_folder):
    rgb, gray = AutoImageProcessor.from_pretrained(rgb_folder), AutoImageProcessor.from_pretrained(gray_folder)
    assert type(rgb) is UniQImageProcessor and type(gray) is UniQImageProcessor
    assert (rgb.size.shortest_edge, rgb.crop_size.height, rgb.crop_size.width, rgb.num_channels) == (32, 32, 32, 3)
    assert (gray.size.shortest_edge, gray.crop_size.height, gray.num_channels) == (28, 28, 1)
    assert list(gray.image_mean) == [0.3] and list(gray.image_std) == [0.35]
    imagenet = UniQImageProcessor.from_model_config(UniQConfig(arch="resnet18", num_labels=1000))
    assert (imagenet.size.shortest_edge, imagenet.crop_size.height, imagenet.crop_size.width) == (256, 224, 224)
    assert tuple(imagenet.image_mean) == (0.485, 0.456, 0.406) and tuple(imagenet.image_std) == (0.229, 0.224, 0.225)


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("mode", MODES)
def test_processor_converts_every_mode_and_size(mode, channels):
    processor = UniQImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, num_channels=channels,
        image_mean=[0.5] * channels, image_std=[0.5] * channels,
    )
    for size in SIZES:
        image = as_mode(_photo(size), mode)
        assert image.mode == mode
        out = processor(image, return_tensors="pt")["pixel_values"]
        assert out.shape == (1, channels, 32, 32) and out.dtype == torch.float32
        assert torch.isfinite(out).all() and out.min() >= -1 - 1e-6 and out.max() <= 1 + 1e-6
    # The same picture gives (nearly) the same input whatever its mode (palettes and 1-bit
    # dithering change the pixels, colour -> gray drops the colour).
    reference = processor(_photo().convert("RGB" if channels == 3 else "L"), return_tensors="pt")["pixel_values"]
    out = processor(as_mode(_photo(), mode), return_tensors="pt")["pixel_values"]
    tolerance = {"P": 0.2, "PA": 0.2, "1": 1.0, "YCbCr": 0.1}.get(mode, 0.02)
    if channels == 3 and mode in ("L", "LA", "1", "I;16", "I", "F"):  # gray input: compare to gray
        reference = processor(_photo().convert("L"), return_tensors="pt")["pixel_values"]
    assert (out - reference).abs().mean() < tolerance, mode


def test_16_bit_images_are_scaled_not_clipped():
    processor = UniQImageProcessor(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8}, num_channels=1,
                                   image_mean=[0.0], image_std=[1.0])
    ramp = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
    for image in (Image.fromarray(ramp), ramp, Image.fromarray(ramp.astype(np.int32))):
        out = processor(image, return_tensors="pt")["pixel_values"][0, 0]
        assert torch.allclose(out, torch.from_numpy(ramp / 65535.0).float(), atol=1e-5)
    dark = Image.fromarray(np.full((8, 8), 1000, np.uint16))  # 1000 / 65535: dark gray, not white
    assert processor(dark, return_tensors="pt")["pixel_values"].max() < 0.02


def test_alpha_is_dropped_as_pil_does_and_color_to_luma():
    """The pipeline converts PIL images with convert("RGB") (alpha dropped) before the processor
    runs; the processor does the same, so both give the same input (tests/test_preprocessing.py)."""
    processor = UniQImageProcessor(size={"shortest_edge": 4}, crop_size={"height": 4, "width": 4}, num_channels=3,
                                   image_mean=[0.0] * 3, image_std=[1.0] * 3)
    transparent = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    red = torch.tensor([1.0, 0, 0])[None, :, None, None].expand(1, 3, 4, 4)
    assert torch.equal(processor(transparent, return_tensors="pt")["pixel_values"], red)
    half = Image.new("LA", (4, 4), (0, 128))
    assert torch.equal(processor(half, return_tensors="pt")["pixel_values"], torch.zeros(1, 3, 4, 4))
    gray = UniQImageProcessor(size={"shortest_edge": 4}, crop_size={"height": 4, "width": 4}, num_channels=1,
                              image_mean=[0.0], image_std=[1.0])
    red = gray(Image.new("RGB", (4, 4), (255, 0, 0)), return_tensors="pt")["pixel_values"]
    assert red.shape == (1, 1, 4, 4) and torch.allclose(red, torch.full_like(red, 0.299))


def test_processor_accepts_arrays_tensors_paths_and_batches(tmp_path):
    processor = UniQImageProcessor()
    photo = _photo((64, 48))
    photo.save(tmp_path / "photo.png")
    expected = processor(photo, return_tensors="pt")["pixel_values"]
    for image in (str(tmp_path / "photo.png"), tmp_path / "photo.png", np.asarray(photo),
                  torch.from_numpy(np.asarray(photo).copy()).permute(2, 0, 1)):
        assert torch.equal(processor(image, return_tensors="pt")["pixel_values"], expected)
    # float input is resized in float, 8-bit input in uint8 (as transformers does): within one 8-bit step
    as_float = processor(np.asarray(photo) / 255.0, return_tensors="pt")["pixel_values"]
    assert torch.allclose(as_float, expected, atol=1.01 / 255 / min(processor.image_std))
    batch = processor([photo, photo.convert("L"), np.zeros((5, 9), np.uint8)], return_tensors="pt")["pixel_values"]
    assert batch.shape == (3, 3, 224, 224)


# ---------------------------------------------------------------------------------------------
# pipeline("image-classification")
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["rgb", "gray"])
def test_pipeline_on_pil_images_of_every_mode_and_size(which, rgb_folder, gray_folder, monkeypatch):
    def no_prompt(*args):
        raise AssertionError(f"pipeline() asked on stdin: {args}")

    monkeypatch.setattr(builtins, "input", no_prompt)  # no trust_remote_code question when uniq_hub is imported
    folder = rgb_folder if which == "rgb" else gray_folder
    pipe = pipeline("image-classification", model=folder)
    assert type(pipe.image_processor) is UniQImageProcessor and type(pipe.model) is UniQForImageClassification
    images = [as_mode(_photo(SIZES[i % len(SIZES)]), mode) for i, mode in enumerate(MODES)]
    assert [image.mode for image in images] == MODES
    results = pipe(images, top_k=None, batch_size=len(images))
    assert len(results) == len(MODES)
    for result in results:
        _check(result)
    # What the pipeline returns is the model on the processor's input.
    photo = _photo((50, 70))
    result = {r["label"]: r["score"] for r in pipe(photo, top_k=None)}
    with torch.no_grad():
        probs = pipe.model(**pipe.image_processor(photo, return_tensors="pt")).logits.softmax(-1)[0]
    assert all(abs(result[LABELS[i]] - probs[i].item()) < 1e-6 for i in LABELS)
    # 16-bit images keep their range when given as arrays (the pipeline makes PIL images 8-bit RGB).
    ramp16 = Image.fromarray((np.asarray(photo.convert("L"), dtype=np.float64) * 257).astype(np.uint16))
    via_array = pipe.preprocess(np.asarray(ramp16))["pixel_values"]
    via_8bit = pipe.preprocess(np.asarray(photo.convert("L")))["pixel_values"]
    std = min(pipe.image_processor.image_std)  # 8-bit input is resized in uint8: within one 8-bit step
    assert torch.allclose(via_array, via_8bit, atol=1.01 / 255 / std) and via_array.max() < via_8bit.max() + 0.01


def test_pipeline_on_files(tmp_path, rgb_folder, gray_folder):
    photo = _photo((60, 40))
    files = {
        "rgb.jpg": photo, "gray.png": photo.convert("L"), "la.png": photo.convert("LA"),
        "rgba.png": photo.convert("RGBA"),
        "palette.gif": photo.convert("P"), "cmyk.jpg": photo.convert("CMYK"), "bits.bmp": photo.convert("1"),
        "deep.png": as_mode(photo, "I;16"), "deep.tiff": as_mode(photo, "I;16"), "tiny.png": photo.resize((1, 1)),
    }
    for name, image in files.items():
        image.save(tmp_path / name)
    for folder in (rgb_folder, gray_folder):
        pipe = pipeline("image-classification", model=folder)
        results = pipe([str(tmp_path / name) for name in files], top_k=2, batch_size=len(files))
        assert len(results) == len(files)
        for result in results:
            assert len(result) == 2 and {r["label"] for r in result} <= set(LABELS.values())


def test_pipeline_on_a_real_photo_with_imagenet_labels(tmp_path):
    model = tiny_model("resnet18", 4, id2label=imagenet_id2label(), calibration=(2, 32))
    model.save_pretrained(tmp_path)
    pipe = pipeline("image-classification", model=str(tmp_path))
    path = load_sample_images().filenames[0]  # china.jpg, 427 x 640
    assert pipe.image_processor(path, return_tensors="pt")["pixel_values"].shape == (1, 3, 224, 224)
    result = pipe(path)
    assert len(result) == 5 and all(r["label"] in set(model.config.id2label.values()) for r in result)
    assert result == sorted(result, key=lambda r: -r["score"])
