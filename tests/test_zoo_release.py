"""The trained zoo kept in git (zoo/<name>/): every card number re-derived from the folder, golden
logits pinned, sizes bounded, the whole zoo published to the local Hub and loaded back by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from transformers import pipeline

from uniq_hub import UniQForImageClassification, UniQImageProcessor
from uniq_hub.catalog.zoo import list_entries
from uniq_hub.hub.portability import MAX_DIFFERING, read_predictions, rederivation_errors
from uniq_hub.hub.zoo_release import (
    LARGE_RELEASES,
    MAX_FOLDER_BYTES,
    NOT_RELEASED,
    RELEASE_DIR,
    publish_zoo,
    release_folders,
    resave_release,
    training_record,
)
from uniq_hub.model.quantize import LEGACY_NAMES
from uniq_hub.training.data.sources import load_image_dataset
from uniq_hub.training.evaluate import evaluate

REPO = Path(__file__).resolve().parent.parent
LIBRARY = REPO / "uniq_hub" / "model"  # the shipped code
FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_data = pytest.mark.skipif(not FMNIST.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
ENTRIES = [e for e in list_entries(results_dirs=[]) if e.dataset.key == "fashion-mnist" and e.name not in NOT_RELEASED]


def _card_metrics(folder: Path) -> dict[str, float]:
    card = ModelCard.load(folder / "README.md")
    return {r.metric_type: r.metric_value for r in card.data.eval_results}


def test_every_fashion_mnist_entry_is_released():
    assert sorted(release_folders()) == sorted(e.name for e in ENTRIES)


@pytest.mark.parametrize("name", [e.name for e in ENTRIES])
def test_release_folder_is_small_and_complete(name):
    folder = RELEASE_DIR / name.split("/")[1]
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < LARGE_RELEASES.get(name, MAX_FOLDER_BYTES)
    names = {p.relative_to(folder).as_posix() for p in files}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "eval_results.json",
            "eval_predictions.json"} <= names
    assert all(n.endswith((".json", ".md", ".safetensors", ".onnx")) for n in names), names  # data only, no code
    record = json.loads((folder / "eval_results.json").read_text())
    assert record["zoo_name"] == name and record["num_examples"] == 10_000
    card = (folder / "README.md").read_text()
    assert record["training"]["command"] in card  # the exact training command is on the card
    if (folder / "onnx" / "model.onnx").is_file():  # the exact graph: ONNX top-1 = PyTorch top-1 +- 0.02 points
        assert set(record["onnx"]) == {"onnxruntime", "openvino"}
        for r in record["onnx"].values():
            assert abs(r["top1"] - record["top1"]) <= 0.02 and r["num_examples"] == 10_000
    else:  # a folder the ONNX graph would push over the size limit: no ONNX numbers either
        assert "onnx" not in record
    config = json.loads((folder / "config.json").read_text())
    assert not set(config) & set(LEGACY_NAMES), "re-save with: python scripts/release_zoo.py --resave"


def test_zoo_holds_no_code():
    """The release folders keep their data; the shipped code is added when they are saved or uploaded."""
    assert not list((REPO / "zoo").rglob("*.py")), "zoo/ holds code: python scripts/release_zoo.py --resave"


def test_resave_brings_an_older_release_to_this_version_with_the_same_tensors(tmp_path):
    """A release written with the older config names is re-saved with the current names and no code
    (stray code copies are removed); its tensors stay byte-identical, and a second re-save changes
    nothing. ``code=True`` (``uniq-hub migrate``) writes the library's code instead."""
    import shutil

    from safetensors import safe_open

    folder = tmp_path / "w2a2"
    shutil.copytree(RELEASE_DIR / "resnet20-fashion-mnist-w2a2", folder)
    config = json.loads((folder / "config.json").read_text())
    config["init"], config["in_chans"] = config.pop("step_init"), config.pop("num_channels")
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "quantize.py").write_text((LIBRARY / "quantize.py").read_text() + "\n# an older version\n")
    (folder / "retired_module.py").write_text("# a module this version no longer has\n")
    before = (folder / "model.safetensors").read_bytes()

    changed = resave_release(folder)
    assert set(changed) == {"config.json", "quantize.py", "retired_module.py"}
    saved = json.loads((folder / "config.json").read_text())
    assert (saved["step_init"], saved["num_channels"]) == ("mse", 1) and not set(saved) & set(LEGACY_NAMES)
    assert not list(folder.glob("*.py"))
    assert (folder / "onnx" / "model.onnx").is_file() and (folder / "README.md").is_file()
    with safe_open(str(RELEASE_DIR / "resnet20-fashion-mnist-w2a2" / "model.safetensors"), "pt") as a, \
            safe_open(str(folder / "model.safetensors"), "pt") as b:
        assert sorted(a.keys()) == sorted(b.keys()) and a.metadata() == b.metadata()
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())
    assert len((folder / "model.safetensors").read_bytes()) == len(before)
    assert resave_release(folder) == []  # deterministic: the same model saves to the same bytes
    with_code = resave_release(folder, code=True)
    assert "modeling_uniq.py" in with_code and set(with_code) == {p.name for p in folder.glob("*.py")}
    assert all(p.read_bytes() == (LIBRARY / p.name).read_bytes() for p in folder.glob("*.py"))
    assert resave_release(folder, code=True) == [] and resave_release(folder) == sorted(with_code)


