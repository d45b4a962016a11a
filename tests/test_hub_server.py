"""The local test Hub (tests/hub_server.py) driven through the real huggingface_hub client."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors.torch import load_file, save_file

from hub_server import HubServer, NonLoopbackConnectionError


def _repo_id(hub: HubServer, name: str) -> str:
    return f"{hub.user}/{name}-{uuid.uuid4().hex[:8]}"


def _model_folder(root: Path, scale: float = 1.0) -> Path:
    """A tiny model folder: a small JSON and a binary safetensors file."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"arch": "resnet18", "bits": 4, "scale": scale}))
    save_file({"weight": torch.arange(12, dtype=torch.float32).reshape(3, 4) * scale}, root / "model.safetensors")
    return root


@pytest.fixture
def api(hub_token: str) -> HfApi:
    return HfApi(token=hub_token)


@pytest.fixture
def uploaded(api: HfApi, hub_server: HubServer, tmp_path: Path) -> tuple[str, Path, str]:
    """(repo_id, local folder, commit sha) of a public repo holding `_model_folder`."""
    repo_id = _repo_id(hub_server, "model")
    api.create_repo(repo_id)
    folder = _model_folder(tmp_path / "src")
    commit = api.upload_folder(folder_path=folder, repo_id=repo_id, commit_message="add model")
    return repo_id, folder, commit.oid


def test_client_is_configured_for_the_local_hub(hub_server: HubServer) -> None:
    assert constants.ENDPOINT == hub_server.url
    assert constants.HF_HUB_DISABLE_XET and not constants.HF_HUB_OFFLINE
    assert Path(constants.HF_HUB_CACHE).is_relative_to(Path(os.environ["HF_HOME"]))


def test_whoami(api: HfApi, hub_server: HubServer) -> None:
    assert api.whoami()["name"] == hub_server.user
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token="hf_not_a_valid_token").whoami()
    assert err.value.response.status_code == 401


def test_create_public_and_private_repos(api: HfApi, hub_server: HubServer) -> None:
    public, private = _repo_id(hub_server, "public"), _repo_id(hub_server, "private")
    assert api.create_repo(public).repo_id == public
    api.create_repo(private, private=True)

    assert api.model_info(public).private is False
    info = api.model_info(private)
    assert info.private is True and len(info.sha) == 40
    assert [s.rfilename for s in info.siblings] == [".gitattributes"]  # the Hub's initial commit
    assert HfApi(token=False).model_info(public).id == public
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).model_info(private)

    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo(public)
    assert err.value.response.status_code == 409
    assert api.create_repo(public, exist_ok=True).repo_id == public


def test_upload_folder_goes_through_lfs_and_downloads_back(
    api: HfApi, hub_server: HubServer, uploaded: tuple[str, Path, str]
) -> None:
    repo_id, folder, sha = uploaded
    lfs_puts = [line for line in hub_server.request_log if line.startswith("PUT /_lfs/objects/")]
    assert len(lfs_puts) >= 1

    info = api.model_info(repo_id, files_metadata=True)
    assert info.sha == sha
    siblings = {s.rfilename: s for s in info.siblings}
    assert set(siblings) == {".gitattributes", "config.json", "model.safetensors"}
    assert siblings["model.safetensors"].lfs is not None and siblings["config.json"].lfs is None
    assert siblings["model.safetensors"].lfs.size == (folder / "model.safetensors").stat().st_size
    assert sorted(api.list_repo_files(repo_id)) == [".gitattributes", "config.json", "model.safetensors"]

    for name in ("config.json", "model.safetensors"):
        path = hf_hub_download(repo_id, name)
        assert Path(path).read_bytes() == (folder / name).read_bytes()
        assert f"/snapshots/{sha}/" in path
    weights = load_file(hf_hub_download(repo_id, "model.safetensors"))
    assert torch.equal(weights["weight"], torch.arange(12.0).reshape(3, 4))

    snapshot = Path(snapshot_download(repo_id))
    for name in ("config.json", "model.safetensors"):
        assert (snapshot / name).read_bytes() == (folder / name).read_bytes()


def test_unchanged_files_are_not_recommitted(api: HfApi, uploaded: tuple[str, Path, str]) -> None:
    repo_id, folder, sha = uploaded
    assert api.upload_folder(folder_path=folder, repo_id=repo_id).oid == sha


def test_branch_revision_push_and_download(
    api: HfApi, hub_server: HubServer, uploaded: tuple[str, Path, str], tmp_path: Path
) -> None:
    repo_id, folder, main_sha = uploaded
    api.create_branch(repo_id, branch="w2a2")
    assert api.model_info(repo_id, revision="w2a2").sha == main_sha
    other = _model_folder(tmp_path / "other", scale=-2.0)
    commit = api.upload_folder(folder_path=other, repo_id=repo_id, revision="w2a2")
    assert commit.oid not in (main_sha, None) and len(commit.oid) == 40

    assert api.model_info(repo_id, revision="w2a2").sha == commit.oid
    assert api.model_info(repo_id).sha == main_sha  # main is untouched
    on_branch = hf_hub_download(repo_id, "model.safetensors", revision="w2a2")
    assert Path(on_branch).read_bytes() == (other / "model.safetensors").read_bytes()
    by_sha = hf_hub_download(repo_id, "config.json", revision=commit.oid)
    assert json.loads(Path(by_sha).read_text())["scale"] == -2.0
    on_main = hf_hub_download(repo_id, "model.safetensors")
    assert Path(on_main).read_bytes() == (folder / "model.safetensors").read_bytes()
    assert {ref.name for ref in api.list_repo_refs(repo_id).branches} == {"main", "w2a2"}

    with pytest.raises(HfHubHTTPError) as err:
        api.create_branch(repo_id, branch="w2a2")
    assert err.value.response.status_code == 409
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, "config.json", revision="no-such-branch")


