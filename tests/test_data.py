"""Data layer: Fashion-MNIST offline fallback, imagefolder / save_to_disk sources, column detection,
errors, transforms over every PIL mode, labels by name, degenerate splits, corrupt images, and the
seeded DataLoader. Nothing touches the network."""

from __future__ import annotations

import gzip
import logging
import time
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, IterableDataset, Value
from datasets import Image as ImageFeature
from PIL import Image

from uniq_hub.training.data import availability
from uniq_hub.training.data.availability import DatasetUnavailableError
from uniq_hub.training.data.columns import class_names, detect_columns, label_mapping
from uniq_hub.training.data.fashion_mnist import FASHION_MNIST_CLASSES
from uniq_hub.training.data.loader import make_dataloader
from uniq_hub.training.data.sources import load_image_dataset
from uniq_hub.training.data.splits import balanced_indices, check_batch_fits, check_training_split
from uniq_hub.training.data.transforms import (
    NORMALIZATION,
    eval_transform,
    make_transform,
    normalization_stats,
    processor_for,
    train_transform,
)

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not (FMNIST / "t10k-labels-idx1-ubyte.gz").is_file(),
                                  reason="Debian package dataset-fashion-mnist not installed")


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("fmnist_cache"))


def _raw(name: str, offset: int, start: int, count: int) -> bytes:
    with gzip.open(FMNIST / name, "rb") as f:
        return f.read()[offset + start: offset + start + count]


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST fallback


@needs_fmnist
@pytest.mark.parametrize("source, split, n, labels, images", [
    ("zalando-datasets/fashion_mnist", "train", 60_000, "train-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz"),
    ("fashion_mnist", "test", 10_000, "t10k-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"),
])
def test_fashion_mnist_fallback_matches_idx(cache, caplog, source, split, n, labels, images):
    with caplog.at_level(logging.WARNING, logger="uniq_hub.training.data"):
        ds = load_image_dataset(source, split, cache_dir=cache)
    assert "not reachable" in caplog.text
    assert isinstance(ds, Dataset) and len(ds) == n
    assert ds.column_names == ["image", "label"]
    assert isinstance(ds.features["image"], ImageFeature)
    assert class_names(ds) == list(FASHION_MNIST_CLASSES) and len(FASHION_MNIST_CLASSES) == 10
    for i in (0, 1, 777, n - 1):
        row = ds[i]
        assert row["image"].mode == "L" and row["image"].size == (28, 28)
        assert row["label"] == _raw(labels, 8, i, 1)[0]
        assert np.asarray(row["image"]).tobytes() == _raw(images, 16, i * 784, 784)


@needs_fmnist
def test_fashion_mnist_fallback_is_cached_and_maps_validation(cache, caplog):
    load_image_dataset("fashion_mnist", "test", cache_dir=cache)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="uniq_hub.training.data"):
        start = time.perf_counter()
        ds = load_image_dataset("Zalando-Datasets/Fashion-MNIST", "validation", cache_dir=cache)
        elapsed = time.perf_counter() - start
    assert len(ds) == 10_000  # no validation split: the test split
    assert "converting" not in caplog.text  # served from the cache ...
    assert elapsed < 5
    with pytest.raises(ValueError, match=r"available splits: \['test', 'train'\]"):
        load_image_dataset("fashion_mnist", "extra", cache_dir=cache)


@needs_fmnist
def test_fashion_mnist_limit_is_class_balanced_and_deterministic(cache):
    a = load_image_dataset("fashion_mnist", "test", cache_dir=cache, limit=25)
    b = load_image_dataset("fashion_mnist", "test", cache_dir=cache, limit=25)
    assert len(a) == 25 and list(a["label"]) == list(b["label"])
    assert sorted(Counter(a["label"]).values()) == [2] * 5 + [3] * 5
    stream = load_image_dataset("fashion_mnist", "train", cache_dir=cache, limit=7, streaming=True)
    assert isinstance(stream, IterableDataset)
    rows = list(stream)
    assert len(rows) == 7 and len({r["label"] for r in rows}) == 7


def test_balanced_indices():
    labels = np.array([0, 0, 0, 0, 1, 2, 2])
    assert balanced_indices(labels, 4).tolist() == [0, 1, 4, 5]
    assert balanced_indices(labels, 100).tolist() == list(range(7))


# ---------------------------------------------------------------------------------------------
# Errors and reachability


