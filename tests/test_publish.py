"""`uniq-hub publish`: folder validation, dry run, and the round trip through the local Hub
(tests/hub_server.py) with the real huggingface_hub client and transformers. Verification
before upload and Hub faults: tests/test_publish_verify.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from safetensors.torch import save_file

import uniq_hub
from tiny_models import EXPORT_CONFIG
from uniq_hub.catalog.cards import checkpoint_size
from uniq_hub.catalog.zoo import get_entry
from uniq_hub.cli import main
from uniq_hub.hub.publish_plan import PublishError, plan_upload

CONFIG = EXPORT_CONFIG


LIBRARY = Path(uniq_hub.__file__).parent / "model"  # the shipped code
LIBRARY_CODE = tuple(sorted(p.name for p in LIBRARY.glob("*.py") if p.name != "__init__.py"))


def _fake_export(folder: Path, config: dict | None = None, code: bool = True) -> Path:
    """A structurally complete export (validation only looks at files, JSON and the safetensors header);
    ``code``: with copies of the library's code files (a save_pretrained folder), else none (a zoo release)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or CONFIG))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "UniQImageProcessor",
        "auto_map": {"AutoImageProcessor": {"torchvision": "image_processing_uniq.UniQImageProcessor"}}}))
    save_file({"model.fc.weight": torch.zeros(10, 64)}, str(folder / "model.safetensors"))
    for name in LIBRARY_CODE if code else ():  # the library's own code (publish uploads nothing else)
        shutil.copyfile(LIBRARY / name, folder / name)
    (folder / "__pycache__").mkdir(exist_ok=True)
    (folder / "__pycache__" / "quantize.cpython-311.pyc").write_bytes(b"\0")
    return folder




def test_validation_names_the_problem(tmp_path):
    folder = _fake_export(tmp_path / "export")
    plan = plan_upload(folder, "me/fm-w2a2")
    assert {"config.json", "preprocessor_config.json", "model.safetensors", "configuration_uniq.py",
            "modeling_uniq.py", "quantize.py", "image_processing_uniq.py"} <= set(plan.files)
    code = {name for name in plan.files if name.endswith(".py")}
    assert code == set(LIBRARY_CODE) and all(plan.files[name] == LIBRARY / name for name in code)  # all that ships
    assert set(plan.generated) == {"README.md"} and plan.card_source == "config.json"
    bare = _fake_export(tmp_path / "bare", code=False)  # a folder without code (a zoo release) gets the same code
    bare_code = {name: path for name, path in plan_upload(bare, "me/fm-w2a2").files.items() if name.endswith(".py")}
    assert not list(bare.glob("*.py")) and bare_code == {name: LIBRARY / name for name in LIBRARY_CODE}

    evil_map = dict(CONFIG["auto_map"], AutoModelForImageClassification="evil.UniQForImageClassification")
    cases = [
        (lambda: (folder / "model.safetensors").unlink(), r"model\.safetensors: missing"),
        (lambda: (folder / "preprocessor_config.json").unlink(), r"preprocessor_config\.json: missing"),
        (lambda: (folder / "quantize.py").write_text("import os\n"),
         r"quantize\.py: differs from this uniq_hub's quantize\.py; only the library's own code is uploaded"),
        (lambda: (folder / "config.json").write_text(json.dumps(dict(CONFIG, auto_map=evil_map))),
         r"evil\.py: config\.json's auto_map names the module 'evil', which is not one of uniq_hub's"),
        (lambda: (folder / "config.json").write_text(json.dumps({k: v for k, v in CONFIG.items() if k != "auto_map"})),
         r"config\.json: no 'auto_map'"),
        (lambda: (folder / "config.json").write_text("{trunc"), r"config\.json: not valid JSON"),
        (lambda: (folder / "model.safetensors").write_bytes(b"\x10\0\0\0\0\0\0\0{\"a\":"),
         r"model\.safetensors: not a valid safetensors file"),
        (lambda: (folder / "preprocessor_config.json").write_text("{}"), r"image_processor_type"),
    ]
    for break_it, message in cases:
        _fake_export(folder)
        break_it()
        with pytest.raises(PublishError, match=message):
            plan_upload(folder, "me/fm-w2a2")
    _fake_export(folder)
    with pytest.raises(PublishError, match=r"disagrees with zoo entry uniq/resnet18-w2a2"):
        plan_upload(folder, "uniq/resnet18-w2a2")  # a resnet20 config under a resnet18 zoo name
    with pytest.raises(PublishError, match="ORG/NAME"):
        plan_upload(folder, "no-org")
    with pytest.raises(SystemExit, match=r"uniq-hub publish: .*missing"):
        (folder / "config.json").unlink()
        main(["publish", str(folder), "--repo-id", "me/x", "--dry-run"])


