"""Whether a dataset can be reached: :class:`DatasetUnavailableError`, the bounded Hub probe
(:func:`hub_reachable`) and ``datasets`` / ``huggingface_hub`` offline mode (:func:`offline_mode`)."""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import urllib.error
import urllib.request
from typing import Iterator

import datasets
from huggingface_hub import constants

__all__ = ["DatasetUnavailableError", "hub_reachable", "offline_mode", "probe_endpoint"]


class DatasetUnavailableError(OSError):
    """The source is neither a readable local directory nor loadable from the Hub (or its cache)."""


_TRUE = {"1", "ON", "YES", "TRUE"}
_OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def _offline_by_env() -> bool:
    return any(os.environ.get(v, "").strip().upper() in _TRUE for v in _OFFLINE_ENV)


@functools.lru_cache(maxsize=8)
def probe_endpoint(endpoint: str, timeout: float) -> bool:
    """Whether ``endpoint`` answers a HEAD request (any status) within ``timeout`` seconds (cached per process)."""
    answered: list[bool] = []

    def ask() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
            answered.append(True)
        except urllib.error.HTTPError:  # the server answered, even if with an error status
            answered.append(True)
        except Exception:  # noqa: BLE001  (DNS failure, refused, timed out ...)
            answered.append(False)

    thread = threading.Thread(target=ask, daemon=True)  # join() bounds DNS lookups too
    thread.start()
    thread.join(timeout)
    return bool(answered and answered[0])


def hub_reachable(timeout: float = 2.0) -> bool:
    """False under HF_HUB_OFFLINE / HF_DATASETS_OFFLINE, else a ``timeout``-bounded probe (cached per process)."""
    if _offline_by_env():
        return False

    return probe_endpoint(os.environ.get("HF_ENDPOINT", constants.ENDPOINT), timeout)


@contextlib.contextmanager
def offline_mode(enabled: bool) -> Iterator[None]:
    """Put ``datasets`` / ``huggingface_hub`` in offline mode (they read the env only at import)."""
    if not enabled:
        yield
        return

    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved
