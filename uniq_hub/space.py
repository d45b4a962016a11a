"""``uniq-hub publish-space``: upload the demo Space (``spaces/uniq-zoo-demo``) to a Space repo.

The Space folder is staged first, and the staged copy is what goes up: ``app.py``, ``README.md`` (its
YAML front matter: ``sdk: gradio``, ``app_file``, the ``models:`` it shows, replaced by ``--models``),
``requirements.txt``, ``examples/``; plus the torch-free ONNX runtime, ``uniq_hub/deploy/onnx_runtime.py``
with every module it imports relatively (function bodies too) and the ``__init__.py`` of their packages,
each at its package path, bundled as a package ``uniq_hub`` (uniq_hub is not on PyPI; the app imports
``uniq_hub.deploy.onnx_runtime`` and falls back to PyTorch through transformers' remote code for models
without a graph). ``--dry-run`` stages and lists, uploading nothing.
"""

from __future__ import annotations

import argparse
import ast
import shutil
import tempfile
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi
from huggingface_hub.repocard import metadata_load, metadata_save

PACKAGE = Path(__file__).resolve().parent
SPACE_DIR = PACKAGE.parent / "spaces" / "uniq-zoo-demo"
SPACE_FILES = ("app.py", "README.md", "requirements.txt")
EXAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg")
RUNTIME_MODULE = "deploy.onnx_runtime"  # dotted from the package root
BUNDLE_INIT = '"""The torch-free ONNX runtime of uniq_hub, bundled with the demo Space (uniq-hub publish-space)."""\n'


class SpaceError(ValueError):
    """A Space folder that cannot be published; the message names the file and the problem."""


def relative_imports(path: Path, module: str) -> set[str]:
    """The modules of uniq_hub that ``path`` (module ``module``, dotted from the package root, e.g.
    ``deploy.onnx_runtime``) imports relatively (``from .name``, ``from ..pkg.name``, ``from . import
    name``; function bodies too), as dotted names from the package root."""
    names: set[str] = set()
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not (isinstance(node, ast.ImportFrom) and node.level > 0):
            continue
        if node.level - 1 > len(package):
            raise SpaceError(f"{path}: `from {'.' * node.level}{node.module or ''} import` leaves the uniq_hub package")
        base = package[: len(package) - (node.level - 1)]
        if node.module:
            names.add(".".join([*base, node.module]))
        else:  # from . import name: a module, or a name of the package's __init__
            for alias in node.names:
                name = ".".join([*base, alias.name])
                names.add(name if _module_file(name) is not None else ".".join(base))
    return {n for n in names if n}


def _module_file(name: str) -> Path | None:
    """``uniq_hub/<a>/<b>.py`` (or the package's ``__init__.py``) of dotted ``a.b``; None when there is none."""
    path = PACKAGE.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def runtime_modules(start: str = RUNTIME_MODULE) -> list[Path]:
    """``uniq_hub/<start>.py`` (dotted from the package root), every module it imports relatively,
    transitively, and the ``__init__.py`` of each subpackage they lie in (the root's is the bundle's own)."""
    todo, found = [start], {}
    while todo:
        name = todo.pop()
        if name in found:
            continue
        path = _module_file(name)
        if path is None:
            raise SpaceError(f"{PACKAGE / (start.replace('.', '/') + '.py')}: imports .{name}, which is not a "
                             "module of uniq_hub")
        found[name] = path
        todo.extend(relative_imports(path, name))
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # the packages on its way
    return sorted(found.values())


def _check_inside_space(source: Path, path: Path) -> None:
    """A staged file must be a file of the Space folder itself: a link that resolves outside it (whose
    bytes would go up to the Hub) is refused, as ``uniq-hub publish`` refuses one in a model folder."""
    target = path.resolve()
    if not target.is_relative_to(source.resolve()):
        raise SpaceError(f"{path}: resolves to {target}, outside the Space folder {source}; refused (copy the file "
                         "into the folder, or remove the link)")
    if not target.is_file():
        raise SpaceError(f"{path}: not a regular file")


