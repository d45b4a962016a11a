"""Zoo registry: entries, paper numbers, recipes, measured results from JSON, `uniq-hub zoo`."""

from __future__ import annotations

import json

import pytest

from uniq_hub.catalog import zoo
from uniq_hub.cli import main
from uniq_hub.model.registry import list_models

PAPER = {  # Tables 2 / 3 (ImageNet) and 4 (CIFAR-100 ResNet-32), bits -> top-1
    "resnet18": {4: 71.5, 3: 70.5, 2: 67.8, 1: 60.5},
    "resnet34": {4: 75.0, 3: 74.2, 2: 72.1, 1: 65.8},
    "mobilenetv2": {4: 68.2, 3: 65.0, 2: 50.5, 1: 23.2},
    "resnet32-cifar100": {4: 71.6, 3: 71.4, 2: 69.3, 1: 62.4},
}


@pytest.fixture
def no_results(tmp_path, monkeypatch):
    monkeypatch.setenv(zoo.RESULTS_ENV, str(tmp_path / "none"))


def test_every_paper_entry_with_its_number(no_results):
    for stem, numbers in PAPER.items():
        for bits, top1 in numbers.items():
            entry = zoo.get_entry(f"uniq/{stem}-w{bits}a{bits}")
            assert entry.paper_top1 == top1 and entry.w_bits == entry.a_bits == bits
            table = "Table 4" if "cifar" in stem else "Tables 2 and 3" if bits == 1 and "resnet" in stem else "Table 2"
            assert entry.paper_source == table
            assert entry.measured is None
    names = [e.name for e in zoo.list_entries()]
    assert len(names) == len(set(names))
    assert {"uniq/resnet20-fashion-mnist-fp", "uniq/resnet20-fashion-mnist-w2a2"} <= set(names)
    assert all(e.arch in list_models() for e in zoo.list_entries())
    assert zoo.get_entry("resnet18-w2a2").name == "uniq/resnet18-w2a2"  # org optional


def test_entry_fields_and_recipes(no_results):
    r18 = zoo.get_entry("uniq/resnet18-w2a2")
    assert (r18.dataset.hf_name, r18.dataset.num_labels, r18.dataset.image_size) == ("ILSVRC/imagenet-1k", 1000, 224)
    assert r18.paper_fp_top1 == 71.57
    rec = r18.recipe
    assert (rec.optimizer, rec.lr, rec.momentum, rec.epochs, rec.batch_size) == ("sgd", 0.01, 0.9, 90, 256)
    assert (rec.weight_decay, rec.init_from, rec.calib_batches) == (0.25e-4, "pytorchcv:preresnet18", 1000)
    assert [zoo.get_entry(f"resnet34-w{b}a{b}").recipe.weight_decay for b in (4, 3, 2)] == [1e-4, 0.5e-4, 0.25e-4]
    binary = zoo.get_entry("uniq/mobilenetv2-w1a1").recipe
    assert (binary.optimizer, binary.warmup_epochs, binary.warmup_lr, binary.lr) == ("adam", 5, 0.001, 0.004)
    assert (binary.weight_decay, binary.init_from) == (0.0, "uniq/mobilenetv2-w2a2")
    c = zoo.get_entry("uniq/resnet32-cifar100-w3a3")
    assert (c.dataset.hf_name, c.dataset.num_labels, c.weight_granularity) == ("uoft-cs/cifar100", 100, "layer")
    assert (c.recipe.epochs, c.recipe.batch_size, c.recipe.weight_decay) == (350, 128, 5e-4)
    assert (c.recipe.init_from, c.recipe.calib_batches) == ("uniq/resnet32-cifar100-fp", 100)
    f = zoo.get_entry("uniq/resnet20-fashion-mnist-w2a2")
    assert f.config_kwargs() == dict(arch="resnet20", w_bits=2, a_bits=2, num_labels=10, num_channels=1, image_size=28)
    assert f.recipe.source == "here" and f.paper_top1 is None
    # a chain trained here: the recipe's zoo sources as local run directories; pytorchcv weights stay remote
    assert f.recipe.local_sources("runs/zoo") == ["--init-from", "runs/zoo/resnet20-fashion-mnist-w3a3",
                                                  "--teacher", "runs/zoo/resnet20-fashion-mnist-fp"]
    assert rec.local_sources("runs/zoo") == [] and zoo.get_entry("uniq/resnet20-fashion-mnist-fp").recipe.local_sources(
        "runs/zoo") == []
    # every init_from points at a zoo entry or a pytorchcv model
    names = {e.name for e in zoo.list_entries()}
    for e in zoo.list_entries():
        src = e.recipe.init_from
        assert src is None or src in names or src.startswith("pytorchcv:"), (e.name, src)
    with pytest.raises(KeyError, match="resnet99-w2a2"):
        zoo.get_entry("resnet99-w2a2")