@pytest.mark.parametrize("source, match", [
    ("uoft-cs/cifar100", r"'uoft-cs/cifar100'.*not reachable.*save_to_disk"),
    ("./no/such/dataset_dir", r"no such directory: './no/such/dataset_dir'"),
    ("/definitely/missing/dir", r"no such directory"),
])
def test_unavailable_sources_fail_fast_and_clearly(tmp_path, source, match):
    start = time.perf_counter()
    with pytest.raises(DatasetUnavailableError, match=match):
        load_image_dataset(source, "test", cache_dir=str(tmp_path))
    assert time.perf_counter() - start < 10


def test_hub_probe_is_bounded(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9/uniq-hub-probe-test")
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: time.sleep(30))
    availability.probe_endpoint.cache_clear()
    start = time.perf_counter()
    assert availability.hub_reachable(timeout=0.5) is False
    assert time.perf_counter() - start < 2
    availability.probe_endpoint.cache_clear()


def test_hub_offline_env_skips_probe(monkeypatch):
    calls = []
    monkeypatch.setattr(availability, "probe_endpoint", lambda *a: calls.append(a) or True)
    assert availability.hub_reachable() is False and calls == []


# ---------------------------------------------------------------------------------------------
# imagefolder


def _write_png(path: Path, mode: str, size: tuple[int, int], value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        Image.fromarray(np.full(size[::-1], value * 257, np.uint16)).save(path)
    else:
        Image.new(mode, size, value if mode in ("L", "P") else (value,) * len(mode)).save(path)


def test_imagefolder_uses_folder_names_as_classes(tmp_path):
    specs = {"cats": [("RGB", (10, 12)), ("L", (7, 5)), ("I;16", (6, 6))],
             "dogs": [("RGBA", (40, 30)), ("P", (9, 9)), ("LA", (3, 20))]}
    for cls, files in specs.items():
        for i, (mode, size) in enumerate(files):
            _write_png(tmp_path / "tree" / cls / f"{i}.png", mode, size)
    ds = load_image_dataset(str(tmp_path / "tree"), "train", cache_dir=str(tmp_path / "c"))
    assert class_names(ds) == ["cats", "dogs"] and len(ds) == 6
    assert Counter(ds["label"]) == {0: 3, 1: 3}
    assert {r["image"].mode for r in ds} >= {"RGB", "L", "I;16", "RGBA"}
    # a tree without split folders is one split, whatever is asked for
    assert len(load_image_dataset(str(tmp_path / "tree"), "validation", cache_dir=str(tmp_path / "c"))) == 6
    loader = make_dataloader(ds, make_transform("small", False, image_size=16, mean=(0.5,), std=(0.5,)), 4, False)
    (x1, y1), (x2, y2) = list(loader)
    assert x1.shape == (4, 3, 16, 16) and x2.shape == (2, 3, 16, 16)
    assert torch.cat([y1, y2]).tolist() == list(ds["label"])


def test_imagefolder_split_folders(tmp_path):
    for split, classes in {"train": ["ants", "bees", "wasps"], "val": ["ants", "wasps"]}.items():
        for cls in classes:
            _write_png(tmp_path / "tree" / split / cls / "x.png", "RGB", (8, 8))
    root, kw = str(tmp_path / "tree"), dict(cache_dir=str(tmp_path / "c"))
    val = load_image_dataset(root, "validation", **kw)
    assert len(val) == 2 and class_names(val) == ["ants", "bees", "wasps"]  # ids agree with train
    assert sorted(val["label"]) == [0, 2]
    assert len(load_image_dataset(root, "test", **kw)) == 2  # no test split: val
    assert len(load_image_dataset(root, "train", **kw)) == 3
    with pytest.raises(ValueError, match=r"no split 'holdout'.*\['train', 'val'\]"):
        load_image_dataset(root, "holdout", **kw)


# ---------------------------------------------------------------------------------------------
# save_to_disk and column detection


def _images(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (8, 8), (i * 20, 0, 0)) for i in range(n)]


@pytest.fixture
def cifar_like(tmp_path) -> Path:
    features = Features({"img": ImageFeature(), "fine_label": ClassLabel(names=["apple", "bee", "cup"]),
                         "coarse_label": ClassLabel(names=["food", "insect"])})
    rows = lambda n: {"img": _images(n), "fine_label": [i % 3 for i in range(n)],  # noqa: E731
                      "coarse_label": [i % 2 for i in range(n)]}
    DatasetDict({"train": Dataset.from_dict(rows(6), features=features),
                 "test": Dataset.from_dict(rows(4), features=features)}).save_to_disk(str(tmp_path / "d"))
    return tmp_path / "d"


