"""timm loading (uniq_hub/timm_models.py): the UniQ architectures in timm's registry, and
``timm.create_model("hf-hub:...", pretrained=True)`` against the local Hub (tests/hub_server.py)
through timm's and huggingface_hub's real clients: the same logits as transformers, timm's
preprocessing against our image processor, strict loading, new classifiers, and one released zoo
folder through timm, transformers and the ONNX classifier on the 10k Fashion-MNIST test images."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from huggingface_hub import HfApi
from PIL import Image
from timm.data import create_transform, resolve_data_config
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from tiny_models import tiny_model
from train_helpers import REPO, WITHOUT_TORCH, subprocess_env
from uniq_hub import CheckpointError, UniQConfig, UniQForImageClassification, UniQImageProcessor
from uniq_hub.model.registry import list_models
from uniq_hub.timm_models import UniQTimmModel

FMNIST = Path("/usr/share/datasets/fashion-mnist")
# (name, config): grayscale 2-bit ResNet-20 as the zoo's, a 1-bit RGB one, a float one, MobileNetV2 with w != a
CASES = {
    "r20-w2a2": dict(arch="resnet20", w_bits=2, a_bits=2, num_channels=1, image_size=28, num_labels=10),
    "r20-w1a1": dict(arch="resnet20", w_bits=1, a_bits=1, num_channels=3, image_size=32, num_labels=5),
    "r20-fp": dict(arch="resnet20", w_bits=32, a_bits=32, num_channels=1, image_size=28, num_labels=4),
    "mnv2-w3a4": dict(arch="mobilenetv2", w_bits=3, a_bits=4, num_channels=3, image_size=32, num_labels=3),
}
TIMM_KEYS = ("architecture", "num_classes", "label_names", "pretrained_cfg", "model_args")


@pytest.fixture(scope="module")
def pushed(hub_server, hub_token, tmp_path_factory):
    """Every CASES model saved, and pushed to the local Hub as uniq-timm/<name>."""
    out = {}
    for name, fields in CASES.items():
        folder = tmp_path_factory.mktemp(name) / "export"
        # non-trivial BatchNorm statistics, so that a mix-up of tensors shows
        model = tiny_model(**fields, calibration=(8, fields["image_size"]),
                           batchnorm={"running_mean": (-0.5, 0.5), "running_var": (0.5, 2.0)})
        model.save_pretrained(folder)
        repo_id = f"uniq-timm/{name}"
        HfApi(token=hub_token).create_repo(repo_id, exist_ok=True)
        HfApi(token=hub_token).upload_folder(repo_id=repo_id, folder_path=folder)
        out[name] = (repo_id, folder)
    return out


def _inputs(fields: dict, n: int = 3) -> torch.Tensor:
    side = fields["image_size"]
    return torch.randn(n, fields["num_channels"], side, side, generator=torch.Generator().manual_seed(1))


def test_import_uniq_hub_registers_every_architecture():
    names = timm.list_models("uniq_*")
    assert names == sorted(f"uniq_{arch}" for arch in list_models())
    for name in names:
        cfg = timm.models.get_pretrained_cfg(name).to_dict()
        assert {"mean", "std", "input_size", "crop_pct", "interpolation", "num_classes"} <= set(cfg)
        assert len(cfg["mean"]) == len(cfg["std"]) == cfg["input_size"][0]  # channels
    model = timm.create_model("uniq_resnet20", num_classes=7, in_chans=1, w_bits=3, a_bits=2)
    assert isinstance(model, UniQTimmModel) and (model.config.w_bits, model.config.a_bits) == (3, 2)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 7)


@pytest.mark.parametrize("order", ["uniq_hub first", "timm first"])
def test_import_registers_explicitly_in_either_order_without_import_hooks(order):
    """``import uniq_hub`` registers with transformers and timm itself: no finder of ours stays in
    ``sys.meta_path``, and the import order does not matter."""
    first, second = ("uniq_hub", "timm") if order == "uniq_hub first" else ("timm", "uniq_hub")
    code = (
        f"import sys\nimport {first}\nimport {second}\nimport timm\n"
        "from transformers import AutoConfig\n"
        "ours = [type(f).__module__ for f in sys.meta_path if type(f).__module__.startswith('uniq_hub')]\n"
        "assert not ours, ours\n"
        "print(type(AutoConfig.for_model('uniq')).__name__, len(timm.list_models('uniq_*')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(),
                         cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["UniQConfig", str(len(list_models()))]


def test_the_onnx_runtime_imports_where_torch_cannot_be_imported():
    code = WITHOUT_TORCH + (
        "import uniq_hub\nfrom uniq_hub import OnnxImageClassifier\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\nprint(OnnxImageClassifier.__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(),
                         cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "OnnxImageClassifier"


def test_saved_config_carries_timm_keys_beside_transformers_keys(pushed):
    _, folder = pushed["r20-w2a2"]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "uniq" and "auto_map" in config
    assert config["architecture"] == "uniq_resnet20" and config["num_classes"] == 10
    assert config["label_names"] == [config["id2label"][str(i)] for i in range(10)]
    assert config["model_args"]["w_bits"] == 2 and config["pretrained_cfg"]["input_size"] == [1, 28, 28]
    assert config["pretrained_cfg"]["custom_load"] == "hf"
    # transformers reads the same file; the timm keys are derived, never a second source of truth
    loaded = AutoConfig.from_pretrained(folder)
    assert type(loaded) is UniQConfig
    assert {k: getattr(loaded, k) for k in TIMM_KEYS} == {k: config[k] for k in TIMM_KEYS}
    stale = dict(config, num_classes=99, architecture="uniq_resnet18")
    (folder.parent / "stale").mkdir()
    (folder.parent / "stale" / "config.json").write_text(json.dumps(stale))
    again = AutoConfig.from_pretrained(folder.parent / "stale")
    assert (again.num_classes, again.architecture) == (10, "uniq_resnet20")
    relabelled = UniQConfig.from_pretrained(folder, num_labels=3)
    assert relabelled.num_classes == relabelled.pretrained_cfg["num_classes"] == len(relabelled.label_names) == 3


@pytest.mark.parametrize("name", list(CASES))
def test_timm_hf_hub_gives_the_transformers_logits(pushed, name):
    repo_id, _ = pushed[name]
    fields = CASES[name]
    model = timm.create_model(f"hf-hub:{repo_id}", pretrained=True).eval()
    reference = AutoModelForImageClassification.from_pretrained(repo_id).eval()
    assert isinstance(model, UniQTimmModel) and model.num_classes == fields["num_labels"]
    assert model.pretrained_cfg["label_names"] == [reference.config.id2label[i] for i in range(fields["num_labels"])]
    x = _inputs(fields)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x).logits)
        features = model.forward_features(x)
        assert torch.equal(model.forward_head(features), reference(x).logits)
    ours, theirs = model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_timm_local_dir_loads_a_saved_folder(pushed):
    _, folder = pushed["r20-w2a2"]
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    reference = UniQForImageClassification.from_pretrained(folder).eval()
    x = _inputs(CASES["r20-w2a2"])
    with torch.no_grad():
        assert torch.equal(model(x), reference(x).logits)
    relabelled = timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=3).eval()
    with torch.no_grad():
        assert torch.equal(relabelled.forward_features(x), model.forward_features(x))
    assert relabelled(x).shape == (3, 3)


def test_new_num_classes_reinitialises_only_the_classifier(pushed):
    repo_id, _ = pushed["r20-w2a2"]
    model = timm.create_model(f"hf-hub:{repo_id}", pretrained=True, num_classes=3).eval()
    reference = AutoModelForImageClassification.from_pretrained(repo_id, num_labels=3, ignore_mismatched_sizes=True)
    assert model.get_classifier().out_features == 3 and model.num_classes == 3
    ours, theirs = model.state_dict(), reference.eval().state_dict()
    assert ours.keys() == theirs.keys()
    head = f"model.{model.model.last_layer}."
    backbone = [k for k in ours if not k.startswith(head)]
    assert backbone and all(torch.equal(ours[k], theirs[k]) for k in backbone)
    assert not bool(model.get_classifier().input_quantizer.initialized)  # to be calibrated, as with transformers
    x = _inputs(CASES["r20-w2a2"])
    headless = timm.create_model(f"hf-hub:{repo_id}", pretrained=True, num_classes=0).eval()
    base = AutoModel.from_pretrained(repo_id).eval()
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), reference.model.forward_features(x))
        assert torch.equal(headless(x), base(x).pooler_output)


def _upload(hub_token: str, repo_id: str, folder: Path) -> None:
    api = HfApi(token=hub_token)
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=folder)


def _same_error(repo_id: str) -> str:
    with pytest.raises(CheckpointError) as transformers_error:
        AutoModelForImageClassification.from_pretrained(repo_id)
    with pytest.raises(CheckpointError) as timm_error:
        timm.create_model(f"hf-hub:{repo_id}", pretrained=True)
    assert str(timm_error.value) == str(transformers_error.value)
    return str(timm_error.value)


def test_tampered_or_mismatched_weights_are_the_same_named_error_through_timm(pushed, hub_token, tmp_path):
    _, folder = pushed["r20-w2a2"]
    tampered = Path(shutil.copytree(folder, tmp_path / "tampered"))
    data = bytearray((tampered / "model.safetensors").read_bytes())
    data[-1] ^= 0x40  # one bit of the last tensor's data
    (tampered / "model.safetensors").write_bytes(bytes(data))
    _upload(hub_token, "uniq-timm/tampered", tampered)
    assert "checksum mismatch" in _same_error("uniq-timm/tampered")

    mismatched = Path(shutil.copytree(folder, tmp_path / "mismatched"))  # config says 4 bits, the weights are 2-bit
    config = json.loads((mismatched / "config.json").read_text())
    config["w_bits"] = config["model_args"]["w_bits"] = 4
    (mismatched / "config.json").write_text(json.dumps(config))
    _upload(hub_token, "uniq-timm/mismatched", mismatched)
    assert "w_bits" in _same_error("uniq-timm/mismatched")


def _photo() -> Image.Image:
    from sklearn.datasets import load_sample_images

    return Image.fromarray(load_sample_images().images[1])  # 640x427 RGB


def _timm_and_ours(fields: dict, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    config = UniQConfig(**fields)
    model = timm.create_model(f"uniq_{config.arch}", pretrained_cfg_overlay=config.timm_keys()["pretrained_cfg"],
                              in_chans=config.num_channels, **config.timm_keys()["model_args"])
    transform = create_transform(**resolve_data_config(model=model))
    ours = UniQImageProcessor.from_model_config(config)(image, return_tensors="pt").pixel_values[0]
    return transform(image), ours, np.array(config.image_std, dtype=np.float32).reshape(-1, 1, 1)


def test_timm_preprocessing_equals_our_image_processor():
    """28x28 grayscale at its own size (the Fashion-MNIST zoo): equal to float rounding. Resized photos: within
    one 8-bit step (PIL's antialiased bilinear in timm, torchvision's on uint8 tensors in ours) once the
    crops are aligned: torchvision (timm) rounds the centre crop's offset, transformers floors it, so
    where half the margin is k + 0.5 with k odd timm's crop starts one pixel further."""
    fm = Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8), "L")
    a, b, _ = _timm_and_ours(CASES["r20-w2a2"], fm)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)  # (x / 255 - mean) / std in another float order

    photo = _photo()  # 640x427
    for side, crop_pct in [(64, 1.0), (64, 64 / 73), (64, 64 / 74), (32, 0.875), (224, 0.875)]:
        a, b, std = _timm_and_ours(dict(arch="resnet20", num_channels=3, image_size=side, crop_pct=crop_pct), photo)
        assert a.shape == b.shape == (3, side, side)
        resized = round(side / crop_pct)  # shortest edge; the other: int(resized * 640 / 427), as both compute it
        dy, dx = (_crop_shift(resized - side), _crop_shift(int(resized * 640 / 427) - side))
        aligned = a[:, : side - dy, : side - dx] - b[:, dy:, dx:]
        assert float(np.abs(aligned.numpy() * std * 255).max()) <= 1.0 + 1e-4, (side, crop_pct, dy, dx)


