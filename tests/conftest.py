"""Shared pytest setup: every test runs against a local, loopback-only Hugging Face Hub.

huggingface_hub reads HF_ENDPOINT, HF_HOME, ... once, at import time, so this module sets
them when pytest imports it, before any test module imports huggingface_hub/transformers:

- HF_ENDPOINT=http://127.0.0.1:<free port>, served by the `hub_server` fixture (tests/hub_server.py);
- HF_HOME (and HF_HUB_CACHE) in a fresh temp dir, no HF tokens, not offline;
- HF_HUB_DISABLE_TELEMETRY / _PROGRESS_BARS / _UPDATE_CHECK = 1, and HF_HUB_DISABLE_XET=1
  (the local Hub speaks plain Git LFS only);
- sockets may only connect to loopback addresses (NonLoopbackConnectionError otherwise).

Under pytest-xdist each worker imports this module itself, so each gets its own port, HF_HOME and server.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub_server import HubServer, forbid_non_loopback_connections

_too_early = sorted(name for name in ("huggingface_hub", "transformers", "datasets") if name in sys.modules)
if _too_early:
    raise RuntimeError(f"{_too_early} imported before tests/conftest.py could point them at the local test Hub")


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# The suite runs as `pytest -n 2` on 2 cores: one intra-op thread per worker (and per subprocess it
# starts) avoids two OpenMP pools spinning for the same core. An explicit setting wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

HUB_PORT = _free_loopback_port()
HUB_URL = f"http://127.0.0.1:{HUB_PORT}"
HF_HOME = tempfile.mkdtemp(prefix="uniq_hub_hf_home_")
atexit.register(shutil.rmtree, HF_HOME, ignore_errors=True)

for _var in (
    "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
    "HF_DATASETS_OFFLINE", "HUGGINGFACE_HUB_CACHE", "HUGGINGFACE_ASSETS_CACHE", "HF_ASSETS_CACHE",
    "HF_XET_CACHE", "HF_DATASETS_CACHE", "TRANSFORMERS_CACHE", "HF_MODULES_CACHE", "HUGGINGFACE_CO_STAGING",
    "HF_HUB_ENABLE_HF_TRANSFER",
):  # fmt: skip
    os.environ.pop(_var, None)
os.environ.update(
    {
        "HF_ENDPOINT": HUB_URL,
        "HF_HOME": HF_HOME,
        "HF_HUB_CACHE": os.path.join(HF_HOME, "hub"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_DISABLE_XET": "1",
    }
)
for _var in ("NO_PROXY", "no_proxy"):  # never send loopback traffic through a proxy
    os.environ[_var] = ",".join(filter(None, [os.environ.get(_var), "127.0.0.1", "localhost", "::1"]))
forbid_non_loopback_connections()


@pytest.fixture(scope="session")
def hub_server() -> Iterator[HubServer]:
    """The local Hub behind HF_ENDPOINT, for the whole session (use unique repo names per test)."""
    with HubServer(port=HUB_PORT) as hub:
        yield hub


@pytest.fixture(scope="session")
def hub_token(hub_server: HubServer) -> str:
    """A token with write access to the local Hub (pass it as `token=`; none is configured globally)."""
    return hub_server.token


@pytest.fixture
def hf_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline mode for one test: huggingface_hub (and transformers, which asks it) makes no HTTP request."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # for subprocesses


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A real, tiny export (tiny_models.real_export), made once per test module."""
    from tiny_models import real_export

    return real_export(tmp_path_factory.mktemp("pristine") / "export")


@pytest.fixture()
def export(tmp_path, pristine):
    """A fresh copy of the pristine export, for one test to change (byte-identical copies: publish verifies
    equal folders once per process)."""
    return Path(shutil.copytree(pristine, tmp_path / "export"))
