"""Model cards: metadata parsed back by huggingface_hub, measured-only model-index, body, committed cards."""

from __future__ import annotations

import runpy
from pathlib import Path

import yaml
from huggingface_hub import ModelCard

from uniq_hub.catalog import cards, zoo
from uniq_hub.model.quantize import QuantConfig, layer_bits
from uniq_hub.model.registry import create_model

REPO = Path(__file__).resolve().parent.parent
MEASURED = dict(model_id="uniq/resnet18-w2a2", dataset="ILSVRC/imagenet-1k", split="validation", top1=66.12,
                top5=86.5, num_examples=50000, command="uniq-hub evaluate runs/r18/export --split validation")


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_card_with_measured_result():
    entry = zoo.get_entry("uniq/resnet18-w2a2", results_dirs=[])
    text = cards.render_card(entry, result=MEASURED)
    card = ModelCard(text)  # the real client parses the YAML and the model-index
    d = card.data
    assert (d.library_name, d.pipeline_tag, d.license) == ("transformers", "image-classification", "apache-2.0")
    assert d.datasets == ["ILSVRC/imagenet-1k"]
    assert {"uniq", "quantization", "low-bit", "w2a2", "resnet18"} <= set(d.tags)
    assert d.base_model is None  # initialised from pytorchcv, not a Hub model
    assert [(r.metric_type, r.metric_value, r.dataset_type, r.dataset_split) for r in d.eval_results] == [
        ("accuracy", 66.12, "ILSVRC/imagenet-1k", "validation"),
        ("top-5-accuracy", 86.5, "ILSVRC/imagenet-1k", "validation"),
    ]
    assert d.model_name == "uniq/resnet18-w2a2"
    assert "67.8" not in text.split("---\n", 2)[1]  # the paper's number is not in the metadata ...
    body = card.text
    assert "Reported by the paper (not measured here): top-1 67.8%" in body  # ... but labelled in the body
    assert "**top-1 66.12%**" in body and MEASURED["command"] in body
    assert 'from_pretrained("uniq/resnet18-w2a2")' in body
    assert 'pipeline("image-classification", model="uniq/resnet18-w2a2"' in body
    assert "trust_remote_code=True" in body
    assert "uniq-hub train --zoo uniq/resnet18-w2a2" in body and "accelerate launch" in body
    assert "| weight decay | 2.5e-05" in body and "pytorchcv:preresnet18" in body


def test_card_without_measurement_has_no_eval_results():
    entry = zoo.get_entry("uniq/resnet32-cifar100-w1a1", results_dirs=[])
    text = cards.render_card(entry, repo_id="me/binary-r32")
    meta = _front_matter(text)
    assert "model-index" not in meta and "62.4" not in yaml.safe_dump(meta)
    card = ModelCard(text)
    assert card.data.eval_results is None
    assert card.data.base_model == "uniq/resnet32-cifar100-w2a2"  # 1 bit starts from the 2-bit model
    assert meta["base_model_relation"] == "quantized" and {"binary", "w1a1"} <= set(meta["tags"])
    assert "Not measured yet" in card.text and "(Table 4)" in card.text
    assert 'from_pretrained("me/binary-r32")' in card.text
    assert "downsampling shortcut convolutions stay in full precision" in card.text
    assert "5 warm-up epochs at a constant lr 0.001, then lr 0.004" in card.text


def test_card_for_model_outside_the_zoo():
    config = {"model_type": "uniq", "arch": "resnet20", "w_bits": 3, "a_bits": 3, "num_labels": 7,
              "num_channels": 1, "image_size": 32}
    entry = cards.entry_from_config(config, name="me/custom")
    text = cards.render_card(entry, result=dict(model_id="me/custom", dataset="imagefolder:/data/x", split="test",
                                                 top1=80.0))
    card = ModelCard(text)
    assert card.data.eval_results[0].metric_value == 80.0 and card.data.datasets is None
    assert "## Training" not in card.text and "paper (not measured here)" not in card.text
    for bad, expected in (({"arch": "resnet20"}, "w_bits"), (dict(config, num_labels=0), "num_labels")):
        try:
            cards.entry_from_config(bad, name="x")
        except ValueError as err:
            assert expected in str(err)
        else:
            raise AssertionError(f"no error for {bad}")


def test_checkpoint_size_counts_bits():
    r18 = {b: cards.checkpoint_size(zoo.get_entry(f"resnet18-w{b}a{b}", results_dirs=[])) for b in (4, 2)}
    model = create_model("resnet18", num_classes=1000)
    fp32 = sum(p.numel() for p in model.state_dict().values() if p.is_floating_point()) * 4
    assert r18[4][1] == r18[2][1] == fp32
    plan = layer_bits(model, QuantConfig(w_bits=2, a_bits=2))
    modules = dict(model.named_modules())
    two_bit = sum(modules[n].weight.numel() for n, (w, _) in plan.items() if w == 2)
    assert r18[4][0] - r18[2][0] == two_bit * 2 // 8  # 2 bits saved per quantized weight
    assert r18[2][0] < fp32 / 10
    fp = zoo.get_entry("resnet32-cifar100-fp", results_dirs=[])
    assert cards.checkpoint_size(fp)[0] == cards.checkpoint_size(fp)[1]


def test_committed_cards_are_generated_and_valid(capsys):
    script = runpy.run_path(str(REPO / "scripts" / "generate_model_cards.py"))  # not as __main__
    code = script["main"](["--check", "--results", str(zoo.DEFAULT_RESULTS_DIR)])
    assert code == 0, capsys.readouterr().out  # stale: run scripts/generate_model_cards.py
    entries = zoo.list_entries()
    index = (REPO / "model_cards" / "README.md").read_text()
    for entry in entries:
        card = ModelCard.load(REPO / "model_cards" / cards.card_filename(entry))
        measured = [(r.metric_type, r.metric_value) for r in card.data.eval_results or []]
        expected = [] if entry.measured is None else [("accuracy", entry.measured.top1)]
        assert measured[:1] == expected, entry.name
        assert f"[{entry.name}]({cards.card_filename(entry)})" in index