def _write(path, record):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def test_measured_results_from_json(tmp_path):
    base = dict(model_id="uniq/resnet20-fashion-mnist-w2a2", dataset="zalando-datasets/fashion_mnist",
                split="test", top1=88.5, top5=99.1, num_examples=10000, command="uniq-hub evaluate ...")
    _write(tmp_path / "a.json", base)
    _write(tmp_path / "sub" / "b.json", dict(base, split="train", top1=95.0, num_examples=60000))  # not the eval split
    _write(tmp_path / "c.json", [dict(base, model_id="runs/fp/export", zoo_name="uniq/resnet20-fashion-mnist-fp",
                                      top1=91.0)])
    _write(tmp_path / "log.json", {"step": 3, "loss": 0.1})  # other JSON is ignored
    entry = zoo.get_entry("uniq/resnet20-fashion-mnist-w2a2", results_dirs=[tmp_path])
    assert entry.measured.top1 == 88.5 and entry.measured.split == "test" and len(entry.results) == 2
    assert zoo.get_entry("uniq/resnet20-fashion-mnist-fp", results_dirs=[tmp_path]).measured.top1 == 91.0
    assert zoo.get_entry("uniq/resnet18-w2a2", results_dirs=[tmp_path]).measured is None

    _write(tmp_path / "bad.json", dict(base, top1=0.885e3))
    with pytest.raises(ValueError, match=r"bad\.json.*top1.*\[0, 100\]"):
        zoo.list_entries([tmp_path])
    _write(tmp_path / "bad.json", dict(base, split=None))
    with pytest.raises(ValueError, match=r"bad\.json.*split"):
        zoo.list_entries([tmp_path])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json.*not valid JSON"):
        zoo.list_entries([tmp_path])


def test_cli_table_and_json(tmp_path, capsys):
    _write(tmp_path / "r.json", dict(model_id="uniq/resnet18-w2a2", dataset="ILSVRC/imagenet-1k",
                                     split="validation", top1=66.25, top5=None, num_examples=50000, command="x"))
    assert main(["zoo", "--results", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["name", "arch", "dataset", "bits"]
    row = next(line for line in lines if line.startswith("uniq/resnet18-w2a2 "))
    assert row.split() == ["uniq/resnet18-w2a2", "resnet18", "ILSVRC/imagenet-1k", "w2a2", "67.80", "66.25"]
    assert len(lines) == 2 + len(zoo.list_entries([tmp_path]))

    assert main(["zoo", "--json", "--dataset", "cifar100", "--results", str(tmp_path)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["name"] for d in data] == [f"uniq/resnet32-cifar100-{b}" for b in ("fp", "w4a4", "w3a3", "w2a2", "w1a1")]
    assert data[1]["recipe"]["optimizer"] == "sgd" and data[1]["paper_top1"] == 71.6
    with pytest.raises(SystemExit, match="no zoo entry"):
        main(["zoo", "--arch", "vgg16"])
