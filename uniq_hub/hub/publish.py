"""``uniq-hub publish PATH --repo-id ORG/NAME``: verify an exported model folder, then upload it.

1. **Plan** (:func:`plan_upload`): only a declared set of files goes up (:data:`RELEASE_FILES`:
   config, weights, preprocessor config, card, results, ``onnx/model.onnx``, each by its exact
   name; plus the code files that ``auto_map`` names and their relative imports). Anything else
   is listed as skipped; a symlink that leaves the folder is refused. The code that goes up is the
   library's own (``uniq_hub``'s modules): a folder whose code files differ from it is refused,
   and the folder's code is never run. A missing ``README.md`` is generated from the zoo entry
   (``--zoo``, or the repo id when it is a zoo name) or else from ``config.json``.
2. **Verify** (:func:`verify_folder`), on a staged copy of exactly those files: the processor
   config is checked against the config (std > 0, size); the model loads with
   ``from_pretrained`` (every loading check of ``modeling_uniq`` / ``packing``), its weights are
   finite, and a forward pass on the processor's output of a probe image gives finite logits;
   then a second Python process in which uniq_hub cannot be imported loads the same copy through
   its own code (``trust_remote_code=True``), as users without uniq_hub will, and must produce
   identical pixel values and logits. An ``onnx/model.onnx`` is checked by ``onnx_export.verify_onnx``.
3. **Upload** the staged copy in one commit with the real ``huggingface_hub`` client:
   ``create_repo(exist_ok=True)``, the branch created when ``--revision`` names a new one, then
   ``create_commit``. Every Hub request has a timeout (``--timeout``, default
   :data:`DEFAULT_TIMEOUT` s); authentication, HTTP and network errors become one line naming
   the request and what to do.

``--dry-run`` plans and verifies, and contacts nothing. :func:`prepare` (plan, stage, verify) and
:func:`upload` are the two halves, so that ``publish-zoo`` verifies every entry before it uploads any.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import importlib
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from huggingface_hub import CommitOperationAdd, HfApi, get_session
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from ..model.configuration_uniq import UniQConfig
from ..model.constants import RESULTS_FILE
from ..model.image_processing_uniq import UniQImageProcessor
from ..model.modeling_uniq import UniQForImageClassification
from ..model.packing import CheckpointError, check_processor_config, weight_files
from .cards import entry_from_config, render_card
from .network import DEFAULT_TIMEOUT, hub_timeout
from .zoo import ZooEntry, get_entry, parse_result

logger = logging.getLogger(__name__)

REQUIRED_FILES: dict[str, str] = {
    "config.json": "the model configuration (UniQConfig.save_pretrained)",
    "model.safetensors": "the packed low-bit weights (UniQForImageClassification.save_pretrained)",
    "preprocessor_config.json": "the image processor (needed by pipeline('image-classification'))",
}
RESULTS_FILES = (RESULTS_FILE, "results.json")  # measured numbers next to an export
# What a release may contain (exact path in the repo -> what it is; weight shards by SHARD_NAME);
# code files come from auto_map (_code_files). Nothing else, under any folder, goes up.
RELEASE_FILES: dict[str, str] = {
    **REQUIRED_FILES,
    "model.safetensors.index.json": "the index of sharded weights",
    "README.md": "the model card",
    **{name: "measured results" for name in RESULTS_FILES},
    "onnx/model.onnx": "the exact ONNX export (uniq_hub.deploy.onnx_export)",
}
SHARD_NAME = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")  # transformers' shard names, top level only
LIBRARY_DIR = Path(__file__).resolve().parents[1] / "model"  # the shipped code: the model subpackage
# Files that change nothing the verification computes (a new card or results reuse a verification).
_NOT_COMPUTED = ("README.md", *RESULTS_FILES, "onnx/model.onnx")
IGNORED_DIRS = {".git", ".cache", "__pycache__", ".ipynb_checkpoints"}
IGNORED_SUFFIXES = (".pyc", ".lock")
REMOTE_CODE_TIMEOUT = 600.0  # seconds, the remote-code load in a subprocess
_RELATIVE_IMPORT = re.compile(r"^\s*(?:from\s+\.(\w+)\s+import|import\s+\.(\w+))", re.MULTILINE)


class PublishError(ValueError):
    """The folder cannot be published as it is, or the Hub refused it; the message names the file
    or request and the problem."""


@dataclass
class UploadPlan:
    """What ``publish`` uploads: files on disk (path in repo -> local path) and generated ones,
    and what it leaves out (path -> why)."""

    folder: Path
    repo_id: str
    files: dict[str, Path] = field(default_factory=dict)
    generated: dict[str, bytes] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    card_source: str = "README.md in the folder"
    warnings: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files.values()) + sum(map(len, self.generated.values()))

    def describe(self) -> str:
        rows = [(name, path.stat().st_size) for name, path in self.files.items()]
        rows += [(f"{name} (generated from {self.card_source})", len(data)) for name, data in self.generated.items()]
        width = max(len(n) for n, _ in rows)
        lines = [f"{n.ljust(width)}  {_human(size):>10}  ({size} bytes)" for n, size in sorted(rows)]
        lines.append(f"{'total'.ljust(width)}  {_human(self.total_bytes):>10}  ({self.total_bytes} bytes)")
        lines += [f"skipped: {name} ({why})" for name, why in sorted(self.skipped.items())]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def stage(self, target: Path) -> Path:
        """Copy exactly what goes up into ``target`` (links resolved); verification and upload
        then read this copy, so what was verified is what is uploaded."""
        for name, path in self.files.items():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target / name)
        for name, data in self.generated.items():
            (target / name).write_bytes(data)
        return target


def _human(num_bytes: int) -> str:
    if num_bytes < 1000:
        return f"{num_bytes} B"
    scaled, unit = next((num_bytes / 10**e, u) for e, u in ((9, "GB"), (6, "MB"), (3, "KB")) if num_bytes >= 10**e)
    return f"{scaled:.2f} {unit}"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PublishError(f"{path}: not a readable JSON file ({err})") from err
    if not isinstance(data, dict):
        raise PublishError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _class_refs(value: Any) -> list[str]:
    """Class references in an ``auto_map`` value: a string, a list (slow / fast) or a dict (backends)."""
    if isinstance(value, str):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return [ref for item in items if item for ref in _class_refs(item)]


def _code_files(folder: Path, configs: dict[str, dict[str, Any]]) -> set[str]:
    """The code files the ``auto_map`` of each config names, relative imports followed; each must
    exist. ``config.json`` must have an ``auto_map`` (users without uniq_hub load through it)."""
    if not isinstance(configs["config.json"].get("auto_map"), dict) or not configs["config.json"]["auto_map"]:
        raise PublishError(
            f"{folder / 'config.json'}: no 'auto_map'; export with UniQForImageClassification.save_pretrained so "
            "the folder carries its code for users without uniq_hub (trust_remote_code=True)"
        )
    todo: list[tuple[str, str]] = []  # (module, who needs it)
    for filename, config in configs.items():
        for ref in _class_refs(config.get("auto_map")):  # "module.Class" or "repo--module.Class"
            todo.append((ref.split("--")[-1].rsplit(".", 1)[0], f"{filename}'s auto_map"))
    needed: set[str] = set()
    while todo:
        module, needer = todo.pop()
        path, ours = folder / f"{module}.py", LIBRARY_DIR / f"{module}.py"
        if path.name in needed:
            continue
        if not path.is_file():
            raise PublishError(f"{path}: missing; {needer} needs the module {module!r}")
        if not re.fullmatch(r"\w+", module) or not ours.is_file():
            raise PublishError(f"{path}: {needer} names the module {module!r}, which is not one of uniq_hub's; only "
                               "the library's own code is uploaded (re-export the folder with save_pretrained)")
        if path.read_bytes() != ours.read_bytes():
            raise PublishError(f"{path}: differs from this uniq_hub's {ours.name}; only the library's own code is "
                               f"uploaded, and folder code is never run: re-save the folder with this version "
                               f"(`uniq-hub migrate {folder}`, or save_pretrained)")
        needed.add(path.name)
        imports = _RELATIVE_IMPORT.findall(ours.read_text(encoding="utf-8"))
        todo += [(a or b, f"a relative import in {path.name}") for a, b in imports]
    return needed


def _check_weights(path: Path) -> None:
    try:
        with safe_open(str(path), framework="pt") as f:
            if not list(f.keys()):
                raise PublishError(f"{path}: holds no tensors")
    except PublishError:
        raise
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise PublishError(f"{path}: not a valid safetensors file ({type(err).__name__}: {err})") from err


def _zoo_entry(config: dict[str, Any], repo_id: str, zoo_name: str | None) -> ZooEntry | None:
    """``--zoo``'s entry, else the repo id's when it is a zoo name; it must agree with config.json."""
    try:
        entry = get_entry(zoo_name or repo_id)
    except KeyError:
        if zoo_name:
            raise PublishError(f"--zoo {zoo_name!r}: no such zoo entry (`uniq-hub zoo` lists them)") from None
        return None
    expected = dict(arch=entry.arch, w_bits=entry.w_bits, a_bits=entry.a_bits, num_labels=entry.dataset.num_labels)
    actual = dict(config, num_labels=config.get("num_labels") or len(config.get("id2label") or {}))
    wrong = {k: actual.get(k) for k, v in expected.items() if actual.get(k) != v}
    if wrong:
        raise PublishError(f"config.json {wrong} disagrees with zoo entry {entry.name} {expected}")
    return entry


def _folder_result(folder: Path, results_file: str | os.PathLike | None) -> dict[str, Any] | None:
    candidates = [Path(results_file)] if results_file else [folder / n for n in RESULTS_FILES]
    for path in candidates:
        if path.is_file():
            record = _read_json(path)
            try:
                parse_result(record, path)
            except ValueError as err:
                raise PublishError(str(err)) from err
            return record
        if results_file:
            raise PublishError(f"{path}: results file not found")
    return None


def _release_file(name: str, code_files: set[str]) -> str | None:
    """What a file in the folder is, or None when it is not part of a release."""
    if name in code_files:
        return "code for trust_remote_code"
    return RELEASE_FILES.get(name) or ("a weight shard" if SHARD_NAME.fullmatch(name) else None)


def _folder_files(folder: Path) -> Iterator[tuple[str, Path]]:
    """(path in repo, local path) of every file under ``folder``, caches left out; a symlink whose
    target lies outside the folder, or that names a directory, raises :class:`PublishError`."""
    root = folder.resolve()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if d not in IGNORED_DIRS)
        for name in sorted(filenames) + [d for d in dirnames if (here / d).is_symlink()]:
            path = here / name
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink():
                target = path.resolve()
                if not target.is_relative_to(root):
                    raise PublishError(f"{path}: a symlink to {target}, outside the folder; refusing to upload it "
                                       "(copy the file into the folder, or remove the link)")
                if target.is_dir():  # (following it could loop, or list a file twice)
                    raise PublishError(f"{path}: a symlink to the directory {target}; replace it by the directory "
                                       "itself (a release folder holds plain files)")
            if name.endswith(IGNORED_SUFFIXES) or name.startswith(".") and rel.count("/") == 0:
                continue
            yield rel, path


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` when it is a valid Hub model id ``ORG/NAME``, else :class:`PublishError`."""
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PublishError(f"--repo-id must look like ORG/NAME, got {repo_id!r}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise PublishError(f"--repo-id {repo_id!r} is not a valid Hub repo id: {err}") from None
    return repo_id


def plan_upload(
    folder: str | os.PathLike,
    repo_id: str,
    zoo_name: str | None = None,
    results_file: str | os.PathLike | None = None,
) -> UploadPlan:
    """Validate ``folder`` and list what goes up (raises :class:`PublishError` naming the problem)."""
    folder = Path(folder)
    check_repo_id(repo_id)
    if not folder.is_dir():
        raise PublishError(f"{folder}: not a directory (expected an exported model folder)")
    try:
        weight_files(folder)  # an index or link leading out of the folder is refused
    except CheckpointError as err:
        raise PublishError(str(err)) from None
    for name, what in REQUIRED_FILES.items():
        if not (folder / name).is_file():
            raise PublishError(f"{folder / name}: missing ({what}); the folder is not a complete export")
    config = _read_json(folder / "config.json")
    if config.get("model_type") != "uniq":
        raise PublishError(f"{folder / 'config.json'}: model_type is {config.get('model_type')!r}, expected 'uniq'")
    try:
        UniQConfig.from_dict(config)  # every field validated, with a message naming it
    except (TypeError, ValueError) as err:
        raise PublishError(f"{folder / 'config.json'}: {err}") from err
    preprocessor = _read_json(folder / "preprocessor_config.json")
    if "image_processor_type" not in preprocessor:
        raise PublishError(f"{folder / 'preprocessor_config.json'}: no 'image_processor_type' (pipeline needs it)")
    try:
        warnings = check_processor_config(preprocessor, config, folder / "preprocessor_config.json")
    except CheckpointError as err:
        raise PublishError(str(err)) from err
    _check_weights(folder / "model.safetensors")
    code_files = _code_files(folder, {"config.json": config, "preprocessor_config.json": preprocessor})
    entry = _zoo_entry(config, repo_id, zoo_name)

    plan = UploadPlan(folder=folder, repo_id=repo_id, warnings=warnings)
    for rel, path in _folder_files(folder):
        if rel in code_files:  # equal to the library's (checked above): the library's file is what goes up
            plan.files[rel] = LIBRARY_DIR / rel
        elif _release_file(rel, code_files):
            plan.files[rel] = path
        else:
            plan.skipped[rel] = "not part of a release: " + (
                "no auto_map or relative import needs it" if rel.endswith(".py") else "not a declared release file")
    if "README.md" not in plan.files:
        plan.card_source = f"zoo entry {entry.name}" if entry else "config.json"
        entry = entry or entry_from_config(config, name=repo_id)
        card = render_card(entry, result=_folder_result(folder, results_file), repo_id=repo_id, folder=folder)
        plan.generated["README.md"] = card.encode()
    return plan


# ---------------------------------------------------------------------------------------------
# Verification


# Runs in a fresh interpreter (-E: no PYTHONPATH) in which uniq_hub cannot be imported: it loads
# the staged folder as a user without uniq_hub does (trust_remote_code) and saves what it computed.
REMOTE_CODE_SCRIPT = r"""
import importlib.abc, sys

class _HideUniqHub(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "uniq_hub" or name.startswith("uniq_hub."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden: checking the folder's own code)", name=name)
        return None

sys.meta_path.insert(0, _HideUniqHub())
sys.path[:] = [p for p in sys.path if p not in ("", ".")]
folder, image_path, out = sys.argv[1:4]

import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoImageProcessor, AutoModelForImageClassification

model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
with Image.open(image_path) as image:
    pixel_values = processor(image, return_tensors="pt")["pixel_values"]
with torch.no_grad():
    logits = model(pixel_values).logits
save_file({"pixel_values": pixel_values.contiguous(), "logits": logits.contiguous()}, out,
          metadata={"model": type(model).__module__, "processor": type(processor).__module__})
"""


@dataclass(frozen=True)
class Verification:
    """What :func:`verify_folder` computed on its probe image."""

    logits: Any  # Tensor (1, num_labels)
    remote_code_module: str  # the module the remote-code process built the model from


_VERIFIED: dict[str, Verification] = {}  # digest of the computed-on files -> result (same bytes, same answer)


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if not any(fnmatch.fnmatchcase(rel, pattern) for pattern in _NOT_COMPUTED):
            digest.update(f"{rel}\0{path.stat().st_size}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def probe_image(config: dict[str, Any], path: Path) -> Path:
    """A fixed pseudo-random RGB image, larger than the model input and not square (so resize and
    crop both act), written as PNG: both processes read the same pixels."""
    side = int(config.get("image_size") or 224)
    pixels = np.random.default_rng(0).integers(0, 256, (side + side // 2, side + side // 4, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _start_remote_code_check(folder: Path, image: Path, out: Path, workdir: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(workdir / "modules"))  # fresh copy of the code, no network
    return subprocess.Popen(
        [sys.executable, "-E", "-c", REMOTE_CODE_SCRIPT, str(folder), str(image), str(out)],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _last_lines(text: str, n: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


def verify_folder(folder: str | os.PathLike, timeout: float = REMOTE_CODE_TIMEOUT) -> Verification:
    """Load ``folder`` with uniq_hub and, in a subprocess, through its own code; both must give
    identical pixel values and finite, identical logits. Raises :class:`PublishError`."""
    folder = Path(folder)
    key = _digest(folder)
    if key in _VERIFIED:
        return _VERIFIED[key]
    config = _read_json(folder / "config.json")
    for path in sorted(folder.glob("*.py")):  # a broken file is named at once, without a subprocess
        try:
            compile(path.read_text(encoding="utf-8"), str(path), "exec")
        except (SyntaxError, UnicodeDecodeError, ValueError) as err:
            raise PublishError(f"{path}: not valid Python ({type(err).__name__}: {err}); users without uniq_hub run "
                               "this file (trust_remote_code): re-export the folder with save_pretrained") from None
    with tempfile.TemporaryDirectory(prefix="uniq-publish-verify-") as tmp:
        work = Path(tmp)
        image = probe_image(config, work / "probe.png")
        remote = _start_remote_code_check(folder, image, work / "remote.safetensors", work)
        try:
            try:
                model = UniQForImageClassification.from_pretrained(folder).eval()
                processor = UniQImageProcessor.from_pretrained(folder)
                pixel_values = processor(str(image), return_tensors="pt")["pixel_values"]
            except (OSError, ValueError) as err:  # CheckpointError is a ValueError
                raise PublishError(f"{folder}: does not load with uniq_hub: {err}") from err
            bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
            if bad:
                raise PublishError(f"{folder / 'model.safetensors'}: non-finite weights in {bad[:3]} (a diverged run?)")
            with torch.no_grad():
                logits = model(pixel_values).logits
            if not torch.isfinite(logits).all():
                raise PublishError(f"{folder}: the model gives non-finite logits on a probe image (a diverged run?)")
            try:
                output, _ = remote.communicate(timeout=timeout)
            except subprocess.TimeoutExpired as err:
                raise PublishError(f"{folder}: loading through the folder's own code (trust_remote_code) took over "
                                   f"{timeout:g} s") from err
        finally:
            if remote.poll() is None:
                remote.kill()
                remote.communicate()
        if remote.returncode != 0:
            raise PublishError(
                f"{folder}: users without uniq_hub load it through its own code (trust_remote_code=True), and that "
                f"fails; is a code file broken or stale? Re-export the folder with save_pretrained. The error:\n"
                f"{_last_lines(output)}"
            )
        theirs = load_file(str(work / "remote.safetensors"))

        with safe_open(str(work / "remote.safetensors"), framework="pt") as f:
            module = (f.metadata() or {}).get("model", "")
    if not module.startswith("transformers_modules."):
        raise PublishError(f"{folder}: the remote-code check did not use the folder's code (model from {module!r})")
    if not torch.equal(theirs["pixel_values"], pixel_values):
        raise PublishError(f"{folder}: the folder's image_processing code preprocesses differently from uniq_hub "
                           "(pixel values differ); re-export the folder with save_pretrained")
    if not torch.equal(theirs["logits"], logits):
        diff = (theirs["logits"] - logits).abs().max().item()
        raise PublishError(f"{folder}: the folder's own code (trust_remote_code) computes other logits than uniq_hub "
                           f"(max |difference| {diff:.3g}); its code files are tampered or stale: re-export the folder "
                           "with save_pretrained")
    _VERIFIED[key] = result = Verification(logits=logits, remote_code_module=module)
    return result


def _verify_onnx(folder: Path) -> None:
    """The ONNX hook: ``onnx/model.onnx``, when present, is checked by ``onnx_export.verify_onnx``."""
    if not (folder / "onnx" / "model.onnx").is_file():
        return
    from ..deploy.onnx_export import OnnxExportError, verify_onnx

    try:
        verify_onnx(folder)
    except OnnxExportError as err:
        raise PublishError(str(err)) from err


# ---------------------------------------------------------------------------------------------
# Hub calls: a timeout on each, one-line errors


def _http_module() -> Any:
    """The HTTP library huggingface_hub uses (httpx, or httpx2 in newer releases)."""
    return importlib.import_module(type(get_session()).__module__.partition(".")[0])


_STATUS_ADVICE = {
    401: "the token is missing, invalid or expired: log in with `hf auth login`, set HF_TOKEN, or pass --token",
    403: "the token may not write to this repo: use a token with write access to its namespace",
    404: "check --repo-id and --revision, and that the token can see the repo",
    409: "the repo or branch changed meanwhile: publish again",
    429: "rate limited by the Hub: wait a few minutes and publish again",
}


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


def _has_request(err: Exception) -> bool:
    try:
        return err.request is not None  # type: ignore[attr-defined]
    except RuntimeError:  # httpx raises when the error has no request attached
        return False


@contextmanager
def prepare(
    folder: str | os.PathLike,
    repo_id: str,
    zoo_name: str | None = None,
    results_file: str | os.PathLike | None = None,
) -> Iterator[tuple[UploadPlan, Path]]:
    """Plan, stage and verify ``folder`` for ``repo_id``; yields ``(plan, staged copy)``, the copy
    living until the context ends (what :func:`upload` sends). Raises :class:`PublishError`."""
    plan = plan_upload(folder, repo_id, zoo_name=zoo_name, results_file=results_file)
    for warning in plan.warnings:
        logger.warning(warning)
    with tempfile.TemporaryDirectory(prefix="uniq-publish-") as tmp:
        staged = plan.stage(Path(tmp))
        try:
            verify_folder(staged)
            _verify_onnx(staged)
        except PublishError as err:  # name the user's folder, not the staged copy
            raise PublishError(str(err).replace(str(staged), str(plan.folder))) from None
        yield plan, staged


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
    """Upload a :func:`prepare`d staged copy to ``plan.repo_id`` in one commit; the ``CommitInfo``."""
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


def check_timeout(timeout: float) -> float:
    if not (isinstance(timeout, (int, float)) and timeout > 0 and math.isfinite(timeout)):
        raise PublishError(f"--timeout must be a positive number of seconds, got {timeout!r}")
    return timeout


def publish(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    zoo_name: str | None = None,
    results_file: str | os.PathLike | None = None,
    dry_run: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
):
    """Verify ``folder`` and upload it to ``repo_id`` in one commit; returns the ``CommitInfo``
    (the verified plan on a dry run). ``timeout``: seconds for each Hub request."""
    check_timeout(timeout)
    with prepare(folder, repo_id, zoo_name=zoo_name, results_file=results_file) as (plan, staged):
        if dry_run:
            return plan
        return upload(plan, staged, private=private, revision=revision, token=token,
                      commit_message=commit_message, timeout=timeout)


# ---------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="exported model folder (save_pretrained output)")
    parser.add_argument("--repo-id", required=True, help="ORG/NAME on the Hub")
    parser.add_argument("--private", action="store_true", help="create (or switch) the repo to private")
    parser.add_argument("--revision", help="branch to push to (created from main when new)")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or the stored login)")
    parser.add_argument("--commit-message", help="commit message")
    parser.add_argument("--zoo", help="zoo entry whose card to generate when README.md is missing "
                                      "(default: the repo id when it is a zoo name)")
    parser.add_argument("--results", help=f"results JSON for the card (default: {' or '.join(RESULTS_FILES)} "
                                          "in the folder, else the zoo's committed results)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds each Hub request may take (default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--dry-run", action="store_true",
                        help="verify and print what would be uploaded; contact nothing")


def run(args: argparse.Namespace) -> int:
    try:
        out = publish(
            args.path, args.repo_id, private=args.private, revision=args.revision, token=args.token,
            commit_message=args.commit_message, zoo_name=args.zoo, results_file=args.results, dry_run=args.dry_run,
            timeout=args.timeout,
        )
    except PublishError as err:
        raise SystemExit(f"uniq-hub publish: {err}") from None
    where = f"{args.repo_id}" + (f"@{args.revision}" if args.revision else "") + (" (private)" if args.private else "")
    if args.dry_run:
        print(f"dry run: verified; would upload to {where}:\n{out.describe()}")
    else:
        print(f"published {args.path} to {where}: {out.commit_url}")
    return 0