def test_save_to_disk_detects_unusual_columns(cifar_like):
    ds = load_image_dataset(str(cifar_like), "validation")
    assert len(ds) == 4 and ds.column_names == ["image", "label"]
    assert class_names(ds) == ["apple", "bee", "cup"] and list(ds["label"]) == [0, 1, 2, 0]
    assert ds[1]["image"].getpixel((0, 0)) == (20, 0, 0)
    coarse = load_image_dataset(str(cifar_like), "train", label_column="coarse_label", limit=3)
    assert class_names(coarse) == ["food", "insect"] and list(coarse["label"]) == [0, 1, 0]


def test_column_detection_failures_and_overrides(tmp_path):
    Dataset.from_dict({"x": _images(3), "y": [0, 4, 2], "note": ["a", "b", "c"]},
                      features=Features({"x": ImageFeature(), "y": Value("int64"), "note": Value("string")})
                      ).save_to_disk(str(tmp_path / "odd"))
    source = str(tmp_path / "odd")
    with pytest.raises(ValueError, match=r"label column of dataset '.*odd'.*\['x', 'y', 'note'\]"):
        load_image_dataset(source, "train")
    ds = load_image_dataset(source, "train", label_column="y")  # image found by its feature type
    assert list(ds["label"]) == [0, 4, 2] and class_names(ds) == ["0", "1", "2", "3", "4"]
    with pytest.raises(ValueError, match=r"image column 'pixels' not found.*available columns: \['x', 'y', 'note'\]"):
        load_image_dataset(source, "train", image_column="pixels", label_column="y")
    strings = load_image_dataset(source, "train", label_column="note")
    assert class_names(strings) == ["a", "b", "c"]


def test_detect_columns_prefers_label_name_and_refuses_ambiguity():
    two = Features({"picture": ImageFeature(), "a": ClassLabel(names=["p"]), "b": ClassLabel(names=["q"])})
    ds = Dataset.from_dict({"picture": [], "a": [], "b": []}, features=two)
    with pytest.raises(ValueError, match=r"several ClassLabel columns \[.a., .b.\].*pass label_column"):
        detect_columns(ds)
    assert detect_columns(ds, label_column="b") == ("picture", "b")
    named = Dataset.from_dict({"img": [], "target": []},
                              features=Features({"img": Value("string"), "target": Value("int64")}))
    assert detect_columns(named) == ("img", "target")


# ---------------------------------------------------------------------------------------------
# Transforms

MODES = ["RGB", "L", "LA", "RGBA", "P", "CMYK", "1", "I;16", "I", "F"]


def _image(mode: str, size=(37, 23)) -> Image.Image:
    if mode == "I;16":
        return Image.fromarray(np.full(size[::-1], 32768, np.uint16))
    if mode == "P":
        img = Image.new("P", size, 3)
        img.info["transparency"] = 0
        return img
    return Image.new(mode, size)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("num_channels", [1, 3])
def test_transforms_every_mode_to_num_channels(mode, num_channels):
    img = _image(mode)
    for train in (True, False):
        small = make_transform("small", train, image_size=32, mean=(0.5,), std=(0.25,), num_channels=num_channels)(img)
        assert small.shape == (num_channels, 32, 32) and small.dtype == torch.float32
        big = make_transform("imagenet", train, num_channels=num_channels)(img)
        assert big.shape == (num_channels, 224, 224)
    with pytest.raises(ValueError, match=r"unknown transform style 'fancy'.*\['cifar', 'imagenet', 'small'\]"):
        make_transform("fancy", True)


@pytest.mark.parametrize("num_channels", [1, 3])
def test_sixteen_bit_images_are_scaled_not_clipped(num_channels):
    plain = make_transform("small", False, image_size=8, mean=(0.0,), std=(1.0,), num_channels=num_channels)
    for value, expected in ((32768, 0.5), (65535, 1.0), (1000, 1000 / 65535), (0, 0.0)):
        out = plain(Image.fromarray(np.full((8, 8), value, np.uint16)))
        assert out.shape == (num_channels, 8, 8)
        assert torch.allclose(out, torch.full_like(out, expected), atol=1e-5), (value, out.flatten()[0])


