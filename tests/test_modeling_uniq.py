"""UniQForImageClassification: forward, auto classes, exact save / reload, remote code."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForImageClassification
from transformers.modeling_outputs import ImageClassifierOutputWithNoAttention

from tiny_models import tiny_model
from uniq_hub import QConv2d, UniQConfig, UniQForImageClassification, quantizers
from uniq_hub.model.packing import CHECKSUM_KEY, PACKED_SUFFIX, quantized_layers

X = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def tiny(**kwargs) -> UniQForImageClassification:
    """A calibrated resnet20 (random weights) whose BatchNorm statistics are not the identity, in eval mode."""
    model = tiny_model(**{"num_labels": 5, "image_size": 32, **kwargs},
                       batchnorm={"running_mean": (-0.1, 0.1), "running_var": (0.5, 1.5)})
    for module in model.model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.num_batches_tracked.fill_(7)
    return model


def logits(model, x=X) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values=x).logits


def test_forward_output_loss_and_architecture():
    model = tiny()
    out = model(pixel_values=X, labels=torch.tensor([0, 1, 4]))
    assert isinstance(out, ImageClassifierOutputWithNoAttention) and out.logits.shape == (3, 5)
    assert torch.allclose(out.loss, torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 4])))
    out.loss.backward()
    steps = [q.step for q in quantizers(model.model).values()]
    assert all(s.grad is not None for s in steps)  # step sizes are trained
    assert isinstance(model.model.layer1[0].conv1, QConv2d) and model.model.layer1[0].conv1.weight_quantizer.bits == 2
    assert "model.layer1.0.conv1.weight_quantizer.step" in model.state_dict()
    assert model.main_input_name == "pixel_values"
    assert model(X, return_dict=False)[0].shape == (3, 5)
    with pytest.raises(ValueError, match=r"pixel_values must have shape \(batch, 3, height, width\)"):
        model(pixel_values=torch.zeros(1, 1, 16, 16))


def test_full_precision_config_is_not_quantized():
    model = UniQForImageClassification(UniQConfig(arch="resnet20", w_bits=32, a_bits=32, num_labels=3))
    assert not quantizers(model.model) and not any(isinstance(m, QConv2d) for m in model.modules())


def test_auto_class_resolves_the_model():
    model = AutoModelForImageClassification.from_config(UniQConfig(arch="resnet20", num_labels=4))
    assert type(model) is UniQForImageClassification


def _assert_same_tensors(a: dict, b: dict, skip=()):
    assert set(a) == set(b)
    for key in a:
        if key not in skip:
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


@pytest.mark.parametrize(
    ("kwargs", "packed"),
    [
        (dict(), True),
        (dict(w_bits=1, a_bits=1), True),
        (dict(w_bits=4, a_bits=4, method="lsq", weight_granularity="layer"), True),
        (dict(w_bits=3, a_bits=3, num_channels=1, image_mean=[0.3], image_std=[0.4]), True),
        (dict(w_bits=1, a_bits=1), False),
        (dict(w_bits=4, a_bits=4, method="lsq", weight_granularity="layer"), False),
    ],
    ids=["w2a2-packed", "w1a1-packed", "w4a4-lsq-layer-packed", "w3a3-gray-packed", "w1a1-latent",
         "w4a4-lsq-layer-latent"],
)
def test_save_and_reload_is_bit_exact(tmp_path, kwargs, packed):
    model = tiny(**kwargs)
    x = torch.randn(2, model.config.num_channels, 20, 12)
    reference = logits(model, x)
    model.save_pretrained(tmp_path, packed=packed)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert type(reloaded) is UniQForImageClassification and not reloaded.training
    assert torch.equal(logits(reloaded, x), reference)
    layers = quantized_layers(model.model)
    weights = {f"model.{name}.weight" for name in layers}
    # Every tensor is the one saved: step sizes, BatchNorm, initialized flags, FP layers ...
    _assert_same_tensors(model.state_dict(), reloaded.state_dict(), skip=weights if packed else ())
    with torch.no_grad():
        for name, (layer, wq) in layers.items():
            expected = wq(layer.weight) if packed else layer.weight  # packed: the evaluated weights
            assert torch.equal(reloaded.get_parameter(f"model.{name}.weight"), expected), name
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert CHECKSUM_KEY in keys
    assert all((f"model.{name}{PACKED_SUFFIX}" in keys) == packed for name in layers)
    assert all((f"model.{name}.weight" in keys) != packed for name in layers)


def test_packed_reload_of_mobilenetv2_is_bit_exact(tmp_path):
    model = tiny_model("mobilenetv2", 4, num_labels=3, calibration=(2, 16))
    x = torch.randn(1, 3, 16, 16)
    model.save_pretrained(tmp_path)
    assert torch.equal(logits(UniQForImageClassification.from_pretrained(tmp_path), x), logits(model, x))


def test_latent_checkpoint_resumes_training(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path, packed=False)
    reloaded = UniQForImageClassification.from_pretrained(tmp_path)
    _assert_same_tensors(model.state_dict(), reloaded.state_dict())
    reloaded.train()
    loss = reloaded(pixel_values=X, labels=torch.tensor([1, 2, 3])).loss
    loss.backward()
    assert reloaded.model.layer1[0].conv1.weight.grad is not None


def test_step_pushed_negative_by_training_still_saves_and_reloads(tmp_path):
    """Training can drive a raw step below zero (the forward clamps it): the latent checkpoint keeps
    the raw value and reloads exactly; the packed release stores the clamped step and gives the same logits."""
    model = tiny()
    with torch.no_grad():
        model.model.fc.weight_quantizer.step.neg_()
    model.save_pretrained(tmp_path / "latent", packed=False)
    latent = UniQForImageClassification.from_pretrained(tmp_path / "latent")
    _assert_same_tensors(model.state_dict(), latent.state_dict())
    model.save_pretrained(tmp_path / "packed")
    packed = UniQForImageClassification.from_pretrained(tmp_path / "packed")
    assert bool((packed.model.fc.weight_quantizer.step > 0).all())
    torch.testing.assert_close(logits(packed), logits(model), rtol=0, atol=1e-5)


def test_saved_folder_carries_code_auto_map_and_preprocessor(tmp_path):
    tiny().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_uniq.UniQConfig",
        "AutoModel": "modeling_uniq.UniQModel",
        "AutoModelForImageClassification": "modeling_uniq.UniQForImageClassification",
        # AutoImageProcessor reads config.json for a local folder with timm's pretrained_cfg (uniq_hub/timm_models.py)
        "AutoImageProcessor": {"torchvision": "image_processing_uniq.UniQImageProcessor",
                               "pil": "image_processing_uniq.UniQImageProcessor"},
    }
    assert config["architectures"] == ["UniQForImageClassification"]
    code = {"configuration_uniq.py", "modeling_uniq.py", "image_processing_uniq.py", "packing.py", "bitpack.py",
            "loading.py", "quantize.py", "modules.py", "quant.py", "registry.py", "preresnet.py", "mobilenetv2.py"}
    assert code <= set(os.listdir(tmp_path))
    processor = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert processor["image_processor_type"] == "UniQImageProcessor"
    ref = "image_processing_uniq.UniQImageProcessor"
    assert processor["auto_map"] == {"AutoImageProcessor": {"torchvision": ref, "pil": ref}}
    assert processor["size"] == {"shortest_edge": 32} and processor["crop_size"] == {"height": 32, "width": 32}
    assert processor["num_channels"] == 3


_REMOTE = """
import sys, torch
sys.modules["uniq_hub"] = None  # make sure the package itself is not importable
try:
    import uniq_hub