def test_missing_repo_and_missing_file(api: HfApi, hub_server: HubServer, uploaded: tuple[str, Path, str]) -> None:
    repo_id, _, _ = uploaded
    missing = _repo_id(hub_server, "missing")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(missing)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(missing, "config.json")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "no_such_file.json")
    assert not api.file_exists(repo_id, "no_such_file.json") and api.file_exists(repo_id, "config.json")


def test_writes_without_a_valid_token_fail(
    api: HfApi, hub_server: HubServer, uploaded: tuple[str, Path, str], tmp_path: Path
) -> None:
    repo_id, _, sha = uploaded
    anonymous = HfApi(token=False)
    with pytest.raises(HfHubHTTPError) as err:
        anonymous.create_repo(_repo_id(hub_server, "anonymous"))
    assert err.value.response.status_code == 401
    for client in (anonymous, HfApi(token="hf_wrong_token")):
        with pytest.raises(HfHubHTTPError) as err:
            client.upload_file(path_or_fileobj=b"{}", path_in_repo="evil.json", repo_id=repo_id)
        assert err.value.response.status_code == 401
    assert api.model_info(repo_id).sha == sha  # nothing was committed


def test_private_repo_files_need_a_token(api: HfApi, hub_server: HubServer, hub_token: str, tmp_path: Path) -> None:
    repo_id = _repo_id(hub_server, "secret")
    api.create_repo(repo_id, private=True)
    api.upload_folder(folder_path=_model_folder(tmp_path / "src"), repo_id=repo_id)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(repo_id, "config.json", cache_dir=tmp_path / "anonymous_cache")
    path = hf_hub_download(repo_id, "config.json", token=hub_token, cache_dir=tmp_path / "cache")
    assert json.loads(Path(path).read_text())["bits"] == 4


def test_offline_mode_reads_the_cache_without_any_request(
    hub_server: HubServer, uploaded: tuple[str, Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo_id, folder, sha = uploaded
    online = hf_hub_download(repo_id, "model.safetensors")
    snapshot = snapshot_download(repo_id)
    before = hub_server.request_count

    # In-process: flip the flag huggingface_hub reads at call time (what the `hf_offline` fixture does).
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hf_hub_download(repo_id, "model.safetensors") == online
    assert snapshot_download(repo_id) == snapshot
    # A fresh process with HF_HUB_OFFLINE=1 in its environment (inherits HF_ENDPOINT and HF_HOME).
    script = (
        "import sys; from huggingface_hub import hf_hub_download, snapshot_download; "
        "print(hf_hub_download(sys.argv[1], 'model.safetensors')); print(snapshot_download(sys.argv[1]))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", script, repo_id], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [online, snapshot]
    assert Path(online).read_bytes() == (folder / "model.safetensors").read_bytes()

    assert hub_server.request_count == before


def test_hf_offline_fixture(hf_offline: None, hub_server: HubServer) -> None:
    before = hub_server.request_count
    with pytest.raises(LocalEntryNotFoundError):  # nothing cached for this repo, and no request allowed
        hf_hub_download(_repo_id(hub_server, "never-downloaded"), "config.json")
    assert hub_server.request_count == before


def test_tree_listing(api: HfApi, hub_server: HubServer, tmp_path: Path) -> None:
    repo_id = _repo_id(hub_server, "nested")
    api.create_repo(repo_id)
    folder = _model_folder(tmp_path / "src")
    _model_folder(folder / "w4a4")
    api.upload_folder(folder_path=folder, repo_id=repo_id)
    top = {entry.path for entry in api.list_repo_tree(repo_id)}
    assert top == {".gitattributes", "config.json", "model.safetensors", "w4a4"}
    assert {entry.path for entry in api.list_repo_tree(repo_id, path_in_repo="w4a4")} == {
        "w4a4/config.json",
        "w4a4/model.safetensors",
    }
    assert "w4a4/model.safetensors" in api.list_repo_files(repo_id)
    nested = folder / "w4a4" / "model.safetensors"
    assert Path(hf_hub_download(repo_id, "w4a4/model.safetensors")).read_bytes() == nested.read_bytes()


def test_range_requests(hub_server: HubServer, uploaded: tuple[str, Path, str]) -> None:
    repo_id, folder, _ = uploaded
    url = f"{hub_server.url}/{repo_id}/resolve/main/model.safetensors"
    data = (folder / "model.safetensors").read_bytes()
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=8-"}), timeout=10) as response:
        assert response.status == 206 and response.read() == data[8:]
        assert response.headers["Content-Range"] == f"bytes 8-{len(data) - 1}/{len(data)}"


def test_only_loopback_connections_are_allowed() -> None:
    with pytest.raises(NonLoopbackConnectionError):
        socket.create_connection(("192.0.2.1", 80), timeout=1)  # TEST-NET-1, never routed
