"""One preprocessing contract: the image processor. The evaluation transform is the processor, the
training transform is its input conversion and normalisation around a random geometry, and the
pipeline (which converts PIL images with ``convert("RGB")`` first) gives the same tensor, so
``uniq-hub evaluate``, training and ``pipeline("image-classification")`` see the same input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from transformers import pipeline
from transformers.image_utils import load_image

from train_helpers import eager_kernels  # noqa: F401
from uniq_hub import UniQConfig, UniQForImageClassification, calibrate
from uniq_hub.cli import main
from uniq_hub.training import data
from uniq_hub.training.evaluate import evaluate

MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "F"]
EIGHT_BIT = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK"]  # the modes the pipeline converts without loss


def _picture(mode: str, size=(23, 17), seed: int = 0) -> Image.Image:
    """Random pixels in ``mode``; RGBA / LA / P carry fully and partly transparent pixels."""
    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (h, w)).astype(np.uint16))
    if mode == "F":
        return Image.fromarray(rng.random((h, w)).astype(np.float32))
    rgba = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    rgba[: h // 2, :, 3] = 0  # the top half fully transparent (its colour is random, not black)
    image = Image.fromarray(rgba, "RGBA")
    if mode == "P":
        image = image.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        image.info["transparency"] = 3  # palette entry 3 is transparent
        return image
    if mode == "LA":
        return Image.fromarray(rgba[..., [0, 3]], "LA")
    return image if mode == "RGBA" else image.convert(mode)


def _deterministic_part(transform: v2.Compose) -> v2.Compose:
    """The training transform without its random steps."""
    return v2.Compose([t for t in transform.transforms if not type(t).__name__.startswith("Random")])


@pytest.mark.parametrize("num_channels", [1, 3])
@pytest.mark.parametrize("mode", MODES)
def test_training_and_evaluation_transforms_are_the_processor(mode, num_channels):
    image = _picture(mode)
    assert image.mode == mode
    for image_size in (16, 24):  # resized + cropped (16) and padded up (24)
        processor = data.processor_for(num_channels=num_channels, image_size=image_size, mean=(0.4,), std=(0.3,))
        expected = processor(image, return_tensors="pt")["pixel_values"][0]
        assert expected.shape == (num_channels, image_size, image_size) and torch.isfinite(expected).all()
        assert torch.equal(data.eval_transform(processor)(image), expected)
        train = data.train_transform(processor, "small")
        steps = [type(t).__name__ for t in train.transforms]
        assert steps == ["ProcessorInput", "ProcessorResizeCrop", "RandomCrop", "RandomHorizontalFlip",
                         "ProcessorNormalize"]
        assert torch.equal(_deterministic_part(train)(image), expected)  # the same tensor, bit for bit
        out = train(image)
        assert out.shape == expected.shape and out.dtype == torch.float32
    # 8-bit pictures for an RGB model stay uint8 until normalised (torchvision's fast uint8 resize)
    converted = data.ProcessorInput(processor)(image)
    assert converted.dtype == (torch.uint8 if num_channels == 3 and mode in EIGHT_BIT else torch.float32)
    big = data.processor_for(num_channels=num_channels, image_size=8)
    imagenet = data.train_transform(big, "imagenet")
    assert [type(t).__name__ for t in imagenet.transforms] == ["ProcessorInput", "RandomResizedCrop",
                                                               "RandomHorizontalFlip", "ProcessorNormalize"]
    assert imagenet(image).shape == (num_channels, 8, 8)
    # the conversion and the normalisation of the training transform are the processor's own
    plain = big.rescale_and_normalize(data.ProcessorInput(big)(image)[None], True, 1 / 255, True,
                                      big.image_mean, big.image_std)[0]
    assert torch.equal(v2.Compose([imagenet.transforms[0], imagenet.transforms[-1]])(image), plain)


@pytest.mark.parametrize("num_channels", [1, 3])
@pytest.mark.parametrize("mode", EIGHT_BIT)
def test_the_pipelines_pil_conversion_gives_the_same_tensor(mode, num_channels):
    """transformers' pipeline runs ``load_image`` (PIL ``convert("RGB")``) before the processor."""
    image = _picture(mode)
    processor = data.processor_for(num_channels=num_channels, image_size=16, mean=(0.4,), std=(0.3,))
    direct = processor(image, return_tensors="pt")["pixel_values"]
    assert torch.equal(processor(load_image(image), return_tensors="pt")["pixel_values"], direct)


