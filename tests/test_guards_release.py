"""Nothing wrong goes out, nothing runs that was not verified (issue 20): file operations stay
inside the model folder, an ONNX graph is bound to its weights, packed weights need their
metadata (and `uniq-hub migrate` restores it), the ONNX classifier checks what the torch path
checks, publish-zoo is all or nothing, Hub requests time out, and the CLI answers in one line.
Real exports, the local test Hub."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from tiny_models import onnx_model, real_export
from uniq_hub import OnnxImageClassifier, UniQConfig, UniQForImageClassification, UniQImageProcessor
from uniq_hub.cli import main
from uniq_hub.deploy.onnx_export import OnnxExportError, OnnxModule, export_onnx, verify_onnx
from uniq_hub.deploy.onnx_graph import ONNX_FILE, GraphError, check_graph
from uniq_hub.hub.publish_plan import PublishError, plan_upload
from uniq_hub.hub.zoo_release import publish_zoo
from uniq_hub.model.packing import CheckpointError


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Two small models (different weights), each saved with its exact ONNX graph, and an image."""
    root = tmp_path_factory.mktemp("guards")
    for seed in (0, 1):
        model = onnx_model(seed)
        model.save_pretrained(root / f"m{seed}")
        export_onnx(model, root / f"m{seed}" / ONNX_FILE)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28)).astype(np.uint8), "L").save(root / "x.png")
    return root


@pytest.fixture()
def m0(saved, tmp_path):
    return Path(shutil.copytree(saved / "m0", tmp_path / "m0"))


def _one_line_exit(argv: list[str], match: str) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    message = str(info.value.code)
    assert match in message and "\n" not in message, message
    return message


# ---------------------------------------------------------------------------------------------
# 2. No file operation leaves the folder


def test_export_onnx_never_writes_through_a_planted_link(m0, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    (m0 / ONNX_FILE).unlink()
    os.symlink(outside, m0 / "onnx" / ".tmp-model.onnx")  # the temporary name a cloned repo could carry
    os.symlink(outside, m0 / ONNX_FILE)  # even the target itself: the link is replaced, not followed
    assert main(["export-onnx", str(m0)]) == 0
    assert outside.read_text() == "precious"
    assert not (m0 / ONNX_FILE).is_symlink() and verify_onnx(m0) is not None
    # an onnx/ folder that is a link to elsewhere is refused, and nothing is written there
    shutil.rmtree(m0 / "onnx")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, m0 / "onnx")
    _one_line_exit(["export-onnx", str(m0)], "outside the model folder")
    assert list(elsewhere.iterdir()) == []


