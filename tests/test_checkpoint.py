"""Accelerate-state checkpoints: exact round trip, atomic writes, rotation, --resume resolution."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from torch import nn

from uniq_hub import QuantConfig, calibrate, quantize_
from uniq_hub.training.checkpoint import (
    Checkpointer,
    TrainerState,
    latest_checkpoint,
    list_checkpoints,
    read_trainer_state,
)
from uniq_hub.training.recipes import build_optimizer, build_scheduler


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    quantize_(model, QuantConfig(2, 2))
    x = torch.randn(8, 1, 8, 8)
    calibrate(model, [x], 1)
    accelerator = Accelerator(cpu=True)
    optimizer = build_optimizer(model, "sgd", 0.1, 1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = build_scheduler(optimizer, total_steps=20, warmup_steps=4)
    return accelerator, model, optimizer, scheduler


def _train_steps(model, optimizer, scheduler, n: int) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(n):
        x, y = torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()


def test_round_trip_restores_model_optimizer_scheduler(tmp_path):
    accelerator, model, optimizer, scheduler = _setup()
    ckpt = Checkpointer(accelerator, tmp_path, keep=3)
    _train_steps(model, optimizer, scheduler, 5)
    path = ckpt.save(TrainerState(epoch=1, step_in_epoch=2, global_step=5, best_metric=50.0, best_step=4), scheduler)
    assert path.name == "step-00000005" and (path / "model.safetensors").is_file()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    lr_saved = scheduler.get_last_lr()
    _train_steps(model, optimizer, scheduler, 2)  # the original run goes on from the checkpoint
    continued = {k: v.clone() for k, v in model.state_dict().items()}

    acc2, model2, optimizer2, scheduler2 = _setup(seed=123)  # a fresh process rebuilds everything
    state = Checkpointer(acc2, tmp_path).load(path, scheduler2)
    assert (state.epoch, state.step_in_epoch, state.global_step, state.best_metric) == (1, 2, 5, 50.0)
    assert all(torch.equal(v, saved[k]) for k, v in model2.state_dict().items())  # steps and latent weights
    assert scheduler2.get_last_lr() == lr_saved and scheduler2.last_epoch == 5
    # the resumed run continues exactly as the original did (momentum buffers, lr schedule)
    _train_steps(model2, optimizer2, scheduler2, 2)
    assert all(torch.equal(v, continued[k]) for k, v in model2.state_dict().items())


def test_atomic_save_and_rotation(tmp_path, monkeypatch):
    accelerator, model, optimizer, scheduler = _setup()
    ckpt = Checkpointer(accelerator, tmp_path, keep=2)
    for step in (2, 4, 6):
        ckpt.save(TrainerState(global_step=step), scheduler)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000004", "step-00000006"]

    # a crash in the middle of writing leaves no step-* directory behind
    real_save = accelerator.save_state

    def crash(output_dir, **kw):
        real_save(output_dir, **kw)  # everything written ... then killed before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(accelerator, "save_state", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(TrainerState(global_step=8), scheduler)
    assert (tmp_path / "checkpoints" / ".tmp-step-00000008" / "model.safetensors").is_file()
    assert latest_checkpoint(tmp_path).name == "step-00000006"
    (tmp_path / "checkpoints" / "step-00000009").mkdir()  # no trainer_state.json: incomplete
    assert latest_checkpoint(tmp_path).name == "step-00000006"

    monkeypatch.setattr(accelerator, "save_state", real_save)
    ckpt.save(TrainerState(global_step=6, epoch=1), scheduler)  # the same step again replaces it
    assert read_trainer_state(latest_checkpoint(tmp_path)).epoch == 1


def test_resume_resolution(tmp_path):
    accelerator, _, _, scheduler = _setup()
    ckpt = Checkpointer(accelerator, tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        ckpt.resolve("latest")
    saved = ckpt.save(TrainerState(global_step=3), scheduler)
    assert ckpt.resolve("latest") == saved
    assert ckpt.resolve(str(tmp_path / "run")) == saved  # a run directory
    assert ckpt.resolve(str(saved)) == saved  # a checkpoint directory
    with pytest.raises(FileNotFoundError, match="neither a checkpoint nor a run directory"):
        ckpt.resolve(str(tmp_path / "elsewhere"))
    (saved / "trainer_state.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid trainer state"):
        read_trainer_state(saved)
