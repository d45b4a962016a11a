"""Training runs under faults: existing run directories, kills at any instant of a checkpoint save,
corrupt checkpoints, a full disk, a non-finite loss, degenerate datasets; and the acceptance test:
a short run SIGKILLed at random points (re-saves included) resumes to the weights of an
uninterrupted run."""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from train_helpers import eager_kernels, make_tiny_dataset  # noqa: F401
from uniq_hub import QuantConfig, calibrate, quantize_
from uniq_hub.training import checkpoint
from uniq_hub.training.checkpoint import (
    Checkpointer,
    CheckpointWriteError,
    RunCheckpointError,
    RunDirectoryError,
    TrainerState,
    check_run_dir,
    latest_checkpoint,
    list_checkpoints,
    read_trainer_state,
    verify_checkpoint,
)
from uniq_hub.training.recipes import build_optimizer, build_scheduler
from uniq_hub.training.run_data import load_data
from uniq_hub.training.train import main as train_main
from uniq_hub.training.train import train
from uniq_hub.training.train_config import resolve_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny", train=36, test=16)  # 32 after the hold-out


def _checkpointer(run_dir: Path, keep: int = 2):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
    quantize_(model, QuantConfig(2, 2))
    calibrate(model, [torch.randn(4, 1, 8, 8)], 1)
    accelerator = Accelerator(cpu=True)
    optimizer = build_optimizer(model, "sgd", 0.1, 1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = build_scheduler(optimizer, total_steps=20, warmup_steps=2)
    return Checkpointer(accelerator, run_dir, keep=keep), model, scheduler


# ---------------------------------------------------------------------------------------------
# Run directories


def test_an_existing_run_directory_is_refused_without_resume_or_overwrite(tmp_path, tiny):
    run = tmp_path / "run"
    check_run_dir(run, resume=False, overwrite=False)  # a new directory: fine
    run.mkdir()
    check_run_dir(run, resume=False, overwrite=False)  # an empty one too
    (run / "train_config.json").write_text("{}")
    (run / "checkpoints").mkdir()
    with pytest.raises(RunDirectoryError, match=r"already holds a run \(train_config.json, checkpoints\).*--resume"):
        check_run_dir(run, resume=False, overwrite=False)
    check_run_dir(run, resume=True, overwrite=False)
    check_run_dir(run, resume=False, overwrite=True)
    with pytest.raises(ValueError, match="exclude each other"):
        check_run_dir(run, resume=True, overwrite=True)
    # through the command line: a clear message, a non-zero exit, nothing touched
    args = ["--dataset", str(tiny), "--bits", "32", "--epochs", "1", "--batch-size", "8", "--num-workers", "0",
            "--output-dir", str(run), "--no-progress", "--log-with", "none", "--cpu"]
    with pytest.raises(SystemExit) as info:
        train_main(args)
    assert "already holds a run" in str(info.value.code) and str(run) in str(info.value.code)
    assert (run / "train_config.json").read_text() == "{}"


# ---------------------------------------------------------------------------------------------
# Checkpoint saving: kills at every rename / delete, corruption, a full disk


class _Killed(BaseException):
    """Stands for SIGKILL inside one process: nothing after it runs (not even ``except Exception``)."""


@pytest.mark.parametrize("resave", [False, True])
def test_a_kill_at_any_rename_or_delete_leaves_a_complete_newest_checkpoint(tmp_path, monkeypatch, resave):
    real_replace = os.replace
    calls = {"n": 0, "die_at": None}

    def replace(src, dst):
        calls["n"] += 1
        if calls["n"] == calls["die_at"]:
            raise _Killed
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", replace)
    die_at = 1
    while True:
        run = tmp_path / f"run{die_at}"
        ckpt, _, scheduler = _checkpointer(run)
        ckpt.save(TrainerState(global_step=2, epoch=0), scheduler)
        ckpt.save(TrainerState(global_step=4, epoch=0), scheduler)
        calls.update(n=0, die_at=die_at)
        target = TrainerState(global_step=4, epoch=1) if resave else TrainerState(global_step=6, epoch=1)
        try:
            ckpt.save(target, scheduler)
            finished = True
        except _Killed:
            finished = False
        calls["die_at"] = None
        newest = latest_checkpoint(run)
        state = verify_checkpoint(newest)  # complete and intact, whatever the instant
        # the newest complete copy: the new one once its state file is in place, else the one before
        assert (state.global_step, state.epoch) in {(4, 0), (target.global_step, 1)}
        if finished:
            assert (state.global_step, state.epoch) == (target.global_step, 1)
            assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [p.name for p in list_checkpoints(run)]
            break
        # the next save after the kill works and cleans up
        ckpt.save(TrainerState(global_step=8, epoch=2), scheduler)
        assert [read_trainer_state(p).global_step for p in list_checkpoints(run)][-1] == 8
        leftovers = [p.name for p in (run / "checkpoints").iterdir() if p not in list_checkpoints(run)]
        assert leftovers == []  # no stale or half-written copies after the next save
        die_at += 1
    assert die_at >= 3  # the kill hit the state file, the publishing rename(s), and then nothing


def test_a_corrupt_latest_checkpoint_falls_back_with_a_warning(tmp_path, caplog):
    ckpt, model, scheduler = _checkpointer(tmp_path / "run", keep=3)
    for step in (2, 4, 6):
        ckpt.save(TrainerState(global_step=step), scheduler)
    newest = latest_checkpoint(tmp_path / "run")
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated
    with caplog.at_level(logging.WARNING, logger="uniq_hub.training.checkpoint"):
        chosen = ckpt.resolve("latest")
    assert chosen.name == "step-00000004"
    assert str(weights) in caplog.text and "truncated" in caplog.text
    middle = chosen / "optimizer.bin"
    data = bytearray(middle.read_bytes())
    data[len(data) // 2] ^= 1  # one flipped bit, same size
    middle.write_bytes(bytes(data))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="uniq_hub.training.checkpoint"):
        assert ckpt.resolve(str(tmp_path / "run")).name == "step-00000002"
    assert f"{middle}: SHA-256 mismatch" in caplog.text
    with pytest.raises(RunCheckpointError, match=f"{middle}: SHA-256 mismatch"):
        ckpt.resolve(str(chosen))  # a checkpoint named explicitly: no fallback
    state = ckpt.load(ckpt.resolve("latest"), scheduler)  # the good one restores
    assert state.global_step == 2
    (tmp_path / "run" / "checkpoints" / "step-00000002" / "trainer_state.json").write_text("{broken")
    with pytest.raises(RunCheckpointError, match="every checkpoint under .* is corrupt"):
        ckpt.resolve("latest")


@pytest.mark.parametrize("failing", ["optimizer.bin", "enospc"])
def test_a_full_disk_names_the_path_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failing):
    ckpt, _, scheduler = _checkpointer(tmp_path / "run")
    previous = ckpt.save(TrainerState(global_step=2), scheduler)
    real_save = ckpt.accelerator.save_state

    def full_disk(output_dir, **kw):
        if failing == "enospc":
            Path(output_dir, "model.safetensors").write_bytes(b"partial")
            raise OSError(28, "No space left on device", str(Path(output_dir, "model.safetensors")))
        os.symlink("/dev/full", Path(output_dir, failing))  # torch.save really writes to a full device
        return real_save(output_dir, **kw)

    monkeypatch.setattr(ckpt.accelerator, "save_state", full_disk)
    with pytest.raises(CheckpointWriteError) as info:
        ckpt.save(TrainerState(global_step=4), scheduler)
    message = str(info.value)
    assert str(tmp_path / "run" / "checkpoints" / ".tmp-step-00000004") in message
    assert "no space left on device" in message and f"the previous checkpoint {previous} is intact" in message
    assert list_checkpoints(tmp_path / "run") == [previous] and verify_checkpoint(previous).global_step == 2
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [previous.name]