def test_dry_run_contacts_nothing(export, hub_server, capsys):
    folder = export
    (folder / "eval_results.json").write_text(json.dumps(dict(
        model_id=str(folder), dataset="fashion_mnist", split="test", top1=90.5, top5=99.6, num_examples=10000,
        command="uniq-hub evaluate export --dataset fashion_mnist")))
    before = hub_server.request_count
    assert main(["publish", str(folder), "--repo-id", "uniq/resnet20-fashion-mnist-w2a2", "--dry-run",
                 "--private", "--revision", "v1"]) == 0
    out = capsys.readouterr().out
    assert hub_server.request_count == before
    assert "dry run: verified; would upload to uniq/resnet20-fashion-mnist-w2a2@v1 (private)" in out
    assert "README.md (generated from zoo entry uniq/resnet20-fashion-mnist-w2a2)" in out
    size = (folder / "model.safetensors").stat().st_size
    assert any(line.startswith("model.safetensors ") and line.endswith(f"({size} bytes)") for line in out.splitlines())
    assert "__pycache__" not in out and not (folder / "README.md").exists()
    plan = plan_upload(folder, "uniq/resnet20-fashion-mnist-w2a2")
    card = ModelCard(plan.generated["README.md"].decode())  # the folder's measured number goes in the card
    results = [(r.metric_value, r.dataset_type) for r in card.data.eval_results]
    assert results[:1] == [(90.5, "zalando-datasets/fashion_mnist")]


def test_private_repo_and_revision_branch(export, hub_server, hub_token, capsys):
    from huggingface_hub.errors import RepositoryNotFoundError

    folder = export
    repo = f"{hub_server.user}/fm-private"
    assert main(["publish", str(folder), "--repo-id", repo, "--token", hub_token]) == 0
    assert not HfApi().model_info(repo).private  # public: anonymous readers see it
    assert main(["publish", str(folder), "--repo-id", repo, "--private", "--token", hub_token,
                 "--commit-message", "second upload"]) == 0  # an existing public repo is switched to private
    assert f"published {folder} to {repo} (private)" in capsys.readouterr().out
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info(repo)  # anonymous: not visible any more
    api = HfApi(token=hub_token)
    info = api.model_info(repo)
    assert info.private and {s.rfilename for s in info.siblings} >= {
        "README.md", "config.json", "model.safetensors", "preprocessor_config.json", "modeling_uniq.py", "quantize.py"}
    assert not any("__pycache__" in s.rfilename for s in info.siblings)

    (folder / "eval_results.json").write_text(json.dumps(dict(
        model_id=str(folder), dataset="fashion_mnist", split="test", top1=90.5, top5=99.6, num_examples=10000,
        command="uniq-hub evaluate export --dataset fashion_mnist")))
    (folder / "notes.txt").write_text("not part of a release")
    assert main(["publish", str(folder), "--repo-id", repo, "--revision", "stage-2", "--token", hub_token]) == 0
    files = api.list_repo_files(repo, revision="stage-2")
    assert "eval_results.json" in files and "notes.txt" not in files  # undeclared files stay home
    assert "eval_results.json" not in api.list_repo_files(repo)  # main untouched
    card = api.hf_hub_download(repo, "README.md", revision="stage-2")
    assert ModelCard.load(card).data.pipeline_tag == "image-classification"


OFFLINE_SCRIPT = """
import sys
import torch
from safetensors.torch import load_file, save_file
import uniq_hub  # noqa: F401
from transformers import AutoModelForImageClassification

model = AutoModelForImageClassification.from_pretrained("uniq/resnet18-w2a2").eval()
with torch.no_grad():
    logits = model(load_file(sys.argv[1])["pixel_values"]).logits
save_file({"logits": logits}, sys.argv[2])
"""


def _logits(model, pixel_values):
    with torch.no_grad():
        return model(pixel_values=pixel_values).logits


