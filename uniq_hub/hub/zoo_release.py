"""The trained zoo kept in git: release folders ``zoo/<name>/``, made from training runs, and
published in one command (``uniq-hub publish-zoo``).

A release folder is the run's best model saved in the release format (packed weights, config,
processor config, the exact ONNX graph), evaluated on the whole evaluation split, with
``eval_results.json`` (the record, the training record inside) and a card ``README.md`` that shows
those numbers. ``tests/test_zoo_release.py`` re-derives every number of every card from the folder.
It holds no code: ``publish-zoo`` adds the shipped code when it uploads.

These tools work on a source checkout's ``zoo/``: every function takes the folder of release folders
(``root``), by default :data:`RELEASE_DIR`, ``./zoo`` relative to the working directory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..catalog.cards import render_card
from ..catalog.release_folder import remove_code
from ..catalog.zoo import ZooEntry, get_entry, list_entries
from ..deploy.onnx_graph import ONNX_FILE
from ..model.atomic import atomic_dir, atomic_path, read_json, write_json_atomic, write_text_atomic
from ..model.constants import BEST_DIR, RESULTS_FILE, SUMMARY_FILE, TRAIN_CONFIG_FILE
from ..model.modeling_uniq import UniQForImageClassification
from ..model.quantize import rename_legacy
from ..training.evaluate import evaluate
from ..training.train_config import TrainConfig, resolve_config
from .hub_client import DEFAULT_TIMEOUT, check_timeout, upload
from .portability import measure_spread, write_predictions
from .publish import prepare
from .publish_plan import PublishError, check_repo_id

__all__ = ["NOT_RELEASED", "RELEASE_DIR", "release_folders", "release_records", "training_record",
           "validation_selection", "check_run_is_entry", "release_entry", "remeasure_release", "zoo_table",
           "publish_zoo"]

RELEASE_DIR = Path("zoo")  # relative to the working directory: a source checkout's root
MAX_FOLDER_BYTES = 2 * 1024 * 1024  # a release folder kept in git; larger ONNX graphs are left out
# Entries allowed a larger folder, committed once: float weights that cannot be packed.
LARGE_RELEASES = {"uniq/mobilenetv2-fashion-mnist-fp": 10 * 1024 * 1024}
# Zoo entries trained here but not released, with the reason.
NOT_RELEASED: dict[str, str] = {}
# bookkeeping, not results
_NOT_OPTIONS = {"output_dir", "run_name", "progress", "log_with", "resume", "allow_changes", "export", "overwrite"}


def release_folders(root: str | os.PathLike = RELEASE_DIR) -> dict[str, Path]:
    """``{zoo name: folder}`` of every release folder under ``root`` (``uniq/<folder name>``)."""
    root = Path(root)
    found = sorted(p for p in root.iterdir() if (p / "config.json").is_file()) if root.is_dir() else []
    return {f"uniq/{p.name}": p for p in found}


def training_record(run_dir: str | os.PathLike) -> dict[str, Any]:
    """How a run was trained: the exact command (every option that differs from its zoo entry's
    resolved recipe), distillation settings, seed and wall time (all invocations, resumes included)."""
    run_dir = Path(run_dir)
    path = run_dir / TRAIN_CONFIG_FILE
    used = rename_legacy(json.loads(path.read_text()), str(path))  # runs of older versions: older names
    base = resolve_config({"zoo": used["zoo"]}) if used.get("zoo") else TrainConfig()
    args = ["uniq-hub", "train", "--zoo", used["zoo"]] if used.get("zoo") else ["uniq-hub", "train"]
    args += ["--output-dir", used["output_dir"]]
    for f in fields(TrainConfig):
        value = used.get(f.name)
        if f.name in _NOT_OPTIONS or f.name == "zoo" or f.name not in used or value == getattr(base, f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, dict):  # per-layer overrides, in the command line's syntax
            value = ";".join(f"{pattern}={w},{a}" for pattern, (w, a) in value.items())
        args += [flag] if value is True else [f"--no-{flag[2:]}"] if value is False else [flag, str(value)]
    times = run_dir / "wall_times.txt"
    wall = sum(int(line) for line in times.read_text().split()) if times.is_file() else None
    machine = run_dir / "machine.txt"  # written by scripts/train_fashion_mnist_zoo.sh
    return {
        "command": shlex.join(args), "wall_time_s": wall, "seed": used["seed"],
        "machine": machine.read_text().strip() if machine.is_file() else None,
        "teacher": used.get("teacher"),
        "kd_temperature": used.get("kd_temperature") if used.get("teacher") else None,
        "kd_weight": used.get("kd_weight") if used.get("teacher") else None,
        "recipe": {k: used[k] for k in ("optimizer", "lr", "momentum", "weight_decay", "epochs", "max_steps",
                                        "batch_size", "warmup_epochs", "warmup_lr", "calib_batches",
                                        "label_smoothing", "random_erasing", "val_split") if k in used},
    }


def validation_selection(run_dir: str | os.PathLike, eval_split: str) -> dict[str, Any]:
    """How the run chose its checkpoint (``summary.json``'s ``selection``), refused unless it was a
    validation split: the zoo never selects on the split it reports."""
    summary = Path(run_dir) / SUMMARY_FILE
    selection = json.loads(summary.read_text()).get("selection") if summary.is_file() else None
    if not selection or selection.get("split") == eval_split:
        raise ValueError(f"the run {run_dir} did not select its model on a validation split ({SUMMARY_FILE} records "
                         f"{selection!r}); the zoo never selects on the `{eval_split}` split it reports")
    return selection


def _save_release(source: Path, out: Path, limit: int) -> None:
    """A trained model saved by this code in the release format (packed codes, the steps the forward
    uses, this version's safetensors metadata; no code) into the empty folder ``out``, with its exact
    ONNX graph unless the graph (about a byte per weight) would take the folder over ``limit`` bytes."""
    from ..deploy.onnx_export import export_onnx

    model = UniQForImageClassification.from_pretrained(source)
    model.save_pretrained(out)
    remove_code(out)
    if _folder_bytes(out) + sum(p.numel() for p in model.parameters()) <= limit:
        export_onnx(model, out / ONNX_FILE)


def check_run_is_entry(entry: ZooEntry, run_dir: str | os.PathLike) -> None:
    """Refuse a run that is not ``entry``'s: its recorded zoo name, architecture and bits must be the entry's."""
    path = Path(run_dir) / TRAIN_CONFIG_FILE
    used = rename_legacy(read_json(path, "the run's resolved options"), str(path))
    recorded = {"zoo": used.get("zoo"), "arch": used.get("arch"), "w_bits": used.get("w_bits"),
                "a_bits": used.get("a_bits")}
    expected = {"zoo": entry.name, "arch": entry.arch, "w_bits": entry.w_bits, "a_bits": entry.a_bits}
    wrong = {k: v for k, v in recorded.items() if v != expected[k]}
    if wrong:
        raise ValueError(f"{path}: the run is not {entry.name}: it records "
                         + ", ".join(f"{k}={v!r} (expected {expected[k]!r})" for k, v in wrong.items())
                         + f"; zoo/{entry.short_name} is left as it was")


def release_entry(entry: ZooEntry | str, run_dir: str | os.PathLike, root: str | os.PathLike = RELEASE_DIR,
                  num_workers: int = 2) -> dict[str, Any]:
    """Save the run's best model (``best/``, latent weights; saving packs them) as ``root/<name>``
    with its exact ONNX graph (where it fits the folder's size limit), evaluate it on the entry's whole
    eval split (PyTorch and every ONNX runtime), write ``eval_results.json`` and the card; returns the
    record. Every check (the run is the entry's, it selected on a validation split, the folder fits)
    comes first, and the folder is built aside, then put in place in one step: a refused or failed
    release leaves ``root/<name>`` as it was."""
    entry = get_entry(entry) if isinstance(entry, str) else entry
    run_dir = Path(run_dir)
    check_run_is_entry(entry, run_dir)
    selection = validation_selection(run_dir, entry.dataset.eval_split)
    training = training_record(run_dir)
    out = Path(root) / entry.short_name
    limit = LARGE_RELEASES.get(entry.name, MAX_FOLDER_BYTES)
    with atomic_dir(out) as staged:
        _save_release(run_dir / BEST_DIR, staged, limit)
        if _folder_bytes(staged) > limit and (staged / ONNX_FILE).is_file():
            shutil.rmtree((staged / ONNX_FILE).parent)
        if _folder_bytes(staged) > limit:
            raise ValueError(f"{entry.name}: the release folder takes more than {limit} bytes without its "
                             f"ONNX graph; it cannot be kept in git ({out} is left as it was)")
        record = _measure(staged, entry, num_workers)
        record.update(training=training, selection=selection)
        if (staged / ONNX_FILE).is_file():
            record["onnx"] = _onnx_results(staged, entry, num_workers)
        _write_record(staged, entry, record)
    return record


def _measure(out: Path, entry: ZooEntry, num_workers: int) -> dict[str, Any]:
    """The release record's numbers: top-1 / top-5 on the whole eval split, the machine, the per-image
    predictions (written to ``eval_predictions.json``) and their spread across instruction sets."""
    ds = entry.dataset
    command = f"uniq-hub evaluate zoo/{entry.short_name} --dataset {ds.hf_name} --split {ds.eval_split}"
    record = evaluate(str(out), ds.hf_name, ds.eval_split, num_workers=num_workers, command=command,
                      predictions=True)
    predictions = record.pop("predictions")
    record.update(model_id=entry.name, zoo_name=entry.name,
                  portability=measure_spread(out, ds.hf_name, ds.eval_split, predictions))
    write_predictions(out, record, predictions)
    return record


def remeasure_release(entry: ZooEntry | str, root: str | os.PathLike = RELEASE_DIR,
                      num_workers: int = 2) -> dict[str, Any]:
    """Measure a release folder's numbers again on this machine (PyTorch, its predictions and their
    spread, the ONNX runtimes), keeping its training and selection records; rewrites the card."""
    entry = get_entry(entry) if isinstance(entry, str) else entry
    out = Path(root) / entry.short_name
    old = json.loads((out / RESULTS_FILE).read_text())
    record = {**_measure(out, entry, num_workers), **{k: old[k] for k in ("training", "selection") if k in old}}
    if (out / ONNX_FILE).is_file():
        record["onnx"] = _onnx_results(out, entry, num_workers)
    _write_record(out, entry, record)
    return record


def resave_release(folder: str | os.PathLike, code: bool = False) -> list[str]:
    """Re-save a release folder's config with this version (current key names), keeping its tensors,
    ONNX graph, card and numbers. The re-saved weights must hold the same tensors (names, dtypes,
    bytes) as before, else nothing is written. ``code``: also write the library's code files (a
    model folder used with ``trust_remote_code`` locally; ``uniq-hub migrate``); without it the
    folder keeps no code (a zoo release). Code files this version does not write are removed.
    Returns the names of the files that changed or were removed."""
    folder = Path(folder)
    model = UniQForImageClassification.from_pretrained(folder)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        if not code:
            remove_code(tmp)
        saved = {p.name: p for p in Path(tmp).iterdir() if p.is_file()}
        for name in saved:
            if name.endswith(".safetensors"):
                _check_same_tensors(folder / name, saved[name])
        changed = [name for name, new in sorted(saved.items())
                   if not (folder / name).is_file() or (folder / name).read_bytes() != new.read_bytes()]
        for name in changed:
            with atomic_path(folder / name) as tmp_path:
                shutil.copyfile(saved[name], tmp_path)
    stale = [p for p in sorted(folder.glob("*.py")) if p.name not in saved]  # code a release does not keep
    for path in stale:
        path.unlink()
    return changed + [p.name for p in stale]


def _check_same_tensors(old: Path, new: Path) -> None:
    def raw(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(-1).view(torch.uint8)

    with safe_open(os.fspath(old), "pt") as a, safe_open(os.fspath(new), "pt") as b:
        if sorted(a.keys()) != sorted(b.keys()):
            raise ValueError(f"{old}: re-saving changes the tensor names ({sorted(set(a.keys()) ^ set(b.keys()))}); "
                             "the release is left as it was")
        for key in a.keys():
            x, y = a.get_tensor(key), b.get_tensor(key)
            if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(raw(x), raw(y)):
                raise ValueError(f"{old}: re-saving changes tensor {key!r}; the release is left as it was")


def refresh_card(
    entry: ZooEntry | str, run_dir: str | os.PathLike, root: str | os.PathLike = RELEASE_DIR
) -> dict[str, Any]:
    """Rewrite a release folder's training record and card from its run, keeping the measured numbers."""
    entry = get_entry(entry) if isinstance(entry, str) else entry
    out = Path(root) / entry.short_name
    record = json.loads((out / RESULTS_FILE).read_text())
    record["training"] = training_record(run_dir)
    _write_record(out, entry, record)
    return record


def _write_record(out: Path, entry: ZooEntry, record: dict[str, Any]) -> None:
    """A release folder's ``eval_results.json`` and the card that shows it."""
    write_json_atomic(out / RESULTS_FILE, record)
    write_text_atomic(out / "README.md", render_card(entry, record, repo_id=entry.name, folder=out))


def release_records(root: str | os.PathLike = RELEASE_DIR) -> dict[str, dict[str, Any]]:
    """``{zoo name: eval_results.json}`` of every release folder, plus ``weights_bytes`` (its
    ``model.safetensors``)."""
    records = {}
    for name, folder in release_folders(root).items():
        record = json.loads((folder / RESULTS_FILE).read_text())
        records[name] = {**record, "weights_bytes": (folder / "model.safetensors").stat().st_size}
    return records


def _goal(entry: ZooEntry, top1: float, fp_top1: float | None) -> str:
    if entry.goal is None:
        return "-"
    if entry.full_precision:
        target, text = entry.goal, f">= {entry.goal:g}"
    elif fp_top1 is None:
        return f">= FP - {entry.goal:g}: no FP entry"
    else:
        target, text = fp_top1 - entry.goal, f">= FP - {entry.goal:g}"
    return f"{text}: {'met' if top1 >= target - 1e-9 else 'missed'} ({top1 - target:+.2f})"


def zoo_table(root: str | os.PathLike = RELEASE_DIR) -> str:
    """The README's zoo table, from the committed release folders: test top-1 / top-5 (PyTorch and the
    ONNX runtimes), the validation top-1 that chose the checkpoint, size, goal, folder."""
    records = release_records(root)
    lines = ["| entry | test top-1 / top-5 (%) | ONNX Runtime / OpenVINO top-1 | chosen on (val top-1) | "
             "`model.safetensors` | goal | folder |", "|---|---|---|---|---|---|---|"]
    order = {e.name: i for i, e in enumerate(list_entries(results_dirs=[]))}
    for name, record in sorted(records.items(), key=lambda item: order.get(item[0], len(order))):
        entry = get_entry(name, results_dirs=[])
        fp = records.get(name.rsplit("-", 1)[0] + "-fp")
        onnx = record.get("onnx")
        runtimes = " / ".join(f"{onnx[r]['top1']:.2f}" for r in ("onnxruntime", "openvino")) if onnx else "-"
        selection = record.get("selection") or {}
        chosen = f"{selection.get('num_examples', '?')} held-out train images ({selection['top1']:.2f})" \
            if selection.get("top1") is not None else "-"
        lines.append(
            f"| `{name}` | {record['top1']:.2f} / {record['top5']:.2f} | {runtimes} | {chosen} | "
            f"{record['weights_bytes'] / 1e6:.3f} MB | {_goal(entry, record['top1'], fp and fp['top1'])} | "
            f"[zoo/{entry.short_name}](zoo/{entry.short_name}/) |")
    return "\n".join(lines) + "\n"


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _onnx_results(folder: Path, entry: ZooEntry, num_workers: int) -> dict[str, Any]:
    """Top-1 / top-5 of ``folder/onnx/model.onnx`` per ONNX runtime."""
    ds = entry.dataset
    results = {}
    for runtime in ("onnxruntime", "openvino"):
        record = evaluate(str(folder), ds.hf_name, ds.eval_split, num_workers=num_workers, runtime=runtime)
        results[runtime] = {k: record[k] for k in ("top1", "top5", "num_examples")}
    return results


def publish_zoo(root: str | os.PathLike = RELEASE_DIR, only: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
    """Upload every release folder under ``root`` to its ``uniq/<name>`` repo (``publish``'s
    checks apply to each, and every entry is verified before any is uploaded); ``kwargs``:
    ``dry_run`` and :func:`uniq_hub.hub.hub_client.upload`'s options. Returns
    ``{repo id: commit info or plan}``."""
    folders = release_folders(root)
    if only:
        unknown = sorted(set(only) - set(folders))
        if unknown:
            raise ValueError(f"no release folder for {unknown} under {root}; there are {sorted(folders)}")
        folders = {k: v for k, v in folders.items() if k in only}
    if not folders:
        raise ValueError(f"no release folder (a folder with config.json) under {root}")
    # Every repo id and every folder is checked before anything is uploaded: all or nothing.
    dry_run = kwargs.pop("dry_run", False)
    for repo_id in folders:
        check_repo_id(repo_id)
    check_timeout(kwargs.get("timeout", DEFAULT_TIMEOUT))
    with contextlib.ExitStack() as stack:
        prepared = {}
        for repo_id, folder in folders.items():
            try:
                prepared[repo_id] = stack.enter_context(prepare(folder, repo_id))
            except PublishError as err:
                raise PublishError(f"{repo_id}: {err} (nothing was uploaded)") from None
        if dry_run:
            return {repo_id: plan for repo_id, (plan, _) in prepared.items()}
        return {repo_id: upload(plan, staged, **kwargs) for repo_id, (plan, staged) in prepared.items()}


# ---------------------------------------------------------------------------------------------
# `uniq-hub publish-zoo`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default=str(RELEASE_DIR), help="folder of release folders (default: ./zoo)")
    parser.add_argument("--only", action="append", metavar="NAME", help="only this entry (repeatable), e.g. "
                        "uniq/resnet20-fashion-mnist-w2a2")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or the stored login)")
    parser.add_argument("--dry-run", action="store_true", help="check every folder, print the plans, upload nothing")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds each Hub request may take (default {DEFAULT_TIMEOUT:g})")


def run(args: argparse.Namespace) -> int:
    try:
        done = publish_zoo(args.root, args.only, token=args.token, dry_run=args.dry_run, timeout=args.timeout)
    except ValueError as err:
        raise SystemExit(f"uniq-hub publish-zoo: {err}") from None
    for repo_id, out in done.items():
        print(f"{repo_id}: " + (f"would upload\n{out.describe()}" if args.dry_run else f"published {out.commit_url}"))
    return 0