def test_read_only_image_buffers_are_copied_not_shared():
    """PIL hands out read-only buffers; the tensor must own writable memory (torch warns on every
    such image otherwise, once per data-loader worker) and leave the image untouched."""
    import warnings

    from uniq_hub.model.image_processing_uniq import to_image_tensor

    pixels = np.arange(64, dtype=np.uint8).reshape(8, 8)
    frozen = pixels.copy()
    frozen.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = to_image_tensor(frozen, 1)
        to_image_tensor(Image.fromarray(pixels), 1)
    x += 1  # writable, and not the image's memory
    assert np.array_equal(frozen, pixels) and torch.equal(x[0], torch.from_numpy(pixels) + 1)


def test_transparent_pixels_keep_their_colour():
    """Alpha is dropped as PIL drops it; it is not composited (over black or white)."""
    pixels = np.zeros((5, 6, 4), np.uint8)
    pixels[..., :3] = (10, 200, 30)  # alpha 0 everywhere
    processor = data.processor_for(num_channels=3, image_size=4, mean=(0.0,), std=(1.0,))
    out = processor(Image.fromarray(pixels, "RGBA"), return_tensors="pt")["pixel_values"][0]
    assert torch.allclose(out[:, 0, 0], torch.tensor([10, 200, 30]) / 255.0)
    assert torch.equal(processor(pixels, return_tensors="pt")["pixel_values"][0], out)  # arrays: the same


# ---------------------------------------------------------------------------------------------
# uniq-hub evaluate against pipeline("image-classification")

LABELS = {0: "zebra", 1: "mole", 2: "ant"}  # reverse alphabetical: folder order differs from id2label


