"""The Hub side of ``uniq-hub publish``: one commit with the real ``huggingface_hub`` client
(:func:`upload`): ``create_repo(exist_ok=True)``, the branch created when ``revision`` names a new
one, then ``create_commit``. Every request has a timeout (``--timeout``, default
:data:`DEFAULT_TIMEOUT` s); authentication, HTTP and network errors become one line naming the
request and what to do (:func:`hub_errors`).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi, get_session
from huggingface_hub.errors import HfHubHTTPError

from ..network import DEFAULT_TIMEOUT, hub_timeout
from .publish_plan import PublishError, UploadPlan

__all__ = ["DEFAULT_TIMEOUT", "check_timeout", "hub_errors", "upload"]

_STATUS_ADVICE = {
    401: "the token is missing, invalid or expired: log in with `hf auth login`, set HF_TOKEN, or pass --token",
    403: "the token may not write to this repo: use a token with write access to its namespace",
    404: "check --repo-id and --revision, and that the token can see the repo",
    409: "the repo or branch changed meanwhile: publish again",
    429: "rate limited by the Hub: wait a few minutes and publish again",
}


def _http_module() -> Any:
    """The HTTP library huggingface_hub uses (httpx, or httpx2 in newer releases)."""
    return importlib.import_module(type(get_session()).__module__.partition(".")[0])


def _has_request(err: Exception) -> bool:
    try:
        return err.request is not None  # type: ignore[attr-defined]
    except RuntimeError:  # httpx raises when the error has no request attached
        return False


@contextmanager
def hub_errors(endpoint: str, timeout: float) -> Iterator[None]:
    """Turn huggingface_hub's authentication, HTTP and network errors into one-line :class:`PublishError`s."""
    http = _http_module()
    try:
        yield
    except HfHubHTTPError as err:
        response = err.response
        status = response.status_code
        request = f"{response.request.method} {response.request.url}" if response is not None else endpoint
        said = err.server_message or response.reason_phrase
        advice = _STATUS_ADVICE.get(status) or (
            "the Hub failed on its side: try again later" if status >= 500 else "see the Hub's message")
        raise PublishError(f"{request} answered {status} ({said.strip()}): {advice}") from None
    except http.TimeoutException as err:
        url = err.request.url if _has_request(err) else endpoint
        raise PublishError(f"{url}: no answer within {timeout:g} s; check the network and HF_ENDPOINT "
                           "(or pass a longer --timeout)") from None
    except http.TransportError as err:
        url = err.request.url if _has_request(err) else endpoint
        raise PublishError(f"{url}: cannot reach the Hub ({type(err).__name__}: {err}); check the network, "
                           "proxy settings and HF_ENDPOINT") from None


def check_timeout(timeout: float) -> float:
    """``timeout`` when it is a positive, finite number of seconds, else :class:`PublishError`."""
    if not (isinstance(timeout, (int, float)) and timeout > 0 and math.isfinite(timeout)):
        raise PublishError(f"--timeout must be a positive number of seconds, got {timeout!r}")
    return timeout


def upload(
    plan: UploadPlan,
    staged: Path,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
):
    """Upload a prepared staged copy (:func:`uniq_hub.hub.publish.prepare`) to ``plan.repo_id`` in
    one commit; the ``CommitInfo``."""
    api = HfApi(token=token)
    repo_id = plan.repo_id
    names = list(plan.files) + list(plan.generated)
    with hub_timeout(timeout), hub_errors(api.endpoint, timeout):
        api.create_repo(repo_id, private=private, exist_ok=True)
        if private and not api.model_info(repo_id, timeout=timeout).private:  # existing public repo: switch
            api.update_repo_settings(repo_id, private=True)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(staged / name)) for name in names]
        return api.create_commit(
            repo_id, operations, revision=revision,
            commit_message=commit_message or f"Upload {Path(plan.folder).name} with uniq-hub publish",
        )
