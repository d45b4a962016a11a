"""What ``uniq-hub publish`` uploads (:func:`plan_upload`): a declared set of files, checked.

Only :data:`RELEASE_FILES` go up (config, weights, preprocessor config, card, results,
``onnx/model.onnx``, each by its exact name; weight shards by :data:`SHARD_NAME`), plus the shipped
code: the modules of ``uniq_hub/model/`` that ``auto_map`` names and their relative imports. That
code is always the library's own, added whether or not the folder has code files; a folder code
file that differs from it is refused, and folder code is never run. Anything else is listed as
skipped; a symlink that leaves the folder is refused. A missing ``README.md`` is generated from the
zoo entry (``--zoo``, or the repo id when it is a zoo name) or else from ``config.json``.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from safetensors import safe_open
from transformers.dynamic_module_utils import get_relative_imports

from ..catalog.cards import entry_from_config, render_card
from ..catalog.zoo import ZooEntry, get_entry, parse_result
from ..model import atomic
from ..model.configuration_uniq import UniQConfig
from ..model.constants import PREDICTIONS_FILE, RESULTS_FILE
from ..model.image_inputs import normalization
from ..model.packing import CheckpointError, weight_files

__all__ = ["LIBRARY_DIR", "RELEASE_FILES", "REQUIRED_FILES", "RESULTS_FILES", "PublishError", "UploadPlan",
           "check_processor_config", "check_repo_id", "code_files", "plan_upload", "read_json"]

REQUIRED_FILES: dict[str, str] = {
    "config.json": "the model configuration (UniQConfig.save_pretrained)",
    "model.safetensors": "the packed low-bit weights (UniQForImageClassification.save_pretrained)",
    "preprocessor_config.json": "the image processor (needed by pipeline('image-classification'))",
}
RESULTS_FILES = (RESULTS_FILE, "results.json")  # measured numbers next to an export
# What a release may contain (exact path in the repo -> what it is; weight shards by SHARD_NAME);
# code files come from auto_map (code_files). Nothing else, under any folder, goes up.
RELEASE_FILES: dict[str, str] = {
    **REQUIRED_FILES,
    "model.safetensors.index.json": "the index of sharded weights",
    "README.md": "the model card",
    **{name: "measured results" for name in RESULTS_FILES},
    PREDICTIONS_FILE: "the per-image predictions behind the measured results (re-derivable on any CPU)",
    "onnx/model.onnx": "the exact ONNX export (uniq_hub.deploy.onnx_export)",
}
SHARD_NAME = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")  # transformers' shard names, top level only
LIBRARY_DIR = Path(__file__).resolve().parents[1] / "model"  # the shipped code: the model subpackage
IGNORED_DIRS = {".git", ".cache", "__pycache__", ".ipynb_checkpoints"}
IGNORED_SUFFIXES = (".pyc", ".lock")


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


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path`` (:func:`uniq_hub.model.atomic.read_json`), else :class:`PublishError`."""
    try:
        return atomic.read_json(path)
    except (OSError, ValueError) as err:
        raise PublishError(str(err)) from err


def _class_refs(value: Any) -> list[str]:
    """Class references in an ``auto_map`` value: a string, a list (slow / fast) or a dict (backends)."""
    if isinstance(value, str):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return [ref for item in items if item for ref in _class_refs(item)]


def code_files(folder: Path, configs: dict[str, dict[str, Any]]) -> set[str]:
    """The shipped code files (in :data:`LIBRARY_DIR`) that the ``auto_map`` of each config names,
    relative imports followed. ``config.json`` must have an ``auto_map`` (users without uniq_hub
    load through it); a module the library lacks, or a folder code file of the same name that
    differs from the library's, raises :class:`PublishError`."""
    if not isinstance(configs["config.json"].get("auto_map"), dict) or not configs["config.json"]["auto_map"]:
        raise PublishError(
            f"{folder / 'config.json'}: no 'auto_map'; export with UniQForImageClassification.save_pretrained so "
            "users without uniq_hub can load it through the shipped code (trust_remote_code=True)"
        )
    todo: list[tuple[str, str]] = []  # (module, who needs it)
    for filename, config in configs.items():
        for ref in _class_refs(config.get("auto_map")):  # "module.Class" or "repo--module.Class"
            todo.append((ref.split("--")[-1].rsplit(".", 1)[0], f"{filename}'s auto_map"))
    needed: set[str] = set()
    while todo:
        module, needer = todo.pop()
        name = f"{module}.py"
        if name in needed:
            continue
        path, ours = folder / name, LIBRARY_DIR / name
        if not re.fullmatch(r"\w+", module) or not ours.is_file():
            raise PublishError(f"{path}: {needer} names the module {module!r}, which is not one of uniq_hub's; only "
                               "the library's own code is uploaded (re-export the folder with save_pretrained)")
        if path.is_file() and path.read_bytes() != ours.read_bytes():
            raise PublishError(f"{path}: differs from this uniq_hub's {ours.name}; only the library's own code is "
                               f"uploaded, and folder code is never run: re-save the folder with this version "
                               f"(`uniq-hub migrate {folder}`, or save_pretrained), or remove its code files")
        needed.add(name)
        # transformers' own parser: what its remote-code loader will fetch beside the file
        todo += [(module, f"a relative import in {name}") for module in get_relative_imports(ours)]
    return needed