def test_normalisation_stats_and_eval_values():
    assert normalization_stats("zalando-datasets/fashion_mnist") == ((0.2860,), (0.3530,))
    assert normalization_stats("fashion-mnist") == normalization_stats("fashion_mnist")
    assert normalization_stats("ILSVRC/imagenet-1k") == NORMALIZATION["imagenet"]
    assert normalization_stats("uoft-cs/cifar100")[0] == pytest.approx((0.5071, 0.4865, 0.4409))
    with pytest.raises(KeyError, match="known"):
        normalization_stats("mnist-of-the-future")
    grey = Image.new("L", (28, 28), 51)  # 0.2
    mean, std = normalization_stats("fashion_mnist")
    out = make_transform("small", False, num_channels=1, image_size=28, mean=mean, std=std)(grey)
    assert torch.allclose(out, torch.full((1, 28, 28), (0.2 - 0.2860) / 0.3530), atol=1e-5)
    rgb = make_transform("small", False, num_channels=3, image_size=28, mean=mean, std=std)(grey)  # stats repeated
    assert rgb.shape == (3, 28, 28) and torch.allclose(rgb, out.expand(3, -1, -1), atol=1e-5)
    red = make_transform("imagenet", False)(Image.new("RGB", (300, 260), (255, 0, 0)))
    mean, std = NORMALIZATION["imagenet"]
    expected = torch.tensor([(1 - mean[0]) / std[0], -mean[1] / std[1], -mean[2] / std[2]])
    assert torch.allclose(red[:, 100, 100], expected, atol=1e-4)


def test_imagenet_eval_is_resize_then_center_crop():
    arr = np.zeros((256, 512, 3), np.uint8)
    arr[:, 256 - 112:256 + 112] = 255  # a centred white band exactly 224 wide
    out = make_transform("imagenet", False, mean=(0, 0, 0), std=(1, 1, 1))(Image.fromarray(arr))
    assert out.shape == (3, 224, 224) and out.min() > 0.99  # Resize(256) keeps it, CenterCrop(224) is the band


