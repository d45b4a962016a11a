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
from contextlib import contextmanager
from typing import Iterator

__all__ = ["DEFAULT_TIMEOUT", "hub_timeout"]

DEFAULT_TIMEOUT = 60.0  # seconds, each Hub request


@contextmanager
def hub_timeout(seconds: float | None = DEFAULT_TIMEOUT) -> Iterator[None]:
    """Give every request of huggingface_hub's shared HTTP client a ``seconds`` timeout (connect,
    read, write, pool) while active; ``None`` leaves the client as it is."""
    if seconds is None:
        yield
        return
    number = isinstance(seconds, (int, float)) and not isinstance(seconds, bool)
    if not (number and seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"timeout must be a positive number of seconds, got {seconds!r}")
    from huggingface_hub import get_session

    client = get_session()
    before = client.timeout
    client.timeout = seconds
    try:
        yield
    finally:
        client.timeout = before
