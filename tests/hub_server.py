"""A small Hugging Face Hub-compatible HTTP server for tests (stdlib only, loopback only).

It implements just enough of the Hub HTTP API for the real `huggingface_hub` client,
pointed at it through `HF_ENDPOINT`, to create repos and branches, upload files (as
regular git blobs or through plain Git LFS -- the client must run with
`HF_HUB_DISABLE_XET=1`, this server speaks no Xet) and download them again.

Repo state (repos, branches, commits) lives in memory; file contents live in a
content-addressed temp dir. Every commit gets a fresh 40-hex sha; a revision is a
branch name or a full commit sha. Every valid token has full access to every repo.

Routes (`{repo}` is `namespace/name`; `models` may also be `datasets` or `spaces`):
  GET        /api/whoami-v2
  POST       /api/repos/create                   DELETE /api/repos/delete
  POST       /api/validate-yaml                  GET    /api/agent-harnesses
  GET        /api/models/{repo}                  GET    /api/models/{repo}/revision/{rev}
  GET        /api/models/{repo}/tree/{rev}[/{path}]?recursive=true
  POST       /api/models/{repo}/paths-info/{rev}
  GET        /api/models/{repo}/refs             PUT    /api/models/{repo}/settings
  POST       /api/models/{repo}/branch/{branch}  DELETE /api/models/{repo}/branch/{branch}
  POST       /api/models/{repo}/preupload/{rev}
  POST       /api/models/{repo}/commit/{rev}     (ndjson: header, file, lfsFile, deletedFile, deletedFolder)
  POST       /{repo}.git/info/lfs/objects/batch  (upload only, "basic" transfer)
  PUT        /_lfs/objects/{sha256}              (the LFS upload href, like a presigned URL: no token)
  POST       /_lfs/verify
  HEAD, GET  /{repo}/resolve/{rev}/{path}        (ETag, X-Repo-Commit, X-Linked-*, Range)

Usage:
    with HubServer() as hub:              # port=0 picks a free port
        os.environ["HF_ENDPOINT"] = hub.url   # must happen before importing huggingface_hub
        ...
        hub.request_count                 # requests received so far
        with hub.failing(401):            # fault injection: every request answers 401 (or 500, ...)
            ...
        with hub.failing("hang"):         # every request is accepted and never answered
            ...
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import ipaddress
import json
import re
import socket
import tempfile
import threading
import traceback
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, Mapping
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_TOKEN = "hf_uniqhub_test_write_token"
DEFAULT_USER = "uniq-tester"

API_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}  # /api/{plural}/... -> repo type
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}  # repo type -> prefix of web/resolve URLs

# Files stored through LFS, as in the Hub's default .gitattributes; also any binary or >10 MiB file.
LFS_PATTERNS = (
    "*.7z", "*.bin", "*.ckpt", "*.gz", "*.h5", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.pb",
    "*.pickle", "*.pkl", "*.pt", "*.pth", "*.safetensors", "*.tar", "*.tflite", "*.zip", "*.zst",
    "*tfevents*",
)  # fmt: skip
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS)
MAX_BODY_BYTES = 4 * 1024**3
SHA256_RE = re.compile(r"[0-9a-f]{64}")
_FAULT_MESSAGES = {  # what the Hub says for the statuses failing() injects most
    401: "Invalid credentials in Authorization header",
    403: "You don't have the rights to perform this action",
    500: "Internal Error - We're working hard to fix this as soon as possible!",
    503: "Service Unavailable",
}


class HubError(Exception):
    """An error answered the way the Hub does: status, JSON body, `X-Error-Code`/`X-Error-Message`."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,  # more fields of the JSON body
    ):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers, self.extra = dict(headers or {}), dict(extra or {})


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class FileEntry:
    """A file in a commit: its content is `objects/{sha256}`; `git_oid` is the git blob id."""

    sha256: str
    size: int
    lfs: bool
    git_oid: str

    @classmethod
    def regular(cls, data: bytes) -> FileEntry:
        return cls(hashlib.sha256(data).hexdigest(), len(data), False, _git_blob_oid(data))

    @classmethod
    def large(cls, sha256: str, size: int) -> FileEntry:
        return cls(sha256, size, True, _git_blob_oid(_lfs_pointer(sha256, size)))

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_oid

    @property
    def pointer_size(self) -> int:
        return len(_lfs_pointer(self.sha256, self.size))

    def as_json(self, path: str) -> dict[str, Any]:
        """The entry as listed by the tree / paths-info endpoints."""
        out: dict[str, Any] = {"type": "file", "path": path, "size": self.size, "oid": self.git_oid}
        if self.lfs:
            out["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": self.pointer_size}
        return out


