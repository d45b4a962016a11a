"""Top-1 / top-5: the counting, and ``uniq-hub evaluate`` on a saved model against a direct computation."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from tiny_models import tiny_model
from train_helpers import eager_kernels, make_tiny_dataset  # noqa: F401
from uniq_hub import UniQForImageClassification, UniQImageProcessor
from uniq_hub.catalog.zoo import get_entry
from uniq_hub.cli import main
from uniq_hub.training.data.sources import load_image_dataset
from uniq_hub.training.evaluate import evaluate_model, topk_correct


def test_topk_counting():
    logits = torch.tensor([[0.0, 1, 2, 3, 4, 5, 6], [6.0, 5, 4, 3, 2, 1, 0], [0.0, 1, 9, 2, 3, -1, 4]])
    labels = torch.tensor([6, 2, 5])
    hits = topk_correct(logits, labels)
    assert hits[1].tolist() == [True, False, False]
    assert hits[5].tolist() == [True, True, False]  # row 3: its label has the lowest logit
    assert topk_correct(logits[:, :3], torch.tensor([0, 0, 1]))[5].tolist() == [True, True, True]  # k capped


class _Lookup(nn.Module):
    """Logits read from the input: the first ``classes`` pixels of the image."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes = classes
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return x.flatten(1)[:, : self.classes] + self.dummy


def test_evaluate_model_percentages():
    torch.manual_seed(0)
    x = torch.randn(50, 1, 4, 4)
    y = torch.randint(0, 10, (50,))
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 50, 16)]
    ranks = (x.flatten(1)[:, :10] > x.flatten(1)[torch.arange(50), y][:, None]).sum(1)
    metrics = evaluate_model(_Lookup(10), batches)
    assert metrics["num_examples"] == 50
    assert metrics["top1"] == pytest.approx(100.0 * (ranks == 0).float().mean().item())
    assert metrics["top5"] == pytest.approx(100.0 * (ranks < 5).float().mean().item())
    assert evaluate_model(_Lookup(4), [(x[:, :, :1], y % 4)])["top5"] is None  # fewer than 6 classes
    with pytest.raises(ValueError, match="no examples"):
        evaluate_model(_Lookup(10), [])


def _tiny_model(tmp_path):
    tiny = make_tiny_dataset(tmp_path / "tiny", train=8, test=40)
    model = tiny_model(bits=3, num_labels=4, num_channels=1, image_size=28, image_mean=[0.3], image_std=[0.3],
                       id2label={0: "top", 1: "upper", 2: "lower", 3: "bottom"}, calibration=(16, 28))
    model.save_pretrained(tmp_path / "model")
    return tiny


def test_cli_writes_results_matching_a_direct_computation(tmp_path, capsys):
    tiny = _tiny_model(tmp_path)

    out = tmp_path / "results" / "r.json"
    assert main(["evaluate", str(tmp_path / "model"), "--dataset", str(tiny), "--split", "test",
                 "--batch-size", "16", "--num-workers", "0", "--output", str(out), "--no-progress"]) == 0
    record = json.loads(out.read_text())
    assert set(record) == {"model_id", "dataset", "split", "top1", "top5", "num_examples", "command", "machine"}
    assert (record["dataset"], record["split"], record["num_examples"], record["top5"]) == (str(tiny), "test", 40, None)
    assert record["command"].startswith("uniq-hub evaluate ") and "--dataset" in record["command"]
    assert "top-1" in capsys.readouterr().out

    # the same number by hand: the saved model, its image processor, every test image
    reloaded = UniQForImageClassification.from_pretrained(tmp_path / "model").eval()
    processor = UniQImageProcessor.from_pretrained(tmp_path / "model")
    ds = load_image_dataset(str(tiny), "test")
    pixels = processor([row["image"] for row in ds], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        predicted = reloaded(pixels).logits.argmax(-1)
    expected = 100.0 * (predicted == torch.tensor(ds["label"])).float().mean().item()
    assert record["top1"] == pytest.approx(expected)


def test_zoo_name_attaches_the_result_to_the_zoo_entry(tmp_path, capsys):
    tiny = _tiny_model(tmp_path)
    results = tmp_path / "results"
    args = ["evaluate", str(tmp_path / "model"), "--dataset", str(tiny), "--batch-size", "16", "--num-workers", "0",
            "--no-progress", "--output", str(results / "fm-w3a3.json")]
    with pytest.raises(SystemExit, match="--zoo-name: unknown zoo entry 'resnet20-nope'"):
        main([*args, "--zoo-name", "resnet20-nope"])
    assert not results.exists()  # refused before evaluating: nothing written
    assert main([*args, "--zoo-name", "resnet20-fashion-mnist-w3a3"]) == 0
    record = json.loads((results / "fm-w3a3.json").read_text())
    assert record["zoo_name"] == "uniq/resnet20-fashion-mnist-w3a3"
    assert "--zoo-name uniq/resnet20-fashion-mnist-w3a3" in record["command"]
    entry = get_entry("uniq/resnet20-fashion-mnist-w3a3", results_dirs=[results])
    assert entry.measured is not None and entry.measured.top1 == pytest.approx(record["top1"])


def test_evaluate_never_replaces_a_folders_record_unless_asked(tmp_path, capsys):
    """``--max-samples`` never goes to the folder's eval_results.json, and a whole-split evaluation keeps an
    existing one (with its selection / training / ONNX keys) unless ``--replace-results`` is given."""
    tiny = _tiny_model(tmp_path)
    folder = tmp_path / "model"
    args = ["evaluate", str(folder), "--dataset", str(tiny), "--batch-size", "16", "--num-workers", "0",
            "--no-progress"]
    assert main([*args, "--max-samples", "8"]) == 0
    assert not (folder / "eval_results.json").exists()
    assert "--max-samples 8 is a partial evaluation and never goes to" in capsys.readouterr().out
    assert main(args) == 0  # no record yet: the whole split goes there
    record = json.loads((folder / "eval_results.json").read_text())
    record["selection"] = {"split": "train[held-out 8]"}
    (folder / "eval_results.json").write_text(json.dumps(record))
    for extra in (["--max-samples", "8"], []):
        assert main([*args, *extra]) == 0
        assert json.loads((folder / "eval_results.json").read_text()) == record
    assert "exists and is kept (pass -o FILE, or --replace-results" in capsys.readouterr().out
    assert main([*args, "--replace-results"]) == 0
    assert "selection" not in json.loads((folder / "eval_results.json").read_text())