# ---------------------------------------------------------------------------------------------
# Non-finite loss, degenerate datasets


def _args(tiny: Path, run: Path, *extra: str) -> list[str]:
    return ["--dataset", str(tiny), "--bits", "32", "--epochs", "1", "--batch-size", "8", "--num-workers", "0",
            "--output-dir", str(run), "--no-progress", "--log-with", "none", "--cpu", "--log-every", "50",
            "--save-every", "0", "--dynamics-every", "0", *extra]


def test_a_non_finite_loss_stops_with_an_error_and_exports_nothing(tiny, tmp_path):
    run = tmp_path / "nan"
    with pytest.raises(SystemExit) as info:
        train_main(_args(tiny, run, "--lr", "1e30", "--momentum", "0"))
    message = str(info.value.code)
    assert "the training loss became" in message and "nothing was exported" in message and str(run) in message
    assert not (run / "export").exists() and not (run / "best").exists() and not (run / "checkpoints").exists()
    with pytest.raises(ValueError, match="option 'lr' must be a finite number >= 0, got nan"):
        resolve_config({"dataset": str(tiny), "bits": 32, "lr": "nan", "output_dir": str(tmp_path / "x")})


def _imagefolder(root: Path, counts: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8), "L").save(root / name / f"{i}.png")
    return root