def stage_space(target: str | Path, source: str | Path = SPACE_DIR, models: list[str] | None = None) -> list[str]:
    """Copy the Space's files into ``target`` (created), with the runtime bundled and ``models`` in the card;
    returns the staged files, relative to ``target``."""
    source, target = Path(source), Path(target)
    missing = [name for name in SPACE_FILES if not (source / name).is_file()]
    if missing:
        raise SpaceError(f"{source}: not a Space folder, missing {missing}")
    meta = metadata_load(source / "README.md") or {}
    for key, expected in (("sdk", "gradio"), ("app_file", "app.py")):
        if meta.get(key) != expected:
            raise SpaceError(f"{source / 'README.md'}: its YAML front matter needs {key}: {expected}, "
                             f"got {meta.get(key)!r}")
    examples = [e for e in sorted((source / "examples").glob("*")) if e.suffix.lower() in EXAMPLE_SUFFIXES]
    for path in [source / name for name in SPACE_FILES] + examples:
        _check_inside_space(source, path)
    target.mkdir(parents=True, exist_ok=True)
    for name in SPACE_FILES:
        shutil.copyfile(source / name, target / name)
    if models is not None:
        if not models:
            raise SpaceError("--models: give at least one model")
        metadata_save(target / "README.md", {**meta, "models": list(models)})
    if not (metadata_load(target / "README.md") or {}).get("models"):
        raise SpaceError(f"{source / 'README.md'}: no models: list (the models the Space shows)")
    for example in examples:
        (target / "examples").mkdir(exist_ok=True)
        shutil.copyfile(example, target / "examples" / example.name)
    bundle = target / "uniq_hub"
    bundle.mkdir(exist_ok=True)
    (bundle / "__init__.py").write_text(BUNDLE_INIT)
    for module in runtime_modules():
        copy = bundle / module.relative_to(PACKAGE)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(module, copy)
    return sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())


def publish_space(
    repo_id: str,
    source: str | Path = SPACE_DIR,
    models: list[str] | None = None,
    token: str | None = None,
    private: bool = False,
    dry_run: bool = False,
    commit_message: str = "Upload the UniQ zoo demo (uniq-hub publish-space)",
) -> dict[str, Any]:
    """Stage the Space and upload it to the Space repo ``repo_id`` (created with ``sdk: gradio`` when new).
    Returns ``{"repo_id", "files", "url"}`` (``url`` is None for a dry run)."""
    with tempfile.TemporaryDirectory(prefix="uniq_space_") as tmp:
        files = stage_space(tmp, source, models)
        if dry_run:
            return {"repo_id": repo_id, "files": files, "url": None}
        api = HfApi(token=token)
        url = api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, repo_type="space", folder_path=tmp, commit_message=commit_message)
    return {"repo_id": repo_id, "files": files, "url": str(url)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo-id", required=True, help="ORG/NAME of the Space on the Hub")
    parser.add_argument("--source", default=str(SPACE_DIR), help=f"the Space folder (default {SPACE_DIR})")
    parser.add_argument("--models", nargs="+", help="Hub ids of the models to show (default: the card's models:)")
    parser.add_argument("--private", action="store_true", help="create the Space private")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or the stored login)")
    parser.add_argument("--dry-run", action="store_true", help="stage and list the files; upload nothing")


def run(args: argparse.Namespace) -> int:
    try:
        done = publish_space(args.repo_id, args.source, args.models, token=args.token, private=args.private,
                             dry_run=args.dry_run)
    except SpaceError as err:
        raise SystemExit(f"uniq-hub publish-space: {err}") from None
    print(("would upload" if args.dry_run else f"uploaded to {done['url']}") + f" ({len(done['files'])} files):")
    for name in done["files"]:
        print(f"  {name}")
    return 0
