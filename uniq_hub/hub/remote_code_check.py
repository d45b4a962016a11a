"""Load a staged model folder as a user without uniq_hub does, and save what it computes.

Run by :func:`uniq_hub.hub.publish_verify.verify_folder` in a fresh interpreter, as a file, not a
module: ``python -E remote_code_check.py FOLDER IMAGE OUT``. It never imports uniq_hub (an import
of it fails here), so the model and processor can only come from the folder's own code
(``trust_remote_code=True``). ``OUT`` receives the pixel values and logits of ``IMAGE`` as
safetensors, with the modules the classes came from as metadata.
"""

from __future__ import annotations

import importlib.abc
import sys
from pathlib import Path


class HideUniqHub(importlib.abc.MetaPathFinder):
    """Make ``uniq_hub`` (installed or on the path) unimportable."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "uniq_hub" or name.startswith("uniq_hub."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden: checking the folder's own code)", name=name)
        return None


def main(folder: str, image_path: str, out: str) -> None:
    """Load ``folder`` through its code, preprocess ``image_path``, classify it, save both to ``out``."""
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


if __name__ == "__main__":
    here = str(Path(__file__).resolve().parent)  # this file's folder (uniq_hub/hub) is not a source of modules
    sys.path[:] = [p for p in sys.path if p not in ("", ".") and str(Path(p).resolve()) != here]
    sys.meta_path.insert(0, HideUniqHub())
    main(*sys.argv[1:4])