def _random_model():
    """resnet18 w2a2 with random weights, step sizes and BatchNorm statistics (every tensor must round-trip)."""
    from uniq_hub import UniQConfig, UniQForImageClassification, quantizers

    torch.manual_seed(0)
    model = UniQForImageClassification(UniQConfig(arch="resnet18", w_bits=2, a_bits=2, num_labels=1000, image_size=64))
    with torch.no_grad():
        for quantizer in quantizers(model).values():
            quantizer.step.uniform_(0.02, 0.2)
            quantizer.initialized.fill_(True)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_round_trip_through_the_hub(tmp_path, hub_server, hub_token):
    """publish -> from_pretrained / pipeline -> identical logits; private; revision; offline from the cache."""
    import os
    import subprocess
    import sys

    import numpy as np
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RepositoryNotFoundError
    from PIL import Image
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, pipeline

    repo = "uniq/resnet18-w2a2"
    original = _random_model()
    export = tmp_path / "export"
    original.save_pretrained(export)
    assert not (export / "README.md").exists()
    assert main(["publish", str(export), "--repo-id", repo, "--token", hub_token]) == 0

    pixel_values = torch.randn(2, 3, 64, 64)
    expected = _logits(original, pixel_values)
    loaded = AutoModelForImageClassification.from_pretrained(repo).eval()
    assert type(loaded).__name__ == "UniQForImageClassification"
    assert torch.equal(_logits(loaded, pixel_values), expected)

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 96, 3), dtype=np.uint8))
    classifier = pipeline("image-classification", model=repo)
    processed = AutoImageProcessor.from_pretrained(repo)(image, return_tensors="pt")["pixel_values"]
    assert torch.equal(_logits(classifier.model.eval(), processed), _logits(original, processed))
    top = _logits(original, processed).softmax(-1)[0].topk(3)
    got = classifier(image, top_k=3)
    assert [g["label"] for g in got] == [original.config.id2label[i] for i in top.indices.tolist()]
    assert np.allclose([g["score"] for g in got], top.values.tolist(), rtol=1e-6, atol=0)
    card = ModelCard.load(hf_hub_download(repo, "README.md"))  # generated from the zoo entry
    assert card.data.eval_results is None and "w2a2" in card.data.tags and "67.8%" in card.text
    weights = (export / "model.safetensors").read_bytes()
    data_bytes = len(weights) - 8 - int.from_bytes(weights[:8], "little")
    ideal, _ = checkpoint_size(get_entry(repo))
    assert abs(data_bytes - ideal) <= 64  # the card's size is the real packed size (a checksum apart)
    assert f"`model.safetensors` in this repository: {len(weights) / 1e6:.2f} MB" in card.text

    # --private: reading needs the token
    assert main(["publish", str(export), "--repo-id", f"{repo}-private", "--private", "--token", hub_token,
                 "--zoo", repo]) == 0
    with pytest.raises(OSError, match="resnet18-w2a2-private"):
        AutoConfig.from_pretrained(f"{repo}-private")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(f"{repo}-private", "model.safetensors")
    private_weights = hf_hub_download(f"{repo}-private", "model.safetensors", token=hub_token)
    assert Path(private_weights).read_bytes() == (export / "model.safetensors").read_bytes()

    # --revision: a second version (another card; the same verified model) lands on that branch only
    export_v2 = tmp_path / "export-v2"
    shutil.copytree(export, export_v2)
    (export_v2 / "README.md").write_text("---\nlicense: apache-2.0\n---\n# v2 card\n")
    assert main(["publish", str(export_v2), "--repo-id", repo, "--revision", "v2", "--token", hub_token]) == 0
    assert "# v2 card" in Path(hf_hub_download(repo, "README.md", revision="v2")).read_text()
    assert "# v2 card" not in Path(hf_hub_download(repo, "README.md")).read_text()

    # offline: a fresh process with HF_HUB_OFFLINE=1 loads main from the same cache; the server sees nothing
    save_file({"pixel_values": pixel_values}, str(tmp_path / "in.safetensors"))
    repo_root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(filter(None, [repo_root, os.environ.get("PYTHONPATH")])))
    before = hub_server.request_count
    done = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT, str(tmp_path / "in.safetensors"),
                           str(tmp_path / "out.safetensors")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert hub_server.request_count == before
    assert torch.equal(load_file(str(tmp_path / "out.safetensors"))["logits"], expected)


def test_release_folder_holds_no_code_and_publish_adds_it(tmp_path, pristine):
    """save_pretrained copies the shipped code (trust_remote_code works on the folder); a run's release
    folder keeps its data only, and publish uploads the library's code with it."""
    from uniq_hub import UniQForImageClassification
    from uniq_hub.catalog.release_folder import export_model

    assert {p.name for p in pristine.glob("*.py")} == set(LIBRARY_CODE)
    model = UniQForImageClassification.from_pretrained(pristine)
    record = dict(model_id="me/fm-w2a2", dataset="fashion_mnist", split="test", top1=90.5, top5=99.6,
                  num_examples=10000, command="uniq-hub evaluate release --dataset fashion_mnist")
    folder = export_model(model, tmp_path / "release", record=record, onnx=False)
    assert (folder / "model.safetensors").read_bytes() == (pristine / "model.safetensors").read_bytes()
    assert not list(folder.rglob("*.py"))
    plan = plan_upload(folder, "me/fm-w2a2")
    assert {name: path for name, path in plan.files.items() if name.endswith(".py")} == {
        name: LIBRARY / name for name in LIBRARY_CODE}
