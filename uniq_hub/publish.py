"""``uniq-hub publish PATH --repo-id ORG/NAME``: upload an exported model folder to the Hub.

The folder is validated first (config, weights, preprocessor, the code files ``auto_map`` names
and their relative imports); a missing ``README.md`` is generated from the zoo entry (``--zoo``,
or the repo id when it is a zoo name) or else from ``config.json``. Everything goes up in one
commit with the real ``huggingface_hub`` client: ``create_repo(exist_ok=True)``, the branch
created when ``--revision`` names a new one, then ``create_commit``. ``--dry-run`` prints the
plan and contacts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cards import entry_from_config, render_card
from .zoo import ZooEntry, get_entry, parse_result

REQUIRED_FILES: dict[str, str] = {
    "config.json": "the model configuration (UniQConfig.save_pretrained)",
    "model.safetensors": "the packed low-bit weights (UniQForImageClassification.save_pretrained)",
    "preprocessor_config.json": "the image processor (needed by pipeline('image-classification'))",
}
RESULTS_FILES = ("eval_results.json", "results.json")  # measured numbers next to an export
IGNORED_DIRS = {".git", ".cache", "__pycache__", ".ipynb_checkpoints"}
IGNORED_SUFFIXES = (".pyc", ".lock")
_RELATIVE_IMPORT = re.compile(r"^\s*(?:from\s+\.(\w+)\s+import|import\s+\.(\w+))", re.MULTILINE)


class PublishError(ValueError):
    """The folder cannot be published as it is; the message names the file and the problem."""


@dataclass
class UploadPlan:
    """What ``publish`` uploads: files on disk (path in repo -> local path) and generated ones."""

    folder: Path
    repo_id: str
    files: dict[str, Path] = field(default_factory=dict)
    generated: dict[str, bytes] = field(default_factory=dict)
    card_source: str = "README.md in the folder"

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files.values()) + sum(map(len, self.generated.values()))

    def describe(self) -> str:
        rows = [(name, path.stat().st_size) for name, path in self.files.items()]
        rows += [(f"{name} (generated from {self.card_source})", len(data)) for name, data in self.generated.items()]
        width = max(len(n) for n, _ in rows)
        lines = [f"{n.ljust(width)}  {_human(size):>10}  ({size} bytes)" for n, size in sorted(rows)]
        lines.append(f"{'total'.ljust(width)}  {_human(self.total_bytes):>10}  ({self.total_bytes} bytes)")
        return "\n".join(lines)


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
        path = folder / f"{module}.py"
        if path.name in needed:
            continue
        if not path.is_file():
            raise PublishError(f"{path}: missing; {needer} needs the module {module!r}")
        needed.add(path.name)
        imports = _RELATIVE_IMPORT.findall(path.read_text(encoding="utf-8"))
        todo += [(a or b, f"a relative import in {path.name}") for a, b in imports]
    return needed


def _check_weights(path: Path) -> None:
    from safetensors import safe_open

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


def plan_upload(
    folder: str | os.PathLike,
    repo_id: str,
    zoo_name: str | None = None,
    results_file: str | os.PathLike | None = None,
) -> UploadPlan:
    """Validate ``folder`` and list what goes up (raises :class:`PublishError` naming the problem)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PublishError(f"{folder}: not a directory (expected an exported model folder)")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PublishError(f"--repo-id must look like ORG/NAME, got {repo_id!r}")
    for name, what in REQUIRED_FILES.items():
        if not (folder / name).is_file():
            raise PublishError(f"{folder / name}: missing ({what}); the folder is not a complete export")
    config = _read_json(folder / "config.json")
    if config.get("model_type") != "uniq":
        raise PublishError(f"{folder / 'config.json'}: model_type is {config.get('model_type')!r}, expected 'uniq'")
    preprocessor = _read_json(folder / "preprocessor_config.json")
    if "image_processor_type" not in preprocessor:
        raise PublishError(f"{folder / 'preprocessor_config.json'}: no 'image_processor_type' (pipeline needs it)")
    _check_weights(folder / "model.safetensors")
    _code_files(folder, {"config.json": config, "preprocessor_config.json": preprocessor})
    entry = _zoo_entry(config, repo_id, zoo_name)

    plan = UploadPlan(folder=folder, repo_id=repo_id)
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not (set(rel.parts[:-1]) & IGNORED_DIRS or rel.name.endswith(IGNORED_SUFFIXES)
                                   or rel.parts[0].startswith(".")):
            plan.files[rel.as_posix()] = path
    if "README.md" not in plan.files:
        plan.card_source = f"zoo entry {entry.name}" if entry else "config.json"
        entry = entry or entry_from_config(config, name=repo_id)
        card = render_card(entry, result=_folder_result(folder, results_file), repo_id=repo_id, folder=folder)
        plan.generated["README.md"] = card.encode()
    return plan


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
):
    """Upload ``folder`` to ``repo_id`` in one commit; returns the ``CommitInfo`` (the plan on a dry run)."""
    plan = plan_upload(folder, repo_id, zoo_name=zoo_name, results_file=results_file)
    if dry_run:
        return plan
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if private and not api.model_info(repo_id).private:  # an existing public repo: make it private first
        api.update_repo_settings(repo_id, private=True)
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in plan.files.items()]
    operations += [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in plan.generated.items()]
    return api.create_commit(
        repo_id, operations, revision=revision,
        commit_message=commit_message or f"Upload {Path(folder).name} with uniq-hub publish",
    )


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
    parser.add_argument("--dry-run", action="store_true", help="print what would be uploaded; contact nothing")


def run(args: argparse.Namespace) -> int:
    try:
        out = publish(
            args.path, args.repo_id, private=args.private, revision=args.revision, token=args.token,
            commit_message=args.commit_message, zoo_name=args.zoo, results_file=args.results, dry_run=args.dry_run,
        )
    except PublishError as err:
        raise SystemExit(f"uniq-hub publish: {err}") from err
    where = f"{args.repo_id}" + (f"@{args.revision}" if args.revision else "") + (" (private)" if args.private else "")
    if args.dry_run:
        print(f"dry run: would upload to {where}:\n{out.describe()}")
    else:
        print(f"published {args.path} to {where}: {out.commit_url}")
    return 0