def check_processor_config(
    processor: Mapping[str, Any], config: Mapping[str, Any], path: str | os.PathLike | None = None
) -> list[str]:
    """Check a ``preprocessor_config.json`` against its ``config.json``: ``image_std`` must be
    positive and finite and ``image_mean`` finite (else :class:`PublishError` naming the key);
    returns warnings where the model input size the processor produces differs from the config's
    ``image_size`` (it runs, but not as the model was trained)."""
    if "image_mean" in processor or "image_std" in processor:
        channels = processor.get("num_channels", config.get("num_channels", 3))
        try:
            normalization(processor.get("image_mean", 0.0), processor.get("image_std", 1.0), channels,
                          os.fspath(path) if path is not None else "preprocessor_config.json")
        except ValueError as err:
            raise PublishError(str(err)) from None
    side = config.get("image_size")
    if processor.get("do_center_crop", True) and isinstance(processor.get("crop_size"), dict):
        key, produced = "crop_size", processor["crop_size"]
        agrees = produced.get("height") == side and produced.get("width") == side
    else:
        key, produced = "size", processor.get("size")
        agrees = not isinstance(produced, dict) or side in (produced.get("shortest_edge"), produced.get("height"))
    if side is None or agrees:
        return []
    return [f"{path}: {key} {produced} disagrees with config.json image_size {side}: the model would see inputs of "
            "another size than it was trained on"]


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
            record = read_json(path)
            try:
                parse_result(record, path)
            except ValueError as err:
                raise PublishError(str(err)) from err
            return record
        if results_file:
            raise PublishError(f"{path}: results file not found")
    return None


def _release_file(name: str) -> str | None:
    """What a (non-code) file in the folder is, or None when it is not part of a release."""
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
    config = read_json(folder / "config.json")
    if config.get("model_type") != "uniq":
        raise PublishError(f"{folder / 'config.json'}: model_type is {config.get('model_type')!r}, expected 'uniq'")
    try:
        UniQConfig.from_dict(config)  # every field validated, with a message naming it
    except (TypeError, ValueError) as err:
        raise PublishError(f"{folder / 'config.json'}: {err}") from err
    preprocessor = read_json(folder / "preprocessor_config.json")
    if "image_processor_type" not in preprocessor:
        raise PublishError(f"{folder / 'preprocessor_config.json'}: no 'image_processor_type' (pipeline needs it)")
    warnings = check_processor_config(preprocessor, config, folder / "preprocessor_config.json")
    _check_weights(folder / "model.safetensors")
    code = code_files(folder, {"config.json": config, "preprocessor_config.json": preprocessor})
    entry = _zoo_entry(config, repo_id, zoo_name)

    plan = UploadPlan(folder=folder, repo_id=repo_id, warnings=warnings)
    for rel, path in _folder_files(folder):
        if rel in code:  # equal to the library's (checked above): the library's file goes up below
            continue
        if _release_file(rel):
            plan.files[rel] = path
        else:
            plan.skipped[rel] = "not part of a release: " + (
                "no auto_map or relative import needs it" if rel.endswith(".py") else "not a declared release file")
    plan.files.update({name: LIBRARY_DIR / name for name in sorted(code)})  # the shipped code, always the library's
    if "README.md" not in plan.files:
        plan.card_source = f"zoo entry {entry.name}" if entry else "config.json"
        entry = entry or entry_from_config(config, name=repo_id)
        card = render_card(entry, result=_folder_result(folder, results_file), repo_id=repo_id, folder=folder)
        plan.generated["README.md"] = card.encode()
    return plan
