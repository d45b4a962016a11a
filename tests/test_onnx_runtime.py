"""OnnxImageClassifier (no torch), `uniq-hub export-onnx` / `predict`, `evaluate --runtime`, bad files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tiny_models import onnx_model
from train_helpers import CLASSES, WITHOUT_TORCH, eager_kernels, make_tiny_dataset, subprocess_env  # noqa: F401
from uniq_hub import OnnxImageClassifier, UniQForImageClassification, UniQImageProcessor
from uniq_hub.cli import main
from uniq_hub.deploy.onnx_backends import available_backends, compare_logits, within_bounds
from uniq_hub.deploy.onnx_export import OnnxExportError, export_onnx, verify_onnx
from uniq_hub.deploy.onnx_graph import ONNX_FILE

BACKENDS = [b for b in available_backends() if b != "reference"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A saved model with its ONNX graph (written by the CLI) and a few 28x28 test images."""
    root = tmp_path_factory.mktemp("onnx_rt")
    onnx_model().save_pretrained(root / "model")
    assert main(["export-onnx", str(root / "model")]) == 0
    rng = np.random.default_rng(0)
    for i in range(4):
        pixels = rng.integers(0, 80, (28, 28)).astype(np.uint8)
        pixels[i * 7 : (i + 1) * 7] += 150
        Image.fromarray(pixels, "L").save(root / f"img{i}.png")
    return root


def _torch_logits(folder, images) -> np.ndarray:
    model = UniQForImageClassification.from_pretrained(folder / "model").eval()
    processor = UniQImageProcessor.from_pretrained(folder / "model")
    with torch.no_grad():
        return model(**processor(images, return_tensors="pt")).logits.numpy()


def test_classifier_runs_without_torch(folder):
    images = [str(folder / f"img{i}.png") for i in range(4)]
    code = WITHOUT_TORCH + f"""
import json, sys
from uniq_hub import OnnxImageClassifier
clf = OnnxImageClassifier.from_pretrained({str(folder / "model")!r})
results, logits = clf({images!r}, top_k=2, return_logits=True)
assert "torch" not in sys.modules and "transformers" not in sys.modules, sorted(m for m in sys.modules if "torch" in m)
print(json.dumps({{"backend": clf.backend, "results": results, "logits": logits.tolist()}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["backend"] == BACKENDS[0]  # the fastest backend verified exact at export
    expected = _torch_logits(folder, images)
    assert within_bounds(compare_logits(expected, np.array(got["logits"], np.float32)))
    for result, row in zip(got["results"], expected):
        assert [r["label"] for r in result] == [CLASSES[i] for i in np.argsort(-row)[:2]]
        assert result[0]["score"] >= result[1]["score"] > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_matches_pytorch(folder, backend):
    clf = OnnxImageClassifier.from_pretrained(folder / "model", backend=backend)
    images = [Image.open(folder / f"img{i}.png") for i in range(4)]
    stats = compare_logits(_torch_logits(folder, images), clf.logits(images))
    assert within_bounds(stats), stats
    single = clf(images[0], top_k=10)
    assert len(single) == len(CLASSES) and abs(sum(r["score"] for r in single) - 1) < 1e-5


def test_preprocessing_matches_the_image_processor(folder):
    """The numpy preprocessing follows UniQImageProcessor: channels, alpha, 16-bit range, resize."""
    clf = OnnxImageClassifier.from_pretrained(folder / "model", backend=BACKENDS[0])
    processor = UniQImageProcessor.from_pretrained(folder / "model")
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (28, 28, 3)).astype(np.uint8)
    rgba = Image.fromarray(np.dstack([rgb, rng.integers(0, 256, (28, 28), dtype=np.uint8)]), "RGBA")
    deep = rng.integers(0, 65536, (28, 28)).astype(np.uint16)
    large = Image.fromarray(rng.integers(0, 256, (56, 84)).astype(np.uint8), "L")
    for image, atol in ((rgb, 1e-5), (rgba, 1e-5), (deep, 1e-5), (large, 0.05)):
        ours = clf.preprocess(image)
        theirs = processor(image, return_tensors="pt")["pixel_values"][0].numpy()
        assert ours.shape == theirs.shape == (1, 28, 28)
        np.testing.assert_allclose(ours, theirs, atol=atol)


def test_urls_are_fetched_as_the_image_processor_fetches_them(folder):
    """One image-input module (uniq_hub.model.image_inputs) for both: a URL gives the classifier what it
    gives the image processor, and what the same file gives; a URL that is no image is named."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # noqa: ANN002
            pass

    clf = OnnxImageClassifier.from_pretrained(folder / "model", backend=BACKENDS[0])
    processor = UniQImageProcessor.from_pretrained(folder / "model")
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder))) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            root = f"http://127.0.0.1:{server.server_address[1]}"
            theirs = processor(f"{root}/img1.png", return_tensors="pt")["pixel_values"][0].numpy()
            np.testing.assert_allclose(clf.preprocess(f"{root}/img1.png"), theirs, atol=1e-5)
            np.testing.assert_array_equal(clf.logits(f"{root}/img1.png"), clf.logits(str(folder / "img1.png")))
            with pytest.raises(ValueError, match=f"{root}/model/config.json: not a readable image"):
                clf(f"{root}/model/config.json")
        finally:
            server.shutdown()