def _rederive(folder: Path, committed_from: Path | None = None) -> list[str]:
    """What is wrong with ``folder``'s card, re-derived here on the 10k test images (on another CPU
    within the card's bound; docs/portability.md). ``committed_from``: the folder whose record it must match."""
    committed_from = committed_from or folder
    record = evaluate(str(folder), "fashion_mnist", "test", batch_size=500, num_workers=0, predictions=True)
    committed = json.loads((committed_from / "eval_results.json").read_text())
    return rederivation_errors(committed_from, record, committed)


@needs_data
@pytest.mark.parametrize("name", [e.name for e in ENTRIES])
def test_card_numbers_are_re_derived(name):
    """PyTorch top-1 / top-5 and the per-image predictions on the 10k test images agree with the card's
    metadata, eval_results.json and eval_predictions.json: exactly on the machine that measured them,
    within the card's bound (MAX_DIFFERING predictions) on another CPU."""
    folder = RELEASE_DIR / name.split("/")[1]
    committed = json.loads((folder / "eval_results.json").read_text())
    assert _rederive(folder) == []
    assert _card_metrics(folder) == {"accuracy": committed["top1"], "top-5-accuracy": committed["top5"]}
    predictions = read_predictions(folder)
    labels = load_image_dataset("fashion_mnist", "test")["label"]
    assert committed["top1"] == round(100.0 * sum(p == y for p, y in zip(predictions, labels)) / len(labels), 2)
    assert committed["portability"]["max_differing"] == MAX_DIFFERING
    assert max(committed["portability"]["differing"].values()) <= MAX_DIFFERING
    assert {"cpu", "isa", "torch"} <= set(committed["machine"])


@needs_data
def test_a_tampered_release_fails_the_re_derivation(tmp_path):
    """A changed weight (re-saved, so its checksum holds), a changed processor config and a swapped
    folder each fail, on this CPU and within another CPU's bound alike."""
    import shutil

    source = RELEASE_DIR / "resnet20-fashion-mnist-w2a2"
    weights = shutil.copytree(source, tmp_path / "weights", ignore=shutil.ignore_patterns("onnx"))
    model = UniQForImageClassification.from_pretrained(weights)
    with torch.no_grad():
        model.model.fc.bias.add_(torch.linspace(-1, 1, model.config.num_labels))
    model.save_pretrained(weights)
    processor = shutil.copytree(source, tmp_path / "processor")
    config = json.loads((processor / "preprocessor_config.json").read_text())
    config["image_mean"] = [m + 0.05 for m in config["image_mean"]]
    (processor / "preprocessor_config.json").write_text(json.dumps(config))
    swapped = RELEASE_DIR / "resnet20-fashion-mnist-w3a3"
    for folder, committed_from in ((weights, source), (processor, source), (swapped, source)):
        errors = _rederive(folder, committed_from)
        assert errors and "differ from eval_predictions.json" in errors[0], (folder, errors)
        differing = int(errors[0].split()[0])
        assert differing > MAX_DIFFERING, (folder, errors)