def test_weights_outside_the_folder_are_refused(m0, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(m0 / "model.safetensors", elsewhere / "model.safetensors")
    index = {"metadata": {}, "weight_map": {"model.fc.bias": "../elsewhere/model.safetensors"}}
    (m0 / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"index\.json: names the weight file '\.\./elsewhere/model\."):
        UniQForImageClassification.from_pretrained(m0)
    with pytest.raises(PublishError, match="not a file name inside the folder"):
        plan_upload(m0, "me/model")
    (m0 / "model.safetensors.index.json").unlink()
    os.symlink(elsewhere / "model.safetensors", m0 / "model.safetensors")  # a link out of the folder
    with pytest.raises(CheckpointError, match="outside the model folder"):
        UniQForImageClassification.from_pretrained(m0)
    with pytest.raises(GraphError, match="outside the model folder"):
        OnnxImageClassifier.from_pretrained(m0)


def test_graph_with_external_data_is_refused(m0):
    graph = onnx.load(str(m0 / ONNX_FILE))
    onnx.save(graph, str(m0 / ONNX_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    with pytest.raises(GraphError, match="keeps its data in an external file"):
        check_graph(m0)


# ---------------------------------------------------------------------------------------------
# 3. The graph is bound to its weights


def test_a_graph_runs_only_with_the_weights_it_was_exported_from(m0, saved):
    shutil.copyfile(saved / "m1" / ONNX_FILE, m0 / ONNX_FILE)  # another model's graph
    for load in (lambda: OnnxImageClassifier.from_pretrained(m0, backend="onnxruntime"),
                 lambda: OnnxModule(m0, "onnxruntime"), lambda: verify_onnx(m0)):
        with pytest.raises(ValueError, match=r"stale or foreign file: exported from other weights.*export-onnx"):
            load()
    _one_line_exit(["predict", str(saved / "x.png"), "--model", str(m0), "--runtime", "onnxruntime"],
                   "stale or foreign file")


def test_an_edited_graph_is_refused_with_or_without_weights(m0):
    data = bytearray((m0 / ONNX_FILE).read_bytes())
    good = bytes(data)
    data[len(data) // 2] ^= 0x01  # one flipped bit inside the initializers
    (m0 / ONNX_FILE).write_bytes(bytes(data))
    with pytest.raises(GraphError, match="checksum does not match its content"):
        OnnxImageClassifier.from_pretrained(m0)
    (m0 / "model.safetensors").unlink()  # an ONNX-only folder: its own checksum still binds it
    with pytest.raises(GraphError, match="checksum does not match its content"):
        OnnxImageClassifier.from_pretrained(m0)
    (m0 / ONNX_FILE).write_bytes(good)
    assert OnnxImageClassifier.from_pretrained(m0).labels == ["top", "upper", "lower", "bottom"]


def test_save_pretrained_removes_a_stale_graph_and_says_so(m0, caplog):
    model = UniQForImageClassification.from_pretrained(m0)
    with caplog.at_level(logging.INFO, logger="uniq_hub.model.modeling_uniq"):
        model.save_pretrained(m0)  # the same weights: the graph still belongs to them
    assert (m0 / ONNX_FILE).is_file() and "kept" in caplog.text
    with torch.no_grad():
        model.model.fc.bias.add_(1.0)  # new weights
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="uniq_hub.model.modeling_uniq"):
        model.save_pretrained(m0)
    assert not (m0 / ONNX_FILE).exists()
    assert "removed: it was not exported from the weights just saved" in caplog.text
    model.save_pretrained(m0)
    export_onnx(model, m0 / ONNX_FILE)  # or re-exported from them
    assert verify_onnx(m0) is not None


# ---------------------------------------------------------------------------------------------
# 4. Metadata is mandatory for packed releases; `uniq-hub migrate` restores it


def test_packed_weights_without_metadata_are_refused_until_migrated(m0):
    reference = UniQForImageClassification.from_pretrained(m0).eval()
    x = torch.rand(2, 1, 28, 28)
    save_file(load_file(m0 / "model.safetensors"), m0 / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"no uniq_hub\.\* metadata .*`uniq-hub migrate "):
        UniQForImageClassification.from_pretrained(m0)
    config = json.loads((m0 / "config.json").read_text())
    (m0 / "config.json").write_text(json.dumps({**config, "method": "lsq"}))  # an edit it could hide
    with pytest.raises(CheckpointError, match="no uniq_hub"):
        UniQForImageClassification.from_pretrained(m0)
    before = {p.name: p.read_bytes() for p in m0.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit, match=r"no uniq_hub metadata, so config.json's a_bits=2, method='lsq'.* cannot be "
                                         r"checked .* pass --trust-config; nothing was written"):
        main(["migrate", str(m0)])  # the edited method is not blessed
    assert {p.name: p.read_bytes() for p in m0.rglob("*") if p.is_file()} == before
    (m0 / "config.json").write_text(json.dumps(config))
    assert main(["migrate", str(m0), "--trust-config"]) == 0
    migrated = UniQForImageClassification.from_pretrained(m0).eval()
    with torch.no_grad():
        assert torch.equal(migrated(x).logits, reference(x).logits)
    check_graph(m0)  # the graph still belongs to the (byte-identical) weights


# ---------------------------------------------------------------------------------------------
# 8. The ONNX classifier checks what the torch path checks


def test_onnx_classifier_checks_processor_labels_top_k_and_threads(m0, saved):
    clf = OnnxImageClassifier.from_pretrained(m0, backend="onnxruntime")
    image = str(saved / "x.png")
    assert len(clf(image)) == 4 and len(clf(image, top_k=None)) == 4  # pipeline: top_k capped at num_labels
    assert clf(image, top_k=0) == [] and len(clf(image, top_k=2)) == 2
    for top_k in (-1, 1.5, True):
        with pytest.raises(ValueError, match="top_k must be an integer >= 0"):
            clf(image, top_k=top_k)
    for threads in (0, 10**6, 2.5):
        with pytest.raises(ValueError, match="threads must be an integer in 1.."):
            OnnxImageClassifier.from_pretrained(m0, threads=threads)
    processor = json.loads((m0 / "preprocessor_config.json").read_text())
    (m0 / "preprocessor_config.json").write_text(json.dumps({**processor, "image_std": [0.0]}))
    with pytest.raises(ValueError, match="image_std must be positive and finite"):
        OnnxImageClassifier.from_pretrained(m0)
    (m0 / "preprocessor_config.json").write_text(json.dumps({**processor, "crop_size": {"height": 30000,
                                                                                      "width": 30000}}))
    with pytest.raises(ValueError, match="crop height must be in 1..2048"):
        OnnxImageClassifier.from_pretrained(m0)
    (m0 / "preprocessor_config.json").write_text(json.dumps({**processor, "image_mean": 0.3, "image_std": 0.3}))
    np.testing.assert_array_equal(OnnxImageClassifier.from_pretrained(m0).logits(image), clf.logits(image))
    config = json.loads((m0 / "config.json").read_text())
    config["id2label"] = {str(i): f"c{i}" for i in range(3)}  # 3 names for a graph of 4 outputs
    config["label2id"] = {f"c{i}": i for i in range(3)}
    (m0 / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="the graph has 4 outputs but config.json names 3 labels"):
        OnnxImageClassifier.from_pretrained(m0)


def test_scalar_image_mean_and_std_save_and_load(tmp_path):
    """transformers allows a float or a list; both save (from_model_config) and load."""
    model = onnx_model()
    model.config.image_mean, model.config.image_std = 0.3, 0.3  # as transformers' common tests set them
    model.save_pretrained(tmp_path / "m")
    processor = UniQImageProcessor.from_pretrained(tmp_path / "m")
    assert list(processor.image_mean) == [0.3] and list(processor.image_std) == [0.3]
    assert list(UniQImageProcessor(image_mean=0.5, image_std=0.25, num_channels=3).image_std) == [0.25] * 3


# ---------------------------------------------------------------------------------------------
# 9. Sizes are bounded before anything is allocated; one error style for the CLI


def test_sizes_are_bounded_before_allocation(m0):
    with pytest.raises(ValueError, match="num_labels must be an int in 1..100000"):
        UniQConfig(arch="resnet20", num_labels=5_000_000)
    with pytest.raises(ValueError, match="crop_size.height must be in 1..2048"):
        UniQImageProcessor(crop_size={"height": 30000, "width": 30000})
    config = json.loads((m0 / "config.json").read_text())
    (m0 / "config.json").write_text(json.dumps({**config, "image_size": 20000}))
    _one_line_exit(["export-onnx", str(m0)], "uniq-hub export-onnx: ValueError: UniQConfig.image_size must be an "
                                             "int in 1..2048, got 20000")
    with pytest.raises(OnnxExportError, match="input size 20000x20000 is not in 1..2048"):
        export_onnx(onnx_model(), m0 / "x.onnx", input_size=20000)


def test_cli_errors_are_one_line_unless_debug(tmp_path, monkeypatch):
    missing = str(tmp_path / "no-such-model")
    message = _one_line_exit(["predict", missing, "--model", missing, "--runtime", "onnxruntime"],
                             "uniq-hub predict: ")
    assert "--debug" in message
    with pytest.raises(FileNotFoundError):  # --debug: the exception itself, with its traceback
        main(["predict", missing, "--model", missing, "--runtime", "onnxruntime", "--debug"])
    monkeypatch.setenv("UNIQ_HUB_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["predict", missing, "--model", missing, "--runtime", "onnxruntime"])


# ---------------------------------------------------------------------------------------------
# 7. Every network call has a timeout


@pytest.mark.parametrize("argv", [
    ["predict", "IMG", "--model", "uniq/hangs", "--runtime", "onnxruntime"],
    # transformers' own download retries 5 times (1 + 2 + 4 + 8 + 8 s apart): about 30 s with a 1 s timeout;
    # `predict --runtime torch` takes the same path
    ["export-onnx", "uniq/hangs", "--output", "OUT"],
])
def test_commands_give_up_on_a_hub_that_never_answers(argv, saved, tmp_path, hub_server, monkeypatch):
    monkeypatch.setenv("UNIQ_HUB_TIMEOUT", "1")
    argv = [str(saved / "x.png") if a == "IMG" else str(tmp_path / "g.onnx") if a == "OUT" else a for a in argv]
    with hub_server.failing("hang"):
        start = time.monotonic()
        with pytest.raises(SystemExit) as info:
            main(argv)
        elapsed = time.monotonic() - start
    assert elapsed < 45, elapsed  # bounded (huggingface_hub's own download timeouts are 10 s each)
    assert str(info.value.code).startswith(f"uniq-hub {argv[0]}: ") and "\n" not in str(info.value.code)


def test_onnx_classifier_gives_up_on_a_hub_that_never_answers(hub_server):
    with hub_server.failing("hang"):
        start = time.monotonic()
        with pytest.raises(Exception) as info:  # noqa: PT011 (huggingface_hub's own error type)
            OnnxImageClassifier.from_pretrained("uniq/hangs", timeout=1)
        assert time.monotonic() - start < 30
    assert "timed out" in str(info.value).lower() or "timeout" in type(info.value).__name__.lower() \
        or "connect" in str(info.value).lower(), repr(info.value)


# ---------------------------------------------------------------------------------------------
# 1. publish-zoo: every repo id and every entry checked before anything goes up


def test_publish_zoo_is_all_or_nothing(tmp_path, hub_server, hub_token):
    root = tmp_path / "zoo"
    first = real_export(root / "aaa-first")
    shutil.copytree(first, root / "bbb-second")
    shutil.copytree(first, root / "ccc-third")
    (root / "ccc-third" / "quantize.py").write_text("# not the library's code\n")
    before = hub_server.request_count
    with pytest.raises(PublishError, match=r"uniq/ccc-third: .*quantize\.py: differs from this uniq_hub's .*nothing "
                                           r"was uploaded"):
        publish_zoo(root, token=hub_token)
    assert hub_server.request_count == before  # entries 1-2 did not go up either
    shutil.rmtree(root / "ccc-third")
    shutil.copytree(first, root / "bad name")  # an invalid repo id is refused before any verification
    start = time.monotonic()
    with pytest.raises(PublishError, match="'uniq/bad name' is not a valid Hub repo id"):
        publish_zoo(root, token=hub_token)
    assert time.monotonic() - start < 5 and hub_server.request_count == before


def test_misspelled_config_keys_are_refused(m0):
    with pytest.raises(ValueError, match=r"unknown key 'abits' \(did you mean 'a_bits'\?\); it would be ignored"):
        UniQConfig(arch="resnet20", abits=4)
    config = json.loads((m0 / "config.json").read_text())
    (m0 / "config.json").write_text(json.dumps({**config, "wbits": 4}))
    with pytest.raises(ValueError, match=r"unknown key 'wbits' \(did you mean 'w_bits'\?\)"):
        UniQForImageClassification.from_pretrained(m0)
    (m0 / "config.json").write_text(json.dumps({**config, "my_note": "kept"}))  # other extra keys stay allowed
    assert UniQForImageClassification.from_pretrained(m0).config.my_note == "kept"
