"""Training options that cannot mean what they say are refused (issue 20): overrides that match no
layer, a teacher with other classes, a --resume with other options or data (refused, listing the
differences, writing nothing; --allow-changes for the safe ones, recorded in the run's history),
arguments without effect; and a run keeps its work when the ONNX verification fails."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tiny_models import onnx_model
from train_helpers import CLASSES, eager_kernels, make_tiny_dataset  # noqa: F401
from uniq_hub import UniQForImageClassification
from uniq_hub.catalog.release_folder import ExportIncomplete
from uniq_hub.cli import main
from uniq_hub.deploy import onnx_backends
from uniq_hub.deploy.onnx_graph import ONNX_FILE
from uniq_hub.model.constants import EXPORT_DIR, SUMMARY_FILE, TRAIN_CONFIG_FILE
from uniq_hub.training.distill import load_teacher
from uniq_hub.training.run_record import HISTORY_FILE, ResumeError
from uniq_hub.training.train import train
from uniq_hub.training.train_config import load_config_file, resolve_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny", train=40, test=16)


def _cfg(tiny: Path, out: Path, **options):
    base = {"dataset": str(tiny), "bits": 32, "epochs": 1, "batch_size": 8, "num_workers": 0, "val_split": 8,
            "save_every": 0, "log_with": "none", "progress": False, "cpu": True, "dynamics_every": 0,
            "export": False, "output_dir": str(out)}
    return resolve_config({**base, **options})


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overrides_that_match_no_layer_are_refused(tiny, tmp_path):
    for overrides, match in (("nolayer.*=4,4", r"\['nolayer\.\*'\] match no layer of PreActResNet"),
                             ("[=4,4", r"\['\['\] match no layer"),
                             ("model.layer1.*=4,4", r"no 'model\.' prefix\); its quantizable layers are: stem")):
        with pytest.raises(ValueError, match=match):
            train(_cfg(tiny, tmp_path / "run", bits=2, overrides=overrides))
        assert not (tmp_path / "run").exists()  # refused before anything is written
    train(_cfg(tiny, tmp_path / "run", bits=2, overrides="layer1.*=4,4", max_steps=1))  # one that matches trains


def test_teacher_with_other_classes_is_refused_unless_mapped_by_name(tiny, tmp_path):
    teacher = onnx_model()  # CLASSES, the dataset's order
    teacher.config.id2label = dict(enumerate(reversed(CLASSES)))
    teacher.config.label2id = {v: k for k, v in teacher.config.id2label.items()}
    teacher.save_pretrained(tmp_path / "teacher")
    ours = dict(enumerate(CLASSES))
    with pytest.raises(ValueError, match=r"its id2label differs from the dataset's: the same classes in another "
                                         r"order; .*--teacher-labels by-name"):
        load_teacher(str(tmp_path / "teacher"), ours)
    with pytest.raises(ValueError, match=r"other classes .*the data's not in the teacher: \['a', 'b'"):
        load_teacher(str(tmp_path / "teacher"), {0: "a", 1: "b", 2: "c", 3: "d"})
    mapped = load_teacher(str(tmp_path / "teacher"), ours, "by-name")
    plain = UniQForImageClassification.from_pretrained(tmp_path / "teacher").eval()
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(mapped(x).logits, plain(x).logits.flip(-1))  # column i is the teacher's CLASSES[i]
    with pytest.raises(ValueError, match="id2label differs"):
        train(_cfg(tiny, tmp_path / "kd", teacher=str(tmp_path / "teacher")))


def test_resume_with_other_options_or_data_is_refused_and_writes_nothing(tiny, tmp_path):
    run = tmp_path / "run"
    train(_cfg(tiny, run, lr=0.01))
    before = _snapshot(run)
    with pytest.raises(ResumeError, match=r"the options differ from the run's recorded ones .*lr: 0\.01 -> 0\.02; "
                                          r".*w_bits: 32 -> 2\. .*cannot change in a resumed run"):
        train(_cfg(tiny, run, lr=0.02, bits=2, resume="latest"))
    with pytest.raises(ResumeError, match=r"epochs: 1 -> 2\. --allow-changes accepts \['epochs'\]"):
        train(_cfg(tiny, run, lr=0.01, epochs=2, resume="latest"))
    assert _snapshot(run) == before  # a failed resume changes nothing on disk
    # the CLI says the same in one line, and exits non-zero
    with pytest.raises(SystemExit, match=r"uniq-hub train: --resume .*lr: 0\.01 -> 0\.03"):
        main(["train", "--dataset", str(tiny), "--bits", "32", "--epochs", "1", "--batch-size", "8",
              "--num-workers", "0", "--val-split", "8", "--save-every", "0", "--log-with", "none", "--no-progress",
              "--cpu", "--dynamics-every", "0", "--no-export", "--output-dir", str(run), "--lr", "0.03", "--resume"])
    assert _snapshot(run) == before

    summary = train(_cfg(tiny, run, lr=0.01, epochs=2, resume="latest", allow_changes=True))
    assert summary["epochs"] == 2
    assert json.loads((run / TRAIN_CONFIG_FILE).read_text())["epochs"] == 2
    history = json.loads((run / HISTORY_FILE).read_text())["invocations"]
    assert [e["kind"] for e in history] == ["start", "resume"]
    assert history[0]["config"]["epochs"] == 1 and history[1]["changes"] == {"epochs": [1, 2]}

    bigger = make_tiny_dataset(tmp_path / "bigger", train=48, test=16)  # same options, other data
    with pytest.raises(ResumeError, match=r"the data differ from the run's \(num_train: 32 -> 40\)"):
        train(_cfg(bigger, run, lr=0.01, epochs=2, resume="latest", dataset=str(tiny)) if False else
              _resume_on(bigger, tiny, run))


def _resume_on(data: Path, recorded: Path, run: Path):
    """Resume ``run`` (trained on ``recorded``) with the same options, the dataset path swapped underneath."""
    config = json.loads((run / TRAIN_CONFIG_FILE).read_text())
    config["dataset"] = str(data)
    (run / TRAIN_CONFIG_FILE).write_text(json.dumps(config))  # as if the files at the same path had changed
    return train(_cfg(data, run, lr=0.01, epochs=2, resume="latest"))


def test_arguments_without_effect_are_refused(tiny, tmp_path):
    for options, match in (({"max_steps": -1}, "'max_steps' must be >= 1"),
                           ({"warmup_epochs": -5}, "'warmup_epochs' must be a finite number >= 0"),
                           ({"image_size": 0}, "'image_size' must be in 1..2048"),
                           ({"allow_changes": True}, "'allow_changes' applies to --resume only")):
        with pytest.raises(ValueError, match=match):
            _cfg(tiny, tmp_path / "x", **options)
    (tmp_path / "c.json").write_text(json.dumps({"bits": True}))
    with pytest.raises(ValueError, match="option 'w_bits' expects int, got True"):
        resolve_config(config_file=tmp_path / "c.json")
    assert load_config_file(tmp_path / "c.json") == {"bits": True}


def test_a_failed_onnx_verification_keeps_the_run(tiny, tmp_path, monkeypatch):
    """The checkpoint, best/ and the PyTorch release come first; the graph's failure is reported
    (with the flip diagnostic) and the run exits non-zero, its work kept."""
    monkeypatch.setitem(onnx_backends.EXACT_BOUNDS, "median_rel_max_diff", -1.0)  # no graph can pass
    monkeypatch.setitem(onnx_backends.EXACT_BOUNDS, "argmax_agreement", 1.1)
    run = tmp_path / "run"
    with pytest.raises(ExportIncomplete, match=r"the PyTorch release is complete, but the ONNX export was left out: "
                                               r".*does not match the PyTorch model.*(flip diagnostic|no quantizer)"):
        train(_cfg(tiny, run, bits=2, export=True, max_steps=2, calib_batches=1))
    export = run / EXPORT_DIR
    assert (export / "model.safetensors").is_file() and not (export / ONNX_FILE).exists()
    UniQForImageClassification.from_pretrained(export)
    summary = json.loads((run / SUMMARY_FILE).read_text())
    assert "ONNX export was left out" in summary["export_error"] and summary["steps"] == 2
    assert any((run / "checkpoints").iterdir()) and (run / "best" / "config.json").is_file()


def test_one_active_run_per_output_directory_and_a_killed_one_does_not_block(tiny, tmp_path):
    """A run still going holds its directory: a second train (or --resume) there is refused, naming the
    process, and writes nothing; once that process is gone (killed: no clean-up), the run can resume."""
    import subprocess
    import sys

    from uniq_hub.training.checkpoint import RunDirectoryError

    out = tmp_path / "run"
    train(_cfg(tiny, out, save_every=2))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom uniq_hub.training.checkpoint import hold_run_dir\n"
         f"with hold_run_dir({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(120)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _snapshot(out)
        for options in ({"resume": "latest"}, {"overwrite": True}):
            with pytest.raises(RunDirectoryError, match=rf"{out} is in use by a run still going \(pid {holder.pid} "):
                train(_cfg(tiny, out, save_every=2, **options))
        assert _snapshot(out) == before
    finally:
        holder.kill()
        holder.wait()
    summary = train(_cfg(tiny, out, save_every=2, resume="latest"))  # the killed holder's lock is gone
    assert summary["run_dir"] == str(out)


def _dataset(path: Path, train_labels, test_labels, names=None, test_names=None, strings=False) -> Path:
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
    from PIL import Image as PILImage

    def split(labels, split_names):
        images = [PILImage.fromarray(np.full((28, 28), 40 * (i % 5), np.uint8), "L") for i in range(len(labels))]
        label = Value("string") if strings else ClassLabel(names=split_names)
        return Dataset.from_dict({"image": images, "label": labels}, features=Features({"image": Image(),
                                                                                       "label": label}))

    declared = names
    if names is not None and not strings:  # datasets refuses out-of-range ids: save with room, then declare `names`
        names = test_names = [*names, *(f"x{i}" for i in range(len(names), 10))]
    DatasetDict({"train": split(train_labels, names), "test": split(test_labels, test_names or names)}
                ).save_to_disk(str(path))
    for info in path.glob("*/dataset_info.json") if declared is not None and not strings else ():
        data = json.loads(info.read_text())
        data["features"]["label"]["names"] = declared
        info.write_text(json.dumps(data))
    return path


def test_datasets_are_checked_before_the_first_step(tmp_path):
    """Labels outside the ClassLabel names, and an evaluation split whose (string) classes differ from the
    training split's, are refused before any step, naming the values and classes; no run is written."""
    names = ["a", "b", "c"]
    cases = (
        (_dataset(tmp_path / "ids", [0, 1, 2, 6, 9, 1] * 4, [0, 1, 2] * 3, names),
         r"split 'train': labels \[6, 9\] are not ids of its 3 class names \['a', 'b', 'c'\] \(0..2\)"),
        (_dataset(tmp_path / "test-ids", [0, 1, 2] * 8, [0, 1, 7], names),
         r"split 'test': labels \[7\] are not ids of its 3 class names"),
        (_dataset(tmp_path / "strings", ["shirt", "trouser", "dress"] * 8, ["shirt", "trousr", "dress"],
                  strings=True),
         r"split 'test' has classes the 'train' split does not have: \['trousr'\] \(and lacks \['trouser'\]\)"),
    )
    for data, message in cases:
        out = tmp_path / f"run-{data.name}"
        cfg = resolve_config({"dataset": str(data), "bits": 32, "epochs": 1, "batch_size": 4, "num_workers": 0,
                              "val_split": 3, "save_every": 0, "log_with": "none", "progress": False,
                              "cpu": True, "dynamics_every": 0, "export": False, "output_dir": str(out)})
        with pytest.raises(ValueError, match=message):
            train(cfg)
        assert not (out / "checkpoints").exists() and not (out / "log.jsonl").exists()