@needs_data
def test_golden_logits():
    """A change to packing (both directions) or to the model that alters the weights fails here."""
    golden = json.loads((REPO / "tests" / "golden_logits.json").read_text())
    folder = RELEASE_DIR / golden["entry"].split("/")[1]
    model = UniQForImageClassification.from_pretrained(folder).eval()
    processor = UniQImageProcessor.from_pretrained(folder)
    ds = load_image_dataset("fashion_mnist", golden["split"])
    with torch.no_grad():
        logits = model(**processor([ds[i]["image"] for i in golden["indices"]], return_tensors="pt")).logits
    torch.testing.assert_close(logits, torch.tensor(golden["logits"]), rtol=0, atol=1e-4)


def test_training_record_names_every_non_default_option(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    from uniq_hub.training.train_config import resolve_config

    cfg = resolve_config({"zoo": "uniq/resnet20-fashion-mnist-w2a2", "teacher": "runs/zoo/fp", "kd_weight": 0.7,
                          "seed": 3, "output_dir": str(run)})
    (run / "train_config.json").write_text(json.dumps(cfg.to_dict()))
    (run / "wall_times.txt").write_text("60\n30\n")
    (run / "machine.txt").write_text("AMD EPYC, 2 cores, 1 thread\n")
    record = training_record(run)
    assert record["machine"] == "AMD EPYC, 2 cores, 1 thread"
    assert record["command"].startswith("uniq-hub train --zoo uniq/resnet20-fashion-mnist-w2a2 --output-dir ")
    for flag in ("--seed 3", "--teacher runs/zoo/fp", "--kd-weight 0.7"):
        assert flag in record["command"]
    assert "--lr" not in record["command"]  # the recipe's own value
    got = (record["wall_time_s"], record["teacher"], record["kd_weight"], record["seed"])
    assert got == (90, "runs/zoo/fp", 0.7, 3)


def test_publish_zoo_then_load_every_entry_by_name(hub_server, hub_token, tmp_path):
    """publish-zoo uploads each folder to uniq/<name>; from_pretrained and pipeline by name give the
    folder's logits."""
    done = publish_zoo(token=hub_token)
    assert sorted(done) == sorted(release_folders())
    shipped = {p.name for p in LIBRARY.glob("*.py") if p.name != "__init__.py"}
    for name in done:  # the folders hold no code: publish-zoo added the library's
        assert shipped <= set(HfApi().list_repo_files(name)), name
    ds = load_image_dataset("fashion_mnist", "test", limit=2) if FMNIST.is_dir() else None
    for name, folder in release_folders().items():
        local = UniQForImageClassification.from_pretrained(folder).eval()
        remote = UniQForImageClassification.from_pretrained(name).eval()
        x = torch.randn(2, local.config.num_channels, local.config.image_size, local.config.image_size)
        with torch.no_grad():
            assert torch.equal(local(x).logits, remote(x).logits), name
        if ds is not None:
            scores = pipeline("image-classification", model=name)(ds[0]["image"], top_k=3)
            assert scores == pipeline("image-classification", model=str(folder))(ds[0]["image"], top_k=3)


def test_readme_zoo_table_and_picture_come_from_the_release_folders(tmp_path):
    """The README table is the one ``scripts/zoo_summary.py`` generates from the committed records, and
    the picture draws every released entry."""
    import runpy

    from uniq_hub.hub.zoo_release import release_records, zoo_table
    from uniq_hub.plot import plot_zoo

    script = runpy.run_path(str(REPO / "scripts" / "zoo_summary.py"))
    assert script["main"](["--check"]) == 0, "stale: run scripts/zoo_summary.py"
    table = zoo_table()
    records = release_records()
    assert sorted(records) == sorted(e.name for e in ENTRIES)
    for name, record in records.items():
        assert f"| `{name}` | {record['top1']:.2f} / {record['top5']:.2f} |" in table
    png = plot_zoo(records, tmp_path / "zoo.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