def test_predict_cli_runtimes_agree(folder, capsys):
    images = [str(folder / f"img{i}.png") for i in range(4)]
    printed = {}
    for runtime in ["torch", *BACKENDS]:
        assert main(["predict", *images, "--model", str(folder / "model"), "--runtime", runtime, "--top-k", "2"]) == 0
        printed[runtime] = [line.split(": ", 1)[1].split(" (")[0] for line in capsys.readouterr().out.splitlines()]
    assert len(printed["torch"]) == 4
    assert all(top == printed["torch"] for top in printed.values()), printed


def test_evaluate_runtime_gives_the_same_accuracy(folder, tmp_path):
    tiny = make_tiny_dataset(tmp_path / "tiny", train=4, test=48)
    records = {}
    for runtime in ["torch", *BACKENDS]:
        out = tmp_path / f"{runtime}.json"
        assert (
            main(
                [
                    "evaluate",
                    str(folder / "model"),
                    "--dataset",
                    str(tiny),
                    "--batch-size",
                    "16",
                    "--num-workers",
                    "0",
                    "--no-progress",
                    "--runtime",
                    runtime,
                    "--output",
                    str(out),
                ]
            )
            == 0
        )
        records[runtime] = json.loads(out.read_text())
    for runtime in BACKENDS:
        assert records[runtime]["runtime"] == runtime and f"--runtime {runtime}" in records[runtime]["command"]
        assert records[runtime]["num_examples"] == 48
        assert records[runtime]["top1"] == pytest.approx(records["torch"]["top1"], abs=100 / 48 * 0.5)


def test_bad_onnx_files_are_refused(folder, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(folder / "model", bad)
    assert verify_onnx(bad) is not None  # the good file passes
    data = (bad / ONNX_FILE).read_bytes()
    (bad / ONNX_FILE).write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(OnnxExportError, match=r"onnx/model\.onnx: not a valid ONNX model"):
        verify_onnx(bad)
    with pytest.raises(ValueError, match=r"onnx/model\.onnx"):
        OnnxImageClassifier.from_pretrained(bad, backend="onnxruntime")
    # a graph exported from other weights (stale / foreign) is refused by name
    export_onnx(onnx_model(seed=1), bad / ONNX_FILE, verify=False)
    with pytest.raises(OnnxExportError, match=r"onnx/model\.onnx: stale or foreign file"):
        verify_onnx(bad)
    (bad / ONNX_FILE).unlink()
    assert verify_onnx(bad) is None
    with pytest.raises(FileNotFoundError, match="export-onnx"):
        OnnxImageClassifier.from_pretrained(bad)


def test_export_after_saving_carries_the_onnx_model(hub_server, hub_token, tmp_path):
    """``export_onnx`` after ``save_pretrained`` writes a verified ``onnx/model.onnx`` (saving alone writes
    none); uploaded with the folder, the classifier loads it from the (local) Hub by repo id."""
    from huggingface_hub import HfApi

    model = onnx_model(seed=2)
    model.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved" / ONNX_FILE).exists()
    export_onnx(model, tmp_path / "saved" / ONNX_FILE)
    assert verify_onnx(tmp_path / "saved") is not None
    api = HfApi(token=hub_token)
    api.create_repo("uniq/onnx-push")
    api.upload_folder(repo_id="uniq/onnx-push", folder_path=tmp_path / "saved")
    assert ONNX_FILE in api.list_repo_files("uniq/onnx-push")
    clf = OnnxImageClassifier.from_pretrained("uniq/onnx-push", backend="onnxruntime", token=hub_token)
    image = np.random.default_rng(3).integers(0, 256, (28, 28)).astype(np.uint8)
    local = OnnxImageClassifier.from_pretrained(tmp_path / "saved", backend="onnxruntime")
    np.testing.assert_array_equal(clf.logits(image), local.logits(image))


def test_training_export_writes_the_onnx_model(tmp_path):
    from uniq_hub.catalog.release_folder import export_model

    model = onnx_model(seed=3)
    folder = export_model(model, tmp_path / "export", record={"top1": 50.0})
    assert (folder / ONNX_FILE).is_file()
    assert verify_onnx(folder)["argmax_agreement"] == 1.0
    assert not (export_model(model, tmp_path / "no-onnx", record={}, onnx=False) / ONNX_FILE).exists()