def _images(n: int) -> list[Image.Image]:
    """RGBA (mostly transparent), LA, P with transparency and CMYK pictures of varied colours."""
    modes = ["RGBA", "LA", "P", "CMYK"]
    out = []
    for i in range(n):
        picture = _picture(modes[i % 4], size=(20 + i % 5, 18), seed=i)
        if picture.mode == "RGBA":  # bright colours under alpha 0: white if composited, colours if not
            pixels = np.asarray(picture).copy()
            pixels[..., 3] = np.where(np.arange(pixels.shape[0])[:, None] < 15, 0, pixels[..., 3])
            picture = Image.fromarray(pixels, "RGBA")
        out.append(picture)
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A w2a2 ResNet-20 whose BatchNorm statistics come from the test pictures and whose classifier
    is centred on their features, so that its predictions vary between them."""
    torch.manual_seed(0)
    config = UniQConfig(arch="resnet20", w_bits=2, a_bits=2, id2label=LABELS, num_channels=3, image_size=16,
                        image_mean=[0.5] * 3, image_std=[0.25] * 3)
    model = UniQForImageClassification(config)
    pixels = data.processor_for(num_channels=3, image_size=16, mean=(0.5,), std=(0.25,))(
        _images(24), return_tensors="pt")["pixel_values"]
    calibrate(model.model, [pixels], 1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the one batch below
    features = {}
    hook = model.model.fc.register_forward_hook(lambda m, args, out: features.update(x=args[0]))
    with torch.no_grad():
        model.train()(pixels)
        model.eval()(pixels)
        hook.remove()
        weight = torch.randn(3, features["x"].shape[1]) / (features["x"].std(0) + 1e-3)
        model.model.fc.weight.copy_(weight)
        model.model.fc.bias.copy_(-weight @ features["x"].mean(0))
    calibrate(model.model, [pixels], 1)
    folder = tmp_path_factory.mktemp("model")
    model.eval().save_pretrained(folder)
    return str(folder)


def test_evaluate_agrees_with_the_pipeline_on_an_imagefolder(model_dir, tmp_path):
    pipe = pipeline("image-classification", model=model_dir)
    images = _images(24)
    predicted = [pipe(image, top_k=1)[0]["label"] for image in images]
    assert len(set(predicted)) >= 2, predicted  # else the test could not see a label mix-up
    # each image goes into the folder of the class the pipeline predicts: the pipeline scores 100%
    tree = tmp_path / "tree"
    paths = []
    for i, (image, label) in enumerate(zip(images, predicted)):
        path = tree / label / f"{i:02d}.{'tiff' if image.mode == 'CMYK' else 'png'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        paths.append(path)
    folders = sorted(p.name for p in tree.iterdir())  # the dataset's ids: alphabetical
    assert folders != [name for name in LABELS.values() if name in folders]  # not the model's order
    assert [pipe(str(p), top_k=1)[0]["label"] for p in paths] == predicted  # the files load as the images

    # batch 1 as the pipeline: the same tensors then give the same logits, bit for bit (a batch of 8
    # may take other kernels, whose last-ulp differences can flip a quantization level)
    record = evaluate(model_dir, str(tree), "train", batch_size=1, num_workers=0)
    assert record["num_examples"] == 24 and record["top1"] == 100.0  # by name, and the same tensors

    # the tensors themselves: evaluate's loader against the pipeline's preprocessing
    ds = data.load_image_dataset(str(tree), "train")
    processor = pipe.image_processor
    loader = data.make_dataloader(ds, data.eval_transform(processor), 24, False,
                                  label_map=data.label_mapping(data.class_names(ds), LABELS))
    (pixels, labels), = list(loader)
    assert [LABELS[int(y)] for y in labels] == [data.class_names(ds)[row["label"]] for row in ds]
    by_pipe = torch.cat([pipe.preprocess(row["image"])["pixel_values"] for row in ds])
    assert torch.equal(pixels, by_pipe)

    (tree / "yak").mkdir()
    images[0].save(tree / "yak" / "y.png")
    with pytest.raises(ValueError, match=r"has classes the model does not know: \['yak'\]"):
        evaluate(model_dir, str(tree), "train", batch_size=8, num_workers=0)
    with pytest.raises(SystemExit, match=r"^uniq-hub evaluate: dataset .* does not know: \['yak'\]"):
        main(["evaluate", model_dir, "--dataset", str(tree), "--split", "train", "--num-workers", "0", "--no-progress"])


# ---------------------------------------------------------------------------------------------
# Bad inputs


def test_bad_inputs_are_clear_value_errors():
    processor = data.processor_for(num_channels=3, image_size=8)
    nan = np.full((8, 8, 3), 0.5, np.float32)
    nan[2, 3, 1] = np.nan
    for bad in (nan, np.where(nan == nan, np.inf, 0).astype(np.float64), torch.from_numpy(nan)):
        with pytest.raises(ValueError, match="NaN or infinite pixel values"):
            processor(bad)
    with pytest.raises(ValueError, match="NaN or infinite pixel values"):
        processor(Image.fromarray(np.full((4, 4), np.nan, np.float32)))
    for empty in (Image.new("RGB", (0, 0)), np.zeros((0, 5, 3), np.uint8)):
        with pytest.raises(ValueError, match="an image must have pixels"):
            processor(empty)
    for nothing in ([], ()):
        with pytest.raises(ValueError, match="no images given"):
            processor(nothing)
    for dtype in (np.float16, np.float32, np.float64):  # any float dtype: values in 0..1
        out = processor(np.full((8, 8, 3), 0.25, dtype), return_tensors="pt")["pixel_values"]
        assert out.dtype == torch.float32 and out.shape == (1, 3, 8, 8)
    half = processor(torch.full((3, 8, 8), 0.25, dtype=torch.bfloat16), return_tensors="pt")["pixel_values"]
    assert torch.allclose(half, out)


def test_the_model_casts_float_inputs_and_refuses_bad_ones(model_dir):
    model = UniQForImageClassification.from_pretrained(model_dir).eval()
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(pixels).logits
        for dtype in (torch.float64, torch.float16, torch.bfloat16):  # cast to the weights' dtype
            out = model(pixels.to(dtype)).logits
            assert out.dtype == torch.float32 and torch.equal(out, model(pixels.to(dtype).float()).logits)
        assert torch.equal(model(pixels.double()).logits, expected)  # float64 -> float32 is exact here
        with pytest.raises(ValueError, match="must be a floating-point tensor .* got torch.uint8"):
            model(pixels.to(torch.uint8))
        bad = pixels.clone()
        bad[1, 2, 3, 4] = float("nan")
        with pytest.raises(ValueError, match="NaN or infinite"):
            model(bad)
        with pytest.raises(ValueError, match=r"pixel_values is empty \(shape \(0, 3, 16, 16\)\)"):
            model(torch.zeros(0, 3, 16, 16))


def test_url_fetches_time_out():
    """A server that accepts the connection and never answers: a clear error after the timeout."""
    import socket
    import time

    from uniq_hub import UniQImageProcessor

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        url = f"http://127.0.0.1:{server.getsockname()[1]}/cat.png"
        processor = UniQImageProcessor(fetch_timeout=0.5)
        assert processor.fetch_timeout == 0.5
        start = time.perf_counter()
        with pytest.raises(ValueError, match=f"{url}: could not fetch the image within 0.5 s"):
            processor(url)
        assert time.perf_counter() - start < 5