def test_small_training_transform_is_the_processor_plus_a_random_shift_and_flip():
    """Padding 4 and a flip: the training image is the evaluation image shifted by at most 4 pixels."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
    processor = processor_for(num_channels=3, image_size=12, mean=(0.5,), std=(0.5,))
    evaluation = eval_transform(processor)(image)
    train = train_transform(processor, "small")
    torch.manual_seed(0)
    for _ in range(5):
        out = train(image)
        candidates = [evaluation, evaluation.flip(-1)]
        padded = [torch.nn.functional.pad(c, (4, 4, 4, 4), value=-1.0) for c in candidates]  # 0 -> (0 - .5)/.5
        assert any(torch.equal(out, p[:, i:i + 12, j:j + 12]) for p in padded for i in range(9) for j in range(9))


# ---------------------------------------------------------------------------------------------
# Labels and degenerate splits


def test_label_mapping_by_name():
    model = {0: "ankle boot", 1: "T-shirt/top", 2: "bag"}
    assert label_mapping(["bag", "ankle boot"], model) == [2, 0]
    assert label_mapping(["T - shirt / top", "Ankle_Boot"], model) == [1, 0]  # case, spaces, _ ignored
    assert label_mapping(["0", "1"], model) == [0, 1]  # unnamed integer labels are model ids
    with pytest.raises(ValueError, match=r"'tree' has classes the model does not know: \['zebra'\]"):
        label_mapping(["bag", "zebra"], model, source="tree")
    with pytest.raises(ValueError, match=r"labels 0\.\.3 but the model has 3 classes"):
        label_mapping(["0", "1", "2", "3"], model)
    with pytest.raises(ValueError, match="no class names"):
        label_mapping(None, model)


def test_degenerate_training_splits_are_refused():
    ds = _labelled(6)
    check_training_split(ds, class_names(ds), "six", "train", len(ds))
    check_batch_fits(6, 6, "six", "train")
    with pytest.raises(ValueError, match=r"dataset 'six' split 'train' has no examples"):
        check_training_split(ds.select([]), class_names(ds), "six", "train", 0)
    with pytest.raises(ValueError, match=r"'six' split 'train' has 6 examples, fewer than one batch of 8"):
        check_batch_fits(6, 8, "six", "train")
    with pytest.raises(ValueError, match=r"single class \['only'\]"):
        check_training_split(ds, ["only"], "six", "train", 6)
    same = ds.map(lambda row: {"label": 3})
    with pytest.raises(ValueError, match=r"every example has the same class \['3'\]"):
        check_training_split(same, class_names(ds), "six", "train", 6)


def test_a_corrupt_image_is_named(tmp_path):
    for cls in ("a", "b"):
        _write_png(tmp_path / "tree" / cls / "ok.png", "RGB", (8, 8))
    bad = tmp_path / "tree" / "b" / "zz-broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    ds = load_image_dataset(str(tmp_path / "tree"), "train", cache_dir=str(tmp_path / "c"))
    loader = make_dataloader(ds, make_transform("small", False, image_size=8, mean=(0.5,), std=(0.5,)), 3, False,
                             source="tree")
    with pytest.raises(ValueError, match="zz-broken.png .dataset 'tree'.: not a readable image"):
        list(loader)


def test_dataloader_maps_labels():
    ds = _labelled(4)
    plain = make_transform("small", False, image_size=12, mean=(0.0,), std=(1.0,), num_channels=1)
    (_, y), = _batches(make_dataloader(ds, plain, 4, False, label_map=[3, 2, 1, 0]))
    assert y.tolist() == [3, 2, 1, 0]


# ---------------------------------------------------------------------------------------------
# DataLoader


def _labelled(n: int) -> Dataset:
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8), "L") for _ in range(n)]
    return Dataset.from_dict({"image": imgs, "label": list(range(n))},
                             features=Features({"image": ImageFeature(), "label": ClassLabel(num_classes=n)}))


def _batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


def test_dataloader_shapes_dtypes_and_seed_determinism():
    ds = _labelled(20)
    train = make_transform("small", True, image_size=12, mean=(0.5,), std=(0.5,), num_channels=1)
    rng_state = torch.get_rng_state()
    make = lambda seed, **kw: _batches(make_dataloader(ds, train, 8, True, seed=seed, **kw))  # noqa: E731
    a, b, c = make(0), make(0), make(1)
    assert torch.equal(torch.get_rng_state(), rng_state)  # global RNG untouched
    x, y = a[0]
    assert x.dtype == torch.float32 and y.dtype == torch.long and x.shape == (8, 1, 12, 12)
    assert [len(yb) for _, yb in a] == [8, 8, 4]
    assert _same(a, b) and not _same(a, c)
    assert sorted(torch.cat([yb for _, yb in a]).tolist()) == list(range(20))
    assert [len(yb) for _, yb in make(0, drop_last=True)] == [8, 8]
    ordered = make_dataloader(ds, train, 8, False)
    assert torch.cat([yb for _, yb in ordered]).tolist() == list(range(20))


def test_dataloader_workers_are_deterministic():
    ds = _labelled(16)
    train = make_transform("small", True, image_size=12, mean=(0.5,), std=(0.5,), num_channels=1)
    a = _batches(make_dataloader(ds, train, 4, True, num_workers=2, seed=3))
    b = _batches(make_dataloader(ds, train, 4, True, num_workers=2, seed=3))
    assert _same(a, b) and len(a) == 4


def test_dataloader_streaming_and_plain_pairs():
    ds = _labelled(10)
    plain = make_transform("small", False, image_size=12, mean=(0.0,), std=(1.0,), num_channels=3)
    stream = ds.to_iterable_dataset()
    a = _batches(make_dataloader(stream, plain, 4, True, seed=5, shuffle_buffer=8))
    b = _batches(make_dataloader(stream, plain, 4, True, seed=5, shuffle_buffer=8))
    assert _same(a, b) and [len(y) for _, y in a] == [4, 4, 2]
    assert a[0][0].shape == (4, 3, 12, 12)
    assert sorted(torch.cat([y for _, y in a]).tolist()) == list(range(10))
    in_order = _batches(make_dataloader(stream, plain, 4, False))
    assert torch.cat([y for _, y in in_order]).tolist() == list(range(10))
    pairs = [(ds[i]["image"], ds[i]["label"]) for i in range(5)]  # any torch dataset of (image, label)
    (x, y), = _batches(make_dataloader(pairs, plain, 5, False))
    assert y.tolist() == [0, 1, 2, 3, 4] and torch.equal(x[2], plain(ds[2]["image"]))
