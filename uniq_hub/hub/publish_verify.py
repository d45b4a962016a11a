"""The verification ``uniq-hub publish`` runs on the staged copy of a planned upload (:func:`verify_folder`).

The model loads with ``from_pretrained`` (every loading check of ``modeling_uniq`` / ``packing``),
its weights are finite, and a forward pass on the processor's output of a probe image gives finite
logits; then a second Python process in which uniq_hub cannot be imported
(:mod:`uniq_hub.hub.remote_code_check`) loads the same copy through its own code
(``trust_remote_code=True``), as users without uniq_hub will, and must produce identical pixel
values and logits. An ``onnx/model.onnx`` is checked by ``onnx_export.verify_onnx`` (:func:`verify_onnx`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from ..model.image_processing_uniq import UniQImageProcessor
from ..model.modeling_uniq import UniQForImageClassification
from .publish_plan import RESULTS_FILES, PublishError, read_json

__all__ = ["REMOTE_CODE_SCRIPT", "REMOTE_CODE_TIMEOUT", "Verification", "probe_image", "verify_folder", "verify_onnx"]

REMOTE_CODE_TIMEOUT = 600.0  # seconds, the remote-code load in a subprocess
REMOTE_CODE_SCRIPT = Path(__file__).resolve().parent / "remote_code_check.py"  # run as a file: it never imports us
# Files that change nothing the verification computes (a new card or results reuse a verification).
_NOT_COMPUTED = ("README.md", *RESULTS_FILES, "onnx/model.onnx")


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
        [sys.executable, "-E", str(REMOTE_CODE_SCRIPT), str(folder), str(image), str(out)],
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
    config = read_json(folder / "config.json")
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


def verify_onnx(folder: Path) -> None:
    """``onnx/model.onnx``, when present, is checked by ``onnx_export.verify_onnx``."""
    if not (folder / "onnx" / "model.onnx").is_file():
        return
    from ..deploy import onnx_export  # needs the optional onnx package

    try:
        onnx_export.verify_onnx(folder)
    except onnx_export.OnnxExportError as err:
        raise PublishError(str(err)) from err