except ImportError:
    pass
else:
    raise SystemExit("uniq_hub is importable")
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification, pipeline
folder, out = sys.argv[1], sys.argv[2]
model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
x = torch.load(out + "/x.pt", weights_only=True)
with torch.no_grad():
    torch.save(model(pixel_values=x).logits, out + "/logits.pt")
    base = AutoModel.from_pretrained(folder, trust_remote_code=True)  # the backbone, from the same code
    assert type(base).__name__ == "UniQModel" and type(base).__module__.startswith("transformers_modules.")
    assert torch.equal(model.model.fc(base(pixel_values=x).pooler_output), model(pixel_values=x).logits)
from PIL import Image
processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
assert type(processor).__module__.startswith("transformers_modules."), type(processor).__module__
pipe = pipeline("image-classification", model=model, image_processor=processor)
result = pipe(Image.new("RGB", (40, 30), (200, 10, 10)))
assert len(result) == 5 and {r["label"] for r in result} == set(model.config.id2label.values()), result
print("remote ok", type(pipe.image_processor).__name__)
"""


def test_remote_code_without_uniq_hub_gives_the_same_logits(tmp_path):
    model = tiny()
    folder, out = tmp_path / "model", tmp_path / "out"
    out.mkdir()
    model.save_pretrained(folder)
    torch.save(X, out / "x.pt")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_MODULES_CACHE")}
    env["HF_HOME"] = str(tmp_path / "hf_home")
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_REMOTE), str(folder), str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote ok UniQImageProcessor" in result.stdout
    assert torch.equal(torch.load(out / "logits.pt", weights_only=True), logits(model))


def test_push_to_hub_uploads_the_packed_release(hub_server, hub_token, tmp_path):
    """Against the local Hub of tests/conftest.py; ``packed=False`` is honoured on the way up too."""
    from huggingface_hub import HfApi, hf_hub_download

    model = tiny()
    model.push_to_hub("uniq/modeling-push", token=hub_token)
    model.save_pretrained(tmp_path / "local", push_to_hub=True, repo_id="uniq/modeling-save-push", token=hub_token,
                          packed=False)
    for repo, packed in (("uniq/modeling-push", True), ("uniq/modeling-save-push", False)):
        files = set(HfApi(token=hub_token).list_repo_files(repo))
        assert {"config.json", "model.safetensors", "preprocessor_config.json", "modeling_uniq.py"} <= files
        reloaded = UniQForImageClassification.from_pretrained(repo, token=hub_token)
        assert torch.equal(logits(reloaded), logits(model))
        with safe_open(hf_hub_download(repo, "model.safetensors", token=hub_token), "pt") as f:
            assert any(k.endswith(PACKED_SUFFIX) for k in f.keys()) == packed


def test_push_to_hub_takes_every_argument_of_transformers_push_to_hub():
    """Our push_to_hub states its arguments (no hidden attribute tells save_pretrained what to save); it must
    take every one transformers' takes, or a user's call would lose one: fails when transformers adds one."""
    import inspect

    from transformers.utils.hub import PushToHubMixin

    from uniq_hub.model.modeling_uniq import _PUSH_ARGUMENTS

    theirs = set(inspect.signature(PushToHubMixin.push_to_hub).parameters) - {"self"}
    ours = set(inspect.signature(UniQForImageClassification.push_to_hub).parameters)
    assert theirs <= ours, theirs - ours
    assert set(_PUSH_ARGUMENTS) == ours - {"self", "packed", "max_shard_size"}


def test_sharded_release_loads_exactly_from_a_folder_and_the_hub(hub_server, hub_token, tmp_path):
    """The loader resolves transformers' sharded layout itself (index, then each shard), locally and from the Hub."""
    model = tiny()
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    shards = sorted(p.name for p in (tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert torch.equal(logits(UniQForImageClassification.from_pretrained(tmp_path / "sharded")), logits(model))
    model.push_to_hub("uniq/modeling-sharded", token=hub_token, max_shard_size="20KB")
    reloaded = UniQForImageClassification.from_pretrained("uniq/modeling-sharded", token=hub_token)
    assert torch.equal(logits(reloaded), logits(model))
    assert reloaded.config.name_or_path == "uniq/modeling-sharded"


def test_loading_options_pass_through_to_transformers(tmp_path):
    """dtype, output_loading_info and a config given as an object go through the public from_pretrained."""
    model = tiny()
    model.save_pretrained(tmp_path)
    half, info = UniQForImageClassification.from_pretrained(tmp_path, dtype=torch.float64, output_loading_info=True)
    assert half.dtype == torch.float64 and not half.training
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()
    config = UniQConfig.from_pretrained(tmp_path)
    again = UniQForImageClassification.from_pretrained(tmp_path, config=config)
    assert torch.equal(logits(again), logits(model))
    assert UniQForImageClassification.base_model_prefix == "model" and again.base_model is again.model


def test_saving_keeps_a_graph_only_beside_the_same_weights(tmp_path, caplog):
    """save_pretrained imports no deployment tooling: a graph in the folder stays when the weights saved are
    unchanged (same checksum) and is removed, with a warning to re-export, when they change."""
    model = tiny()
    model.save_pretrained(tmp_path)
    graph = tmp_path / "onnx" / "model.onnx"
    graph.parent.mkdir()
    graph.write_bytes(b"a graph")
    with caplog.at_level(logging.INFO, logger="uniq_hub.model.modeling_uniq"):
        model.save_pretrained(tmp_path)
    assert graph.read_bytes() == b"a graph" and "kept" in caplog.text
    with torch.no_grad():
        model.model.fc.bias.add_(1.0)
    with caplog.at_level(logging.WARNING, logger="uniq_hub.model.modeling_uniq"):
        model.save_pretrained(tmp_path)
    assert not graph.exists() and "re-export it with `uniq-hub export-onnx" in caplog.text
    code = ("import sys, tempfile\nfrom uniq_hub import UniQConfig, UniQForImageClassification\n"
            "UniQForImageClassification(UniQConfig(arch='resnet20')).save_pretrained(tempfile.mkdtemp())\n"
            "print(sorted(m for m in sys.modules if m.startswith(('uniq_hub.deploy', 'onnx'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