@dataclass(frozen=True)
class Commit:
    oid: str
    title: str
    date: str
    files: dict[str, FileEntry]

    def folders(self) -> set[str]:
        return {"/".join(path.split("/")[:i]) for path in self.files for i in range(1, path.count("/") + 1)}


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str = field(default_factory=_now)
    branches: dict[str, str] = field(default_factory=dict)  # branch name -> commit oid
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit:
        """The commit a branch name or a full commit sha points to."""
        oid = self.branches.get(revision, revision)
        if oid not in self.commits:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return self.commits[oid]


Response = tuple[int, dict[str, str], bytes]


def _json(obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(obj).encode()


def _json_body(body: bytes) -> Any:
    try:
        return json.loads(body or b"{}")
    except ValueError as err:
        raise HubError(400, f"Malformed JSON body: {err}") from None


class HubServer:
    """The Hub in a background thread. `with HubServer(port) as hub: hub.url`."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1", tokens: Mapping[str, str] | None = None):
        if not _is_loopback(host):
            raise ValueError(f"HubServer only listens on loopback, not {host!r}")
        self.host, self.port = host, port
        self.tokens: dict[str, str] = dict(tokens or {DEFAULT_TOKEN: DEFAULT_USER})  # token -> user name
        self.request_count = 0
        self.request_log: deque[str] = deque(maxlen=10_000)  # "METHOD /path", most recent last
        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], Repo] = {}
        self._n_commits = 0
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.fault: int | Literal["hang"] | None = None  # see failing()
        self._release = threading.Event()  # set: hanging requests give up

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def token(self) -> str:
        """A token the server accepts (the first one)."""
        return next(iter(self.tokens))

    @property
    def user(self) -> str:
        return self.tokens[self.token]

    def start(self) -> HubServer:
        self._tmp = tempfile.TemporaryDirectory(prefix="hub_server_")
        (Path(self._tmp.name) / "objects").mkdir()
        self._httpd = ThreadingHTTPServer((self.host, self.port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self  # type: ignore[attr-defined]
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- fault injection ---------------------------------------------------------------------

    @contextmanager
    def failing(self, fault: int | Literal["hang"]) -> Iterator[HubServer]:
        """While active, every request is answered with the HTTP status ``fault`` (401: invalid
        credentials, 500: server error, ...) or, with ``"hang"``, accepted, read and never answered
        (the connection is closed when the block ends). Requests are still counted and logged."""
        if fault != "hang" and not (isinstance(fault, int) and 400 <= fault <= 599):
            raise ValueError(f"fault must be an HTTP error status (400-599) or 'hang', got {fault!r}")
        self._release.clear()
        self.fault = fault
        try:
            yield self
        finally:
            self.fault = None
            self._release.set()

    def _log(self, method: str, raw_path: str) -> None:
        with self._lock:
            self.request_count += 1
            self.request_log.append(f"{method} {raw_path}")

    # -- request entry point (called by _Handler) --------------------------------------------

    def handle(self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes) -> Response:
        """Route one request; raises HubError for error answers."""
        with self._lock:
            self._log(method, raw_path)
            if isinstance(self.fault, int):
                message = _FAULT_MESSAGES.get(self.fault, f"Injected error {self.fault}")
                raise HubError(self.fault, message, code="InjectedFault")
            split = urlsplit(raw_path)
            parts = split.path.strip("/").split("/")  # still percent-encoded
            query = parse_qs(split.query)
            user = self._authenticate(headers.get("Authorization"))
            if parts[0] == "api":
                return self._api(method, parts[1:], query, body, user)
            if parts[0] == "_lfs":
                return self._lfs_storage(method, parts[1:], body, user)
            return self._web(method, parts, body, user, headers)

    # -- auth and lookups --------------------------------------------------------------------

    def _authenticate(self, authorization: str | None) -> str | None:
        """The user behind the `Authorization: Bearer` token, None without one; 401 if invalid."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or token.strip() not in self.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.tokens[token.strip()]

    @staticmethod
    def _require_user(user: str | None) -> str:
        if user is None:
            raise HubError(401, "You must be authenticated (Authorization: Bearer <token>) to do this")
        return user

    def _visible_repo(self, repo_type: str, repo_id: str, user: str | None) -> Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and user is None):
            # Like the Hub: 401 for anonymous callers, 404 otherwise; same error code either way.
            raise HubError(401 if user is None else 404, "Repository not found", "RepoNotFound")
        return repo

    def _repo_url(self, repo: Repo) -> str:
        return f"{self.url}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}"

    # -- /api/... ----------------------------------------------------------------------------

    def _api(self, method: str, parts: list[str], query: dict, body: bytes, user: str | None) -> Response:
        match method, parts:
            case "GET", ["whoami-v2"]:
                name = self._require_user(user)
                access = {"displayName": "test token", "role": "write"}
                return _json({"type": "user", "name": name, "fullname": name, "orgs": [],
                              "auth": {"type": "access_token", "accessToken": access}})  # fmt: skip
            case "GET", ["agent-harnesses"]:
                return _json({"standardEnvVars": [], "harnesses": {}})
            case "POST", ["validate-yaml"]:
                return _json({"errors": [], "warnings": []})
            case "POST", ["repos", "create"]:
                return self._create_repo(_json_body(body), self._require_user(user))
            case "DELETE", ["repos", "delete"]:
                payload, user = _json_body(body), self._require_user(user)
                repo_id = f"{payload.get('organization') or user}/{payload.get('name')}"
                repo = self._visible_repo(payload.get("type") or "model", repo_id, user)
                del self._repos[(repo.repo_type, repo.repo_id)]
                return _json({})
            case _, [plural, namespace, name, *rest] if plural in API_REPO_TYPES:
                repo_id = f"{unquote(namespace)}/{unquote(name)}"
                return self._repo_api(method, API_REPO_TYPES[plural], repo_id, rest, query, body, user)
        raise HubError(404, f"Route not implemented by the test Hub: {method} /api/{'/'.join(parts)}")

    def _create_repo(self, payload: dict, user: str) -> Response:
        repo_type = payload.get("type") or "model"
        name = payload.get("name") or ""
        if repo_type not in URL_PREFIXES or not name or "/" in name:
            raise HubError(400, f"Invalid repo name {name!r} or type {repo_type!r}")
        repo_id = f"{payload.get('organization') or user}/{name}"
        if (repo_type, repo_id) in self._repos:  # the client reads "url" from this answer when exist_ok=True
            url = self._repo_url(self._repos[(repo_type, repo_id)])
            raise HubError(409, f"You already created this {repo_type} repo", extra={"url": url})
        private = payload.get("visibility") == "private" or payload.get("private") is True
        repo = self._repos[(repo_type, repo_id)] = Repo(repo_type, repo_id, private)
        gitattributes = GITATTRIBUTES.encode()
        self._store(gitattributes)
        initial = self._new_commit("initial commit", {".gitattributes": FileEntry.regular(gitattributes)})
        repo.commits[initial.oid] = initial
        repo.branches["main"] = initial.oid
        return _json({"url": self._repo_url(repo), "name": repo_id, "id": repo_id})

    def _repo_api(
        self, method: str, repo_type: str, repo_id: str, rest: list[str], query: dict, body: bytes, user: str | None
    ) -> Response:
        if method != "GET":
            self._require_user(user)
        repo = self._visible_repo(repo_type, repo_id, user)
        match method, rest:
            case "GET", []:
                return _json(self._repo_info(repo, repo.resolve("main")))
            case "GET", ["revision", *rev] if rev:
                return _json(self._repo_info(repo, repo.resolve(unquote("/".join(rev)))))
            case "GET", ["tree", rev, *path]:
                return self._tree(repo.resolve(unquote(rev)), unquote("/".join(path)), query)
            case "POST", ["paths-info", rev]:
                commit = repo.resolve(unquote(rev))
                return _json(self._paths_info(commit, parse_qs(body.decode()).get("paths", [])))
            case "GET", ["refs"]:
                branches = [{"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid}
                            for name, oid in sorted(repo.branches.items())]  # fmt: skip
                return _json({"branches": branches, "converts": [], "tags": [], "pullRequests": []})
            case "POST", ["branch", branch]:
                return self._create_branch(repo, unquote(branch), _json_body(body).get("startingPoint"))
            case "DELETE", ["branch", branch]:
                branch = unquote(branch)
                if branch == "main":
                    raise HubError(403, "Cannot delete the main branch")
                if repo.branches.pop(branch, None) is None:
                    raise HubError(404, f"Branch {branch!r} does not exist", "RevisionNotFound")
                return _json({})
            case "PUT", ["settings"]:
                payload = _json_body(body)
                if "visibility" in payload or "private" in payload:
                    repo.private = payload.get("visibility") == "private" or payload.get("private") is True
                return _json({})
            case "POST", ["preupload", rev]:
                self._refuse_pull_requests(query)
                return _json(self._preupload(repo.resolve(unquote(rev)), _json_body(body)))
            case "POST", ["commit", rev]:
                self._refuse_pull_requests(query)
                return _json(self._commit(repo, unquote(rev), body))
        hint = " (Xet is not supported: set HF_HUB_DISABLE_XET=1)" if any("xet" in p for p in rest) else ""
        raise HubError(404, f"Route not implemented by the test Hub: {method} .../{'/'.join(rest)}{hint}")

    @staticmethod
    def _refuse_pull_requests(query: dict) -> None:
        if query.get("create_pr"):
            raise HubError(400, "create_pr is not supported by the test Hub")

    def _repo_info(self, repo: Repo, commit: Commit) -> dict[str, Any]:
        siblings = []
        for path, entry in sorted(commit.files.items()):
            sibling: dict[str, Any] = {"rfilename": path, "size": entry.size, "blobId": entry.git_oid}
            if entry.lfs:
                sibling["lfs"] = {"sha256": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
            siblings.append(sibling)
        info = {"id": repo.repo_id, "author": repo.repo_id.split("/")[0], "sha": commit.oid, "private": repo.private,
                "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [],
                "createdAt": repo.created_at, "lastModified": commit.date, "siblings": siblings}  # fmt: skip
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        return info

    def _tree(self, commit: Commit, path: str, query: dict) -> Response:
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        folders = commit.folders()
        if path and path not in folders:
            headers = {"X-Repo-Commit": commit.oid}
            raise HubError(404, f"No folder {path!r} in this revision", "EntryNotFound", headers)
        prefix = f"{path}/" if path else ""

        def listed(candidate: str) -> bool:
            return candidate.startswith(prefix) and (recursive or "/" not in candidate[len(prefix) :])

        entries = [self._folder_json(commit, p) for p in sorted(folders) if listed(p)]
        entries += [entry.as_json(p) for p, entry in sorted(commit.files.items()) if listed(p)]
        return _json(entries)

    def _paths_info(self, commit: Commit, paths: list[str]) -> list[dict[str, Any]]:
        folders = commit.folders()
        out = []
        for path in paths:
            path = path.strip("/")
            if path in commit.files:
                out.append(commit.files[path].as_json(path))
            elif path in folders:
                out.append(self._folder_json(commit, path))
        return out

    @staticmethod
    def _folder_json(commit: Commit, path: str) -> dict[str, Any]:
        oid = hashlib.sha1(f"{commit.oid}:{path}".encode()).hexdigest()
        return {"type": "directory", "path": path, "size": 0, "oid": oid}

    def _create_branch(self, repo: Repo, branch: str, starting_point: str | None) -> Response:
        if not branch or branch.startswith("refs/") or branch in repo.commits:
            raise HubError(400, f"Invalid branch name {branch!r}")
        if branch in repo.branches:
            raise HubError(409, f"Branch {branch!r} already exists")
        repo.branches[branch] = repo.resolve(starting_point or "main").oid
        return _json({})

    # -- uploads -----------------------------------------------------------------------------

    def _preupload(self, commit: Commit, payload: dict) -> dict[str, Any]:
        """Tell the client, per file, "lfs" or "regular", and the oid already stored at that path."""
        files = []
        for item in payload.get("files", []):
            path, size = item["path"], int(item["size"])
            sample = base64.b64decode(item.get("sample", ""))
            lfs = size > LFS_SIZE_THRESHOLD or b"\0" in sample or any(
                fnmatch.fnmatch(path.rsplit("/", 1)[-1], pattern) for pattern in LFS_PATTERNS
            )
            existing = commit.files.get(path)
            oid = None if existing is None else (existing.sha256 if existing.lfs else existing.git_oid)
            files.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        return {"files": files, "commitOid": commit.oid}

    def _commit(self, repo: Repo, branch: str, body: bytes) -> dict[str, Any]:
        if branch not in repo.branches:
            repo.resolve(branch)  # 404 RevisionNotFound if it is not even a commit
            raise HubError(400, f"Can only commit on top of a branch, not {branch!r}")
        try:
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        except ValueError as err:
            raise HubError(400, f"Malformed ndjson commit payload: {err}") from None
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The commit payload must start with a header line")
        header = lines[0]["value"]
        parent = repo.commits[repo.branches[branch]]
        if header.get("parentCommit") not in (None, parent.oid):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(parent.files)
        for line in lines[1:]:
            self._apply(files, line["key"], line["value"], parent)
        commit = self._new_commit(header.get("summary") or "", files)
        repo.commits[commit.oid] = commit
        repo.branches[branch] = commit.oid
        return {"success": True, "commitOid": commit.oid, "commitUrl": f"{self._repo_url(repo)}/commit/{commit.oid}",
                "hookOutput": "", "pullRequestUrl": None}  # fmt: skip

    def _apply(self, files: dict[str, FileEntry], key: str, value: dict, parent: Commit) -> None:
        """Apply one commit operation to `files` in place."""
        path = str(value["path"]).strip("/")
        if key == "file":
            content = value["content"]
            data = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
            self._store(data)
            files[path] = FileEntry.regular(data)
        elif key == "lfsFile":
            oid = value["oid"]
            stored = self._object_path(oid)
            if not stored.is_file() or value.get("size", stored.stat().st_size) != stored.stat().st_size:
                raise HubError(422, f"LFS object {oid} for {path!r} was not uploaded")
            files[path] = FileEntry.large(oid, stored.stat().st_size)
        elif key == "deletedFile":
            if files.pop(path, None) is None:
                raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound",
                               {"X-Repo-Commit": parent.oid})  # fmt: skip
        elif key == "deletedFolder":
            doomed = [p for p in files if p.startswith(f"{path}/")]
            if not doomed:
                raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound",
                               {"X-Repo-Commit": parent.oid})  # fmt: skip
            for p in doomed:
                del files[p]
        else:
            raise HubError(400, f"Unknown commit operation {key!r}")

    def _new_commit(self, title: str, files: dict[str, FileEntry]) -> Commit:
        self._n_commits += 1
        seed = json.dumps([self._n_commits, title, sorted((p, e.sha256) for p, e in files.items())])
        return Commit(hashlib.sha1(seed.encode()).hexdigest(), title, _now(), files)

    def _lfs_batch(self, repo_type: str, repo_id: str, payload: dict, user: str | None) -> Response:
        self._visible_repo(repo_type, repo_id, self._require_user(user))
        if payload.get("operation") != "upload":
            raise HubError(400, "Only the LFS 'upload' operation is supported by the test Hub")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            item: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if not SHA256_RE.fullmatch(oid):
                item["error"] = {"code": 422, "message": "oid must be a sha256 hex digest"}
            elif not self._object_path(oid).is_file():  # already stored => no actions, client skips it
                item["actions"] = {"upload": {"href": f"{self.url}/_lfs/objects/{oid}"},
                                   "verify": {"href": f"{self.url}/_lfs/verify"}}  # fmt: skip
            objects.append(item)
        lfs_json = {"Content-Type": "application/vnd.git-lfs+json"}
        return _json({"transfer": "basic", "objects": objects}, headers=lfs_json)

    def _lfs_storage(self, method: str, parts: list[str], body: bytes, user: str | None) -> Response:
        match method, parts:
            case "PUT", ["objects", oid]:
                if hashlib.sha256(body).hexdigest() != oid:
                    raise HubError(400, f"Uploaded content does not match LFS oid {oid}")
                self._store(body)
                return 200, {}, b""
            case "POST", ["verify"]:
                self._require_user(user)
                payload = _json_body(body)
                stored = self._object_path(payload.get("oid", ""))
                if not stored.is_file() or stored.stat().st_size != payload.get("size"):
                    raise HubError(404, f"LFS object {payload.get('oid')} not found")
                return _json({"success": True})
        raise HubError(404, f"Route not implemented by the test Hub: {method} /_lfs/{'/'.join(parts)}")

    def _object_path(self, sha256: str) -> Path:
        if self._tmp is None or not SHA256_RE.fullmatch(sha256):
            raise HubError(400, f"Invalid LFS oid {sha256!r} (expected a sha256 hex digest)")
        return Path(self._tmp.name, "objects", sha256)

    def _store(self, data: bytes) -> None:
        target = self._object_path(hashlib.sha256(data).hexdigest())
        if not target.exists():
            partial = target.with_suffix(".partial")
            partial.write_bytes(data)
            partial.replace(target)

    # -- web URLs: /{repo}/resolve/..., /{repo}.git/info/lfs/... ----------------------------------

    def _web(
        self, method: str, parts: list[str], body: bytes, user: str | None, headers: Mapping[str, str]
    ) -> Response:
        repo_type = "model"
        if parts[0] in ("datasets", "spaces"):
            repo_type, parts = API_REPO_TYPES[parts[0]], parts[1:]
        match method, parts:
            case ("GET" | "HEAD"), [namespace, name, "resolve", rev, *path] if path:
                repo = self._visible_repo(repo_type, f"{unquote(namespace)}/{unquote(name)}", user)
                return self._resolve(method, repo.resolve(unquote(rev)), unquote("/".join(path)), headers.get("Range"))
            case "POST", [namespace, name, "info", "lfs", "objects", "batch"] if name.endswith(".git"):
                repo_id = f"{unquote(namespace)}/{unquote(name)[: -len('.git')]}"
                return self._lfs_batch(repo_type, repo_id, _json_body(body), user)
        raise HubError(404, f"Route not implemented by the test Hub: {method} /{'/'.join(parts)}")

    def _resolve(self, method: str, commit: Commit, path: str, range_header: str | None) -> Response:
        headers = {"X-Repo-Commit": commit.oid}
        entry = commit.files.get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", headers)
        headers["ETag"], headers["Accept-Ranges"] = f'"{entry.etag}"', "bytes"
        headers["Content-Type"] = "application/octet-stream"
        if entry.lfs:
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
        start, end, status = 0, entry.size - 1, 200
        if range_header:
            start, end = self._byte_range(range_header, entry.size)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
        headers["Content-Length"] = str(end - start + 1)
        if method == "HEAD":
            return status, headers, b""
        with self._object_path(entry.sha256).open("rb") as f:
            f.seek(start)
            return status, headers, f.read(end - start + 1)

    @staticmethod
    def _byte_range(range_header: str, size: int) -> tuple[int, int]:
        """(first, last) byte of a single `bytes=a-b`, `bytes=a-` or `bytes=-n` range; 416 if unusable."""
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", range_header.strip())
        if match is not None and match.group(1):
            first, last = int(match.group(1)), min(int(match.group(2) or size - 1), size - 1)
        elif match is not None and match.group(2):
            first, last = max(size - int(match.group(2)), 0), size - 1
        else:
            first, last = 1, 0
        if first > last:
            raise HubError(416, f"Unsatisfiable Range {range_header!r}", headers={"Content-Range": f"bytes */{size}"})
        return first, last


