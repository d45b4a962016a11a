"""Shared by the training tests: a tiny on-disk image dataset and how to run the trainer in a
subprocess (``python -m uniq_hub.training.train`` / ``accelerate launch``) offline."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
CLASSES = ["top", "upper", "lower", "bottom"]


def make_tiny_dataset(path: Path, train: int = 72, test: int = 32, seed: int = 0) -> Path:
    """28x28 grayscale images whose bright band's position is the class; saved with ``save_to_disk``
    under non-default column names (``img`` / ``target``), so column detection is exercised too."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
    from PIL import Image as PILImage

    rng = np.random.default_rng(seed)

    def split(n: int) -> Dataset:
        images, labels = [], []
        for i in range(n):
            c = i % len(CLASSES)
            pixels = rng.integers(0, 80, (28, 28)).astype(np.uint8)
            pixels[c * 7:(c + 1) * 7, :] += 150
            images.append(PILImage.fromarray(pixels, "L"))
            labels.append(c)
        features = Features({"img": Image(), "target": ClassLabel(names=CLASSES)})
        return Dataset.from_dict({"img": images, "target": labels}, features=features)

    DatasetDict({"train": split(train), "test": split(test)}).save_to_disk(str(path))
    return path


def subprocess_env() -> dict[str, str]:
    """The test environment (loopback Hub, temp HF_HOME) plus the repository on the path, one
    thread per process, offline, eager quantizer kernels."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    # UNIQ_COMPILE=0: a few toy steps are cheaper eager than compiling the quantizer kernels
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TQDM_DISABLE="1", UNIQ_COMPILE="0")
    return env


# Python code that makes torch (and what needs it) unimportable in a subprocess: a machine that has only the
# deployment runtime's packages (numpy, PIL, an ONNX backend) installed.
WITHOUT_TORCH = """
import sys
class _Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "transformers", "timm", "accelerate"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None
sys.meta_path.insert(0, _Absent())
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "uniq_hub.training.train", *args]


def accelerate_command(num_processes: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes), "--cpu",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()),
            "-m", "uniq_hub.training.train", *args]


@pytest.fixture(scope="module", autouse=True)
def eager_kernels():
    """Import into a test module: toy runs take a few steps, and compiling the quantizer kernels would
    cost more than it saves. ``UNIQ_COMPILE=0`` overrides the trainer's ``compile_kernels`` too."""
    from uniq_hub.model.quant_kernels import set_compile

    saved = os.environ.get("UNIQ_COMPILE")
    os.environ["UNIQ_COMPILE"] = "0"
    enabled = set_compile(False)
    yield
    os.environ.pop("UNIQ_COMPILE") if saved is None else os.environ.update(UNIQ_COMPILE=saved)
    set_compile(enabled)