def _crop_shift(margin: int) -> int:
    """How many pixels further torchvision's CenterCrop (timm) starts than transformers' (round vs floor)."""
    return int(round(margin / 2.0)) - int(margin / 2.0)


def _zoo_folder_w2a2() -> Path | None:
    from uniq_hub.hub.zoo_release import RELEASE_DIR

    folder = RELEASE_DIR / "resnet20-fashion-mnist-w2a2"
    return folder if (folder / "model.safetensors").is_file() else None


def _readme_block(section: str) -> str:
    text = (REPO / "README.md").read_text()
    body = text[text.index(f"## {section}\n"):]
    return body[body.index("```python\n") + len("```python\n"):body.index("```\n", body.index("```python\n") + 10)]


@pytest.mark.skipif(_zoo_folder_w2a2() is None, reason="no released ResNet-20 w2a2 folder in zoo/")
def test_readme_timm_snippet_runs_against_the_local_hub(hub_server, hub_token, tmp_path):
    """README's "Use with timm" code, as written, with uniq/resnet20-fashion-mnist-w2a2 served by the local Hub."""
    from uniq_hub.hub.zoo_release import resave_release

    folder = Path(shutil.copytree(_zoo_folder_w2a2(), tmp_path / "w2a2"))
    if "architecture" not in json.loads((folder / "config.json").read_text()):
        resave_release(folder)  # saved before config.json carried timm's keys
    _upload(hub_token, "uniq/resnet20-fashion-mnist-w2a2", folder)
    code = _readme_block("Use with timm")
    assert 'timm.create_model("hf-hub:uniq/resnet20-fashion-mnist-w2a2", pretrained=True)' in code
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env() | {
        "HF_HUB_OFFLINE": "0"}, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    label, score = out.stdout.split("\n")[-2].rsplit(" ", 1)
    labels = json.loads((folder / "config.json").read_text())["label_names"]
    assert label in labels and 0 < float(score) <= 1