def test_degenerate_datasets_are_refused_naming_the_dataset_or_file(tmp_path):
    def config(source: Path, batch: int = 4, **extra):
        return resolve_config({"dataset": str(source), "bits": 32, "batch_size": batch, "epochs": 1,
                               "num_workers": 0, "output_dir": str(tmp_path / "run" / source.name),
                               "log_with": "none", "progress": False, "cpu": True, **extra})

    one = _imagefolder(tmp_path / "one", {"cat": 6})
    with pytest.raises(ValueError, match=f"dataset '{one}' split 'train' has a single class \\['cat'\\]"):
        load_data(config(one))
    few = _imagefolder(tmp_path / "few", {"cat": 2, "dog": 1})
    with pytest.raises(ValueError, match=f"dataset '{few}' split 'train' has 3 examples: too few to hold out a "
                                         "validation split .pass --val-split N, or 0"):
        load_data(config(few))
    with pytest.raises(ValueError, match=f"dataset '{few}' split 'train' has 3 examples, fewer than one batch of 4"):
        train(config(few, val_split=0))
    empty = _imagefolder(tmp_path / "empty", {"train/cat": 0, "train/dog": 0, "test/cat": 1, "test/dog": 1})
    with pytest.raises(ValueError, match=f"dataset '{empty}' split 'train' has no examples .no files under"):
        load_data(config(empty))
    corrupt = _imagefolder(tmp_path / "corrupt", {"cat": 4, "dog": 4})
    (corrupt / "dog" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ValueError, match=f"{corrupt / 'dog' / '3.png'} .dataset '{corrupt}'.: not a readable image"):
        train(config(corrupt, val_split=0))


# ---------------------------------------------------------------------------------------------
# Acceptance: SIGKILL at random points, resume, same final weights


# Children come from a fork server, not a fork of pytest's process: after any earlier test ran autograd,
# a forked child fails ("Unable to handle autograd's threading in combination with fork-based
# multiprocessing"). The server imports the trainer once, so each child still starts in a fork's time.
_FORKSERVER = multiprocessing.get_context("forkserver")
_FORKSERVER.set_forkserver_preload(["uniq_hub.training.train"])


def _child(args: list[str], kill_at: tuple[str, int] | None) -> None:
    """One training process (forked from the fork server: no interpreter start-up). ``kill_at=("any", n)`` SIGKILLs it
    at its n-th ``os.replace``, ``("old", n)`` at the n-th that moves a step away to re-save it
    (the window between the two renames of a re-save)."""
    if kill_at is not None:
        real_replace, kind, count = os.replace, kill_at[0], [0]

        def replace(src, dst):
            if kind == "any" or Path(dst).name.startswith(".old-"):
                count[0] += 1
                if count[0] == kill_at[1]:
                    os.kill(os.getpid(), signal.SIGKILL)
            return real_replace(src, dst)

        os.replace = replace
    try:
        train_main(args)
    except SystemExit as err:
        os._exit(0 if err.code in (0, None) else 3)
    except BaseException:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        os._exit(2)
    os._exit(0)


def _run(args: list[str], kill_after: float | None = None, kill_at: tuple[str, int] | None = None) -> int:
    """Run the trainer in a child process; SIGKILL it after ``kill_after`` seconds if still running.
    Returns its exit code (-9 when killed)."""
    process = _FORKSERVER.Process(target=_child, args=(args, kill_at))
    process.start()
    process.join(kill_after if kill_after is not None else 300)
    if process.is_alive():
        os.kill(process.pid, signal.SIGKILL)
        process.join(30)
    return process.exitcode


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(latest_checkpoint(run) / "model.safetensors")


def test_sigkill_at_random_points_resumes_to_the_uninterrupted_weights(tiny, tmp_path):
    common = ["--dataset", str(tiny), "--bits", "2", "--epochs", "2", "--batch-size", "8", "--num-workers", "0",
              "--save-every", "1", "--keep-checkpoints", "2", "--log-every", "1", "--dynamics-every", "0",
              "--no-progress", "--log-with", "none", "--cpu", "--calib-batches", "1", "--no-export"]
    reference = tmp_path / "reference"
    start = time.monotonic()
    assert _run([*common, "--output-dir", str(reference)]) == 0
    uninterrupted = time.monotonic() - start
    expected = _weights(reference)
    assert read_trainer_state(latest_checkpoint(reference)).global_step == 8  # 32 training images, batch 8, 2 epochs

    run = tmp_path / "killed"
    rng = random.Random(0)
    # step 4 is saved twice (mid-epoch save, then the epoch end): ("old", 1) kills between the two
    # renames of that re-save; ("any", n) at a random rename; the others at a random instant
    plans = [dict(kill_at=("any", rng.randint(1, 3))), dict(kill_at=("old", 1)),
             dict(kill_at=("any", rng.randint(2, 6))), dict(kill_after=rng.uniform(0.5, 1.0) * uninterrupted)]
    kills = 0
    for plan in plans:
        resume = ["--resume"] if latest_checkpoint(run) else (["--overwrite"] if run.exists() else [])
        code = _run([*common, "--output-dir", str(run), *resume], **plan)
        assert code in (0, -signal.SIGKILL), f"exit code {code} with {plan}"
        kills += code == -signal.SIGKILL
        if latest_checkpoint(run) is not None:
            verify_checkpoint(latest_checkpoint(run))
    assert kills >= 3
    for _ in range(3):
        if (run / "summary.json").is_file():
            break
        resume = ["--resume"] if latest_checkpoint(run) else ["--overwrite"]
        assert _run([*common, "--output-dir", str(run), *resume]) == 0
    assert read_trainer_state(latest_checkpoint(run)).global_step == 8
    final = _weights(run)
    assert final.keys() == expected.keys()
    assert all(torch.equal(final[k], expected[k]) for k in expected)