class _Handler(BaseHTTPRequestHandler):
    """HTTP plumbing: read the body, call HubServer.handle, write the answer (HTTP/1.0: one request per connection)."""

    server_version = "UniqHubTestHub/1.0"

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet by default
        pass

    def _dispatch(self) -> None:
        hub: HubServer = self.server.hub  # type: ignore[attr-defined]
        if hub.fault == "hang":  # accept, read, never answer (until the fault ends or the server stops)
            self._read_body()
            hub._log(self.command, self.path)
            hub._release.wait()
            self.close_connection = True
            return
        try:
            status, headers, body = hub.handle(self.command, self.path, self.headers, self._read_body())
        except HubError as err:
            status, headers, body = _json({"error": err.message, **err.extra}, err.status, err.headers)
            headers["X-Error-Message"] = err.message.encode("ascii", "replace").decode()
            if err.code:
                headers["X-Error-Code"] = err.code
        except Exception as err:  # noqa: BLE001 - a bug in this server: answer 500 and keep serving
            traceback.print_exc()
            status, headers, body = _json({"error": f"test Hub crashed: {err!r}"}, 500)
        self.send_response(status)
        headers.setdefault("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _read_body(self) -> bytes:
        """The whole request body (Content-Length or chunked), read before answering."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks, total = [], 0
            while True:
                size_line = self.rfile.readline(1024)
                if not size_line:
                    raise HubError(400, "Truncated chunked body")
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                total += size
                if total > MAX_BODY_BYTES:
                    raise HubError(413, "Request body too large")
                if size == 0:
                    while self.rfile.readline(1024).strip():  # optional trailers, then a blank line
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(16)  # CRLF closing the chunk
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise HubError(413, "Request body too large")
        return self.rfile.read(length) if length else b""


# -- keeping tests on loopback ---------------------------------------------------------------


class NonLoopbackConnectionError(RuntimeError):
    """A test tried to open a network connection to a non-loopback address."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def forbid_non_loopback_connections() -> None:
    """Make `socket.connect`/`connect_ex` raise NonLoopbackConnectionError for non-loopback addresses (idempotent)."""
    if getattr(socket.socket.connect, "_loopback_only", False):
        return
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(str(address[0])):
            raise NonLoopbackConnectionError(f"Tests may only connect to loopback addresses, not {address!r}")

    def connect(self: socket.socket, address: Any) -> None:
        check(self, address)
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(self, address)
        return real_connect_ex(self, address)

    connect._loopback_only = True  # type: ignore[attr-defined]
    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