# ------------------------------------------------------------------------------------------------
# Acceptance: one released zoo folder through three runtimes on the 10k test images
# ------------------------------------------------------------------------------------------------


def _zoo_folder_with_onnx() -> Path | None:
    from uniq_hub.hub.zoo_release import release_folders

    folders = sorted(f for f in release_folders().values() if (f / "onnx" / "model.onnx").is_file())
    preferred = [f for f in folders if f.name == "resnet20-fashion-mnist-w2a2"]  # the cheapest to run 3 times
    return (preferred or [f for f in folders if "resnet20" in f.name] or folders or [None])[0]


def _three_runtimes_module():
    spec = importlib.util.spec_from_file_location("three_runtimes", REPO / "benchmarks" / "three_runtimes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_released_zoo_folder_same_top1_in_timm_transformers_and_onnx(hub_server, hub_token, tmp_path):
    """benchmarks/three_runtimes.py's code on 1000 test images (the script runs all 10k: README, Use with timm)."""
    source = _zoo_folder_with_onnx()
    if source is None:
        pytest.skip("no released zoo folder with onnx/model.onnx")
    bench = _three_runtimes_module()
    folder, _ = bench.prepare_folder(source, tmp_path / source.name)
    repo_id = f"uniq-timm/{source.name}"
    _upload(hub_token, repo_id, folder)
    record = bench.three_runtimes(repo_id, limit=1000)
    print(f"\n{source.name}: {record}")
    assert record["num_examples"] == 1000
    # timm's tensors equal the processor's to float rounding (1e-6): identical predictions but for a rounding
    # flip at a quantization boundary, which one ulp can cause (none measured on the 10k images of the w2a2 entry)
    assert record["predictions_differing_from_transformers"]["timm"] <= 1
    top1 = record["top1"]
    assert abs(top1["timm"] - top1["transformers"]) <= 0.1
    # the exact graph: rare one-level rounding flips (the zoo's ONNX top-1 is within 0.02 points, 2 images, on 10k)
    assert record["predictions_differing_from_transformers"]["onnx"] <= 4


def test_timm_loads_through_the_same_gate_whatever_the_repos_config_says(pushed, hub_token, tmp_path):
    """Without ``custom_load`` in the repo's config, timm still loads through ``load_pretrained``'s checks
    (an ``lsq`` method over UniQ weights is refused as from_pretrained refuses it), and a config naming a
    weights file on the user's disk is refused; so is a ``local-dir:`` folder without ``model.safetensors``."""
    _, folder = pushed["r20-w2a2"]
    edited = Path(shutil.copytree(folder, tmp_path / "no-custom-load"))
    config = json.loads((edited / "config.json").read_text())
    config["pretrained_cfg"].pop("custom_load")
    config["model_args"]["method"] = "lsq"
    (edited / "config.json").write_text(json.dumps(config))
    _upload(hub_token, "uniq-timm/no-custom-load", edited)
    with pytest.raises(CheckpointError, match="'uniq_hub.method' is \"uniq\" but config.json gives \"lsq\""):
        timm.create_model("hf-hub:uniq-timm/no-custom-load", pretrained=True)

    elsewhere = Path(shutil.copytree(folder, tmp_path / "elsewhere"))
    config = json.loads((elsewhere / "config.json").read_text())
    local = tmp_path / "users-own" / "model.safetensors"
    local.parent.mkdir()
    shutil.copyfile(pushed["r20-fp"][1] / "model.safetensors", local)
    config["pretrained_cfg"].update(file=str(local), custom_load=False)
    (elsewhere / "config.json").write_text(json.dumps(config))
    _upload(hub_token, "uniq-timm/elsewhere", elsewhere)
    with pytest.raises(CheckpointError, match=rf"names weights outside the repo \(file='{local}'\); refused"):
        timm.create_model("hf-hub:uniq-timm/elsewhere", pretrained=True)

    no_weights = Path(shutil.copytree(folder, tmp_path / "no-weights"))
    (no_weights / "model.safetensors").unlink()
    torch.save({}, no_weights / "pytorch_model.bin")
    with pytest.raises(Exception, match="model.safetensors"):
        timm.create_model(f"local-dir:{no_weights}", pretrained=True)
