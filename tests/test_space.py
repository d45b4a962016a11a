"""The demo Space (spaces/uniq-zoo-demo) with released zoo models served by the local Hub
(tests/hub_server.py): the app started on 127.0.0.1 and called with gradio_client on a real photo,
the page rendered by a real headless browser (Debian's Chromium; the screenshot is kept in
test-artifacts/), and ``uniq-hub publish-space`` against the local Hub."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no calls home

from huggingface_hub import HfApi, snapshot_download  # noqa: E402
from huggingface_hub.repocard import metadata_load  # noqa: E402
from PIL import Image  # noqa: E402

from train_helpers import REPO, subprocess_env  # noqa: E402
from uniq_hub.cli import main  # noqa: E402
from uniq_hub.space import SPACE_DIR, SpaceError, publish_space, stage_space  # noqa: E402

gradio_client = pytest.importorskip("gradio_client", reason="the space extra (gradio, gradio_client) is not installed")
ARTIFACTS = REPO / "test-artifacts"
PHOTO = SPACE_DIR / "examples" / "photo-china.jpg"
# The torch-free runtime the Space bundles: its modules at their package paths, and their packages' __init__.py.
BUNDLE = {
    "uniq_hub/__init__.py", "uniq_hub/deploy/__init__.py", "uniq_hub/deploy/onnx_backends.py",
    "uniq_hub/deploy/onnx_graph.py", "uniq_hub/deploy/onnx_runtime.py",
    "uniq_hub/network.py", "uniq_hub/model/__init__.py", "uniq_hub/model/atomic.py", "uniq_hub/model/constants.py",
    "uniq_hub/model/files.py", "uniq_hub/model/image_inputs.py",
}


def _load_app():
    spec = importlib.util.spec_from_file_location("uniq_space_app", SPACE_DIR / "app.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # (dataclasses look it up)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _demo_folders() -> list[Path]:
    """The full-precision ResNet-20 (PyTorch in the app) and up to two quantized ones with an ONNX graph."""
    from uniq_hub.hub.zoo_release import release_folders

    folders = sorted(f for name, f in release_folders().items() if "resnet20" in name)
    fp = [f for f in folders if f.name.endswith("-fp")]
    graphs = [f for f in folders if (f / "onnx" / "model.onnx").is_file()][:2]
    return fp[:1] + graphs


@pytest.fixture(scope="module")
def space_models(hub_server, hub_token, tmp_path_factory):
    """Released zoo folders pushed to the local Hub: {repo id: local folder}."""
    from uniq_hub import UniQForImageClassification
    from uniq_hub.deploy.onnx_export import export_onnx
    from uniq_hub.deploy.onnx_graph import GraphError, check_graph

    out = {}
    api = HfApi(token=hub_token)
    for source in _demo_folders():
        folder = Path(shutil.copytree(source, tmp_path_factory.mktemp("space") / source.name))
        if (folder / "onnx" / "model.onnx").is_file():
            try:
                check_graph(folder)
            except GraphError:  # a graph exported before this version's checks: the same weights, exported again
                export_onnx(UniQForImageClassification.from_pretrained(folder).eval(), folder / "onnx" / "model.onnx")
        repo_id = f"uniq-space/{source.name}"
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=folder)
        out[repo_id] = folder
    if len(out) < 2:
        pytest.skip("fewer than two released ResNet-20 folders in zoo/")
    return out


@pytest.fixture(scope="module")
def running_app(space_models):
    """The app serving the pushed models (downloaded by repo id, as on a Space) on 127.0.0.1."""
    app = _load_app()
    demo = app.build_demo(list(space_models))
    app.serve(demo, "127.0.0.1", _free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield app, demo, demo.local_url
    finally:
        demo.close()


def _direct_top3(folder: Path, image: Image.Image) -> list[dict]:
    """What each model says without the app: the ONNX classifier where the folder has a graph, else pipeline."""
    if (folder / "onnx" / "model.onnx").is_file():
        from uniq_hub.deploy.onnx_runtime import OnnxImageClassifier

        return OnnxImageClassifier(folder)(image, top_k=3)
    from transformers import pipeline

    return pipeline("image-classification", model=str(folder))(image, top_k=3)


def test_app_over_gradio_client_on_a_real_photo(space_models, running_app):
    app, _, url = running_app
    client = gradio_client.Client(url, verbose=False)
    out = client.predict(gradio_client.handle_file(str(PHOTO)), api_name="/classify")
    assert len(out) == len(space_models) + 1
    *labels, table = out
    assert table["headers"] == app.TABLE_HEADERS and len(table["data"]) == len(space_models)
    photo = Image.open(PHOTO)
    for (repo_id, folder), label, row in zip(space_models.items(), labels, table["data"]):
        expected = _direct_top3(folder, photo)
        got = [(c["label"], c["confidence"]) for c in label["confidences"]]
        assert [g[0] for g in got] == [e["label"] for e in expected] and label["label"] == expected[0]["label"]
        assert all(abs(g[1] - e["score"]) < 1e-5 for g, e in zip(got, expected))
        config = json.loads((folder / "config.json").read_text())
        name, bits, runtime, size, latency_ms, top1 = row
        assert name == repo_id and top1 == expected[0]["label"]
        assert bits == ("FP32" if config["w_bits"] == 32 else f"W{config['w_bits']}A{config['a_bits']}")
        has_graph = (folder / "onnx" / "model.onnx").is_file()
        assert runtime.startswith("ONNX exact int8" if has_graph else "PyTorch"), runtime
        assert size.startswith(f"{(folder / 'model.safetensors').stat().st_size / 1024:.1f} KB")
        assert float(latency_ms) > 0


def _rendered_text(html: str) -> str:
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S | re.I)  # the page's embedded config too
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def test_page_in_a_headless_browser_shows_every_model_and_its_labels(space_models, running_app, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no browser installed (apt-get install chromium; scripts/setup_env.sh does it as root)")
    app, _, url = running_app
    first = Image.open(app.EXAMPLES[0])  # the page classifies its first example on load
    expected = {repo_id: _direct_top3(folder, first)[0]["label"] for repo_id, folder in space_models.items()}
    args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1100", "--virtual-time-budget=30000"]
    text = ""
    for _ in range(3):  # the load event's results arrive through the queue; give a busy machine more tries
        dom = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=240)
        text = _rendered_text(dom.stdout)
        if all(label in text for label in expected.values()) and "latency (ms)" in text:
            break
    for repo_id, label in expected.items():
        assert repo_id.rsplit("/", 1)[-1] in text, f"model {repo_id} not on the rendered page"
        assert label in text, f"{repo_id}'s top-1 {label!r} not on the rendered page"
    assert "size and latency" in text and "latency (ms)" in text
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "space-demo.png"
    subprocess.run([*args, f"--screenshot={shot}", url], capture_output=True, timeout=240, check=True)
    with Image.open(shot) as image:
        assert image.size == (1400, 1100)


def test_publish_space_to_the_local_hub_and_its_runtime_runs_without_torch(space_models, hub_token, tmp_path):
    repo_id = "uniq-space/zoo-demo"
    done = publish_space(repo_id, models=list(space_models), token=hub_token)
    files = set(HfApi(token=hub_token).list_repo_files(repo_id, repo_type="space"))
    assert set(done["files"]) <= files
    assert {"app.py", "README.md", "requirements.txt", *BUNDLE} <= files
    assert any(f.startswith("examples/fashion-mnist-") for f in files)
    assert any(f.startswith("examples/photo-") for f in files)
    space = Path(snapshot_download(repo_id, repo_type="space"))
    meta = metadata_load(space / "README.md")
    assert (meta["sdk"], meta["app_file"], meta["models"]) == ("gradio", "app.py", list(space_models))

    # The Space's bundled uniq_hub (the ONNX runtime alone) runs a model's exact graph without torch.
    repo_id, folder = next((r, f) for r, f in space_models.items() if (f / "onnx" / "model.onnx").is_file())
    code = (
        f"import sys; sys.path.insert(0, {str(space)!r})\n"
        "import uniq_hub.deploy.onnx_runtime as runtime\n"
        f"assert runtime.__file__.startswith({str(space)!r}), runtime.__file__\n"
        f"print(runtime.OnnxImageClassifier({str(folder)!r})({str(PHOTO)!r}, top_k=3))\n"
        "assert 'torch' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(),
                         cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert ast.literal_eval(out.stdout.strip()) == _direct_top3(folder, Image.open(PHOTO))


def test_publish_space_checks_the_folder_and_the_cli_dry_run(tmp_path, capsys):
    assert main(["publish-space", "--repo-id", "someone/demo", "--dry-run", "--models", "uniq/a", "uniq/b"]) == 0
    printed = capsys.readouterr().out
    assert "would upload" in printed and "uniq_hub/deploy/onnx_runtime.py" in printed and "app.py" in printed
    staged = tmp_path / "staged"
    files = stage_space(staged, models=["uniq/x"])
    assert {f for f in files if f.startswith("uniq_hub/")} == BUNDLE
    # The bundle alone imports: every module the runtime needs, function-level imports included, without torch.
    code = (
        f"import sys; sys.path.insert(0, {str(staged)!r})\n"
        "import uniq_hub.deploy.onnx_runtime as runtime, uniq_hub.network\n"
        f"assert runtime.__file__.startswith({str(staged)!r}), runtime.__file__\n"
        "assert 'torch' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(),
                         cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert metadata_load(staged / "README.md")["models"] == ["uniq/x"]
    broken = Path(shutil.copytree(SPACE_DIR, tmp_path / "broken"))
    text = (broken / "README.md").read_text().replace("sdk: gradio", "sdk: docker")
    (broken / "README.md").write_text(text)
    with pytest.raises(SpaceError, match="sdk: gradio"):
        stage_space(tmp_path / "out", source=broken)
    (broken / "app.py").unlink()
    with pytest.raises(SpaceError, match="missing"):
        stage_space(tmp_path / "out2", source=broken)


@pytest.mark.parametrize("link", ["examples/zz.png", "requirements.txt"])
def test_publish_space_refuses_a_link_out_of_the_space_folder(tmp_path, link):
    """An example or a Space file that links to a file outside the folder is refused before anything is
    staged: its bytes would otherwise go up to the Hub."""
    secret = tmp_path / "outside.png"
    secret.write_bytes(b"not for the Hub")
    space = Path(shutil.copytree(SPACE_DIR, tmp_path / "space"))
    (space / link).unlink(missing_ok=True)
    (space / link).symlink_to(secret)
    with pytest.raises(SpaceError, match=rf"{link}: resolves to {secret}, outside the Space folder"):
        stage_space(tmp_path / "staged", source=space)
    assert not (tmp_path / "staged").exists()
    with pytest.raises(SystemExit, match="outside the Space folder"):
        main(["publish-space", "--repo-id", "someone/demo", "--dry-run", "--source", str(space)])


def test_app_refuses_huge_uploads_and_binds_loopback_by_default(running_app, tmp_path, monkeypatch):
    """An image of more than MAX_PIXELS is refused from its header (a 6000x6000 PNG is a few KB on disk),
    a file over MAX_UPLOAD_BYTES before it is read; ``python app.py`` binds 127.0.0.1 unless told."""
    app, _, url = running_app
    client = gradio_client.Client(url, verbose=False)
    big = tmp_path / "big.png"
    Image.new("L", (6000, 6000)).save(big)
    with pytest.raises(Exception, match="6000x6000 pixels; this demo takes at most 25,000,000"):
        client.predict(gradio_client.handle_file(str(big)), api_name="/classify")
    heavy = tmp_path / "heavy.png"
    heavy.write_bytes(os.urandom(app.MAX_UPLOAD_BYTES + 1))
    with pytest.raises(Exception, match="(?i)file.*(large|size)"):
        client.predict(gradio_client.handle_file(str(heavy)), api_name="/classify")
    seen = {}
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.setattr(app, "build_demo", lambda models: "demo")
    monkeypatch.setattr(app, "serve", lambda demo, host, port: seen.update(host=host, port=port))
    app.main(["--models", "x"])
    assert seen["host"] == "127.0.0.1"
