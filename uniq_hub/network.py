"""A timeout on every Hub request: huggingface_hub's shared HTTP client has none by default.

``HF_HUB_ETAG_TIMEOUT`` / ``HF_HUB_DOWNLOAD_TIMEOUT`` cover file downloads only; API calls such as
``model_info`` or the ``repo_info`` inside ``snapshot_download`` wait forever on a Hub that never
answers. :func:`hub_timeout` sets the shared client's own default (``get_session()`` is the
documented shared client), which every call that passes no timeout of its own uses. The CLI runs
every command under it (``uniq-hub publish --timeout`` sets its own), and so does
``OnnxImageClassifier.from_pretrained``. Torch-free.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from typing import Iterator

__all__ = ["DEFAULT_TIMEOUT", "TIMEOUT_ENV", "default_timeout", "hub_timeout", "network_errors"]

DEFAULT_TIMEOUT = 60.0  # seconds, each Hub request
TIMEOUT_ENV = "UNIQ_HUB_TIMEOUT"  # overrides DEFAULT_TIMEOUT for the commands and the ONNX classifier


def default_timeout() -> float:
    """Seconds each Hub request may take: ``UNIQ_HUB_TIMEOUT`` when set, else :data:`DEFAULT_TIMEOUT`."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{TIMEOUT_ENV}={text!r}: expected a positive number of seconds")
    return value


@contextmanager
def hub_timeout(seconds: float | None = DEFAULT_TIMEOUT) -> Iterator[None]:
    """Give every request of huggingface_hub's shared HTTP client a timeout of at most ``seconds``
    (connect, read, write, pool) while active: the client's default, and a request hook for the
    calls that pass their own (``timeout=None`` included); ``None`` leaves the client as it is."""
    if seconds is None:
        yield
        return
    number = isinstance(seconds, (int, float)) and not isinstance(seconds, bool)
    if not (number and seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"timeout must be a positive number of seconds, got {seconds!r}")
    from huggingface_hub import get_session

    def bound(request: object) -> None:
        # Calls such as HfApi.model_info pass timeout=None explicitly, which overrides the client's
        # default, and downloads pass their own (10 s): each request is capped at ``seconds`` before it is sent.
        extensions = getattr(request, "extensions", None)
        if isinstance(extensions, dict):
            given = extensions.get("timeout") or {}
            extensions["timeout"] = {k: float(seconds) if given.get(k) is None else min(given[k], float(seconds))
                                     for k in ("connect", "read", "write", "pool")}

    client = get_session()
    before = client.timeout
    client.timeout = seconds
    client.event_hooks = {**client.event_hooks, "request": [*client.event_hooks.get("request", []), bound]}
    try:
        yield
    finally:
        client.timeout = before
        client.event_hooks = {**client.event_hooks,
                              "request": [h for h in client.event_hooks.get("request", []) if h is not bound]}


def network_errors() -> tuple[type[BaseException], ...]:
    """The exception types of a failed or timed-out request in the HTTP library huggingface_hub uses
    (httpx, or httpx2 in newer releases), and huggingface_hub's own HTTP error."""
    import importlib

    from huggingface_hub import get_session
    from huggingface_hub.errors import HfHubHTTPError

    http = importlib.import_module(type(get_session()).__module__.partition(".")[0])
    return (http.TransportError, HfHubHTTPError)
