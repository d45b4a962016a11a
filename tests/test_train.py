"""Training through Accelerate end to end on a tiny dataset: FP then w2a2 from it (the quickstart at
toy size), run directory contents, calibration, dynamics, export; SIGKILL + --resume; two processes."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train_helpers import accelerate_command, eager_kernels, make_tiny_dataset, subprocess_env, train_command  # noqa: F401
from uniq_hub import UniQForImageClassification, quantizers
from uniq_hub.model.quant import optimal_step
from uniq_hub.quickstart import run_quickstart
from uniq_hub.training.checkpoint import latest_checkpoint, read_trainer_state
from uniq_hub.training.model_init import build_model, load_init_weights
from uniq_hub.training.run_data import load_data
from uniq_hub.training.train_config import resolve_config

STEPS_PER_EPOCH = 4  # 72 training images less 7 held out for validation (a tenth), batch 16


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="module")
def quick(tiny, tmp_path_factory, hub_server, hub_token):
    """The quickstart at toy size: FP 1 epoch, then w2a2 from it for 2 epochs, evaluate, pipeline,
    publish to the local Hub."""
    work = tmp_path_factory.mktemp("quick")
    result = run_quickstart(work, dataset=str(tiny), train_samples=None, fp_epochs=1, q_epochs=2, batch_size=16,
                            num_workers=0, num_examples=3, progress=False, repo_id="quickstart/toy-w2a2",
                            token=hub_token,
                            log_every=1, dynamics_every=2, save_every=3, eval_every=1)
    return work, result


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_quickstart_toy(quick):
    work, result = quick
    export = Path(result["export_dir"])
    assert export == work / "w2a2" / "export"
    record = json.loads((export / "eval_results.json").read_text())
    assert set(record) == {"model_id", "dataset", "split", "top1", "top5", "num_examples", "command", "selection",
                           "machine"}
    assert {"cpu", "cores", "isa", "torch"} <= set(record["machine"])  # the machine that measured the number
    assert record["num_examples"] == 32 and record["split"] == "test"
    # chosen on 7 training images held out (a tenth, class-stratified), not on the test split it reports
    selection = record["selection"]
    assert (selection["split"], selection["num_examples"]) == ("train[held-out 7]", 7)
    assert selection["step"] in (STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH)
    # evaluating the exported folder (its own image processor) reproduces the training-time number
    assert record["top1"] == pytest.approx(result["q_top1"])
    assert len(result["predictions"]) == 3 and all(p["predicted"] in ("top", "upper", "lower", "bottom")
                                                   for p in result["predictions"])
    assert result["q_bytes"] < result["fp_bytes"] / 4  # packed 2-bit weights
    assert (export / "README.md").read_text().startswith("---")
    # published: the Hub copy loads and computes what the folder computes
    assert "quickstart/toy-w2a2" in result["published"]
    pixels = torch.randn(2, 1, 28, 28)
    local = UniQForImageClassification.from_pretrained(export).eval()
    hub = UniQForImageClassification.from_pretrained("quickstart/toy-w2a2").eval()
    with torch.no_grad():
        assert torch.equal(local(pixels).logits, hub(pixels).logits)


def test_run_directory(quick):
    work, _ = quick
    run = work / "w2a2"
    config = json.loads((run / "train_config.json").read_text())
    recipe_fields = ("optimizer", "lr", "momentum", "weight_decay", "epochs", "batch_size", "calib_batches")
    assert all(config[k] is not None for k in recipe_fields)
    assert (config["w_bits"], config["a_bits"], config["optimizer"], config["lr"]) == (2, 2, "sgd", 0.01)
    assert config["init_from"] == str(work / "fp")

    log = _lines(run / "log.jsonl")
    train_steps = [r["step"] for r in log if "train/loss" in r]
    assert train_steps == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    assert [r["step"] for r in log if "val/top1" in r] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    assert [r["step"] for r in log if "test/top1" in r] == [2 * STEPS_PER_EPOCH]  # the test split once, at the end
    lrs = [r["train/lr"] for r in log if "train/lr" in r]
    assert lrs[0] < 0.01 and all(a > b for a, b in zip(lrs, lrs[1:]))  # cosine, stepped per iteration
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tensorboard").rglob("*"))

    # Figure 4 dynamics: every quantizer, every 2 steps, against the Table 1 optimum
    dyn = _lines(run / "dynamics.jsonl")
    assert [r["step"] for r in dyn] == [2, 4, 6, 8]
    first = dyn[0]
    act, weight = "layer2.0.conv1.input_quantizer", "layer2.0.conv1.weight_quantizer"
    assert first[f"{act}/sqnr_opt"] == pytest.approx(optimal_step(2, "activation")[1])
    assert first[f"{weight}/sqnr_opt"] == pytest.approx(optimal_step(2, "weight")[1])
    assert first["stem.conv.input_quantizer/sqnr_opt"] == pytest.approx(optimal_step(8, "weight")[1])
    assert 0 < first[f"{act}/sqnr"] < 30 and first[f"{act}/std"] > 0
    # calibrated from the FP weights (not left at the init of the random weights): after two small
    # SGD steps the kernel-wise weight steps are still the MSE optimum of the current weights
    for key in first:
        if key.endswith("weight_quantizer/step"):
            assert first[key] == pytest.approx(first[key.replace("/step", "/step_opt")], rel=0.05), key

    # checkpoints: every 3 steps and at each epoch end, at most keep_checkpoints (1) kept
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000008"]
    state = read_trainer_state(run / "checkpoints" / "step-00000008")
    assert (state.epoch, state.step_in_epoch, state.global_step) == (2, 0, 8)

    # best model twice: latent weights (best/) and release format (export/) give the same logits
    best = UniQForImageClassification.from_pretrained(run / "best").eval()
    export = UniQForImageClassification.from_pretrained(run / "export").eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(best(x).logits, export(x).logits)
    packed, latent = ((run / d / "model.safetensors").stat().st_size for d in ("export", "best"))
    assert packed < latent / 4


def test_init_from_loads_network_weights_not_steps(quick, tiny):
    work, _ = quick
    cfg = resolve_config({"dataset": str(tiny), "bits": 1, "output_dir": str(work / "unused")})
    model = build_model(cfg, load_data(cfg))
    steps_before = {n: q.step.detach().clone() for n, q in quantizers(model.model).items()}
    loaded = load_init_weights(model, str(work / "w2a2"))  # 1-bit from the 2-bit run, as in the paper
    source = UniQForImageClassification.from_pretrained(work / "w2a2" / "best").state_dict()
    own = model.state_dict()
    assert loaded and all("_quantizer." not in k for k in loaded)
    assert all(torch.equal(own[k], source[k]) for k in loaded)
    assert all(torch.equal(q.step, steps_before[n]) for n, q in quantizers(model.model).items())
    wrong = resolve_config({"dataset": str(tiny), "bits": 2, "arch": "resnet32", "output_dir": str(work / "x")})
    with pytest.raises(ValueError, match="--init-from .* does not fit resnet32"):
        load_init_weights(build_model(wrong, load_data(wrong)), str(work / "w2a2"))


def test_train_config_file_with_overrides_trains_mixed_precision(quick, tiny, tmp_path):
    """``uniq-hub train --config FILE`` with per-layer overrides (older key names in the file read as
    the current ones): the run trains the mixed-precision plan and its export reloads with it."""
    from uniq_hub import QuantConfig, create_model
    from uniq_hub.cli import main as cli_main
    from uniq_hub.model.quantize import layer_bits

    work, _ = quick
    options = {"dataset": str(tiny), "w-bits": 2, "a_bits": 2, "init": "lsq", "in_chans": 1,
               "overrides": {"layer1.*": [4, 3], "layer3.*": [32, 4], "fc": [32, 32]},
               "init_from": str(work / "fp"), "epochs": 1, "batch_size": 16, "num_workers": 0,
               "log_with": "none", "dynamics_every": 0, "progress": False, "output_dir": str(tmp_path / "mixed")}
    (tmp_path / "mixed.json").write_text(json.dumps(options))
    assert cli_main(["train", "--config", str(tmp_path / "mixed.json")]) == 0
    config = resolve_config(config_file=tmp_path / "mixed.json")
    assert (config.step_init, config.num_channels) == ("lsq", 1)
    exported = UniQForImageClassification.from_pretrained(tmp_path / "mixed" / "export")
    assert exported.config.step_init == "lsq" and exported.config.overrides == options["overrides"]
    float_model = create_model("resnet20", num_classes=4, num_channels=1)
    plan = layer_bits(float_model, QuantConfig(**config.quant_options()))
    assert plan["layer1.0.conv1"] == (4, 3) and plan["layer3.0.conv1"] == (32, 4) and plan["fc"] == (32, 32)
    assert plan["layer2.0.conv1"] == (2, 2) and plan["stem.conv"] == (8, 8)
    assert layer_bits(float_model, exported.config.quant_config()) == plan
    loaded = {name: (m.weight_quantizer.bits if m.weight_quantizer is not None else 32,
                     m.input_quantizer.bits if m.input_quantizer is not None else 32)
              for name, m in exported.model.named_modules() if name in plan and hasattr(m, "weight_quantizer")}
    assert loaded == {name: bits for name, bits in plan.items() if bits != (32, 32)}


def test_resume_after_sigkill_continues_mid_epoch(quick, tiny, tmp_path):
    work, _ = quick
    run = tmp_path / "run"
    args = ["--dataset", str(tiny), "--bits", "2", "--init-from", str(work / "fp"), "--epochs", "2",
            "--batch-size", "16", "--num-workers", "0", "--save-every", "3", "--log-every", "1",
            "--dynamics-every", "0", "--output-dir", str(run), "--no-progress", "--log-with", "none"]
    proc = subprocess.Popen(train_command(*args), env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while latest_checkpoint(run) is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"training ended before its first checkpoint: {proc.stderr.read()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    checkpoint = latest_checkpoint(run)
    saved = read_trainer_state(checkpoint)
    assert 0 < saved.global_step < 2 * STEPS_PER_EPOCH
    assert saved.step_in_epoch > 0  # killed mid-epoch, after a mid-epoch checkpoint
    logged_before = [r["step"] for r in _lines(run / "log.jsonl")]

    resumed = subprocess.run(train_command(*args, "--resume"), env=subprocess_env(), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {checkpoint}" in resumed.stdout
    after = [r["step"] for r in _lines(run / "log.jsonl")][len(logged_before):]
    assert after[0] == saved.global_step + 1  # continues from the checkpoint, not from step 1
    assert max(after) == 2 * STEPS_PER_EPOCH
    final = read_trainer_state(latest_checkpoint(run))
    assert (final.epoch, final.global_step) == (2, 2 * STEPS_PER_EPOCH)
    model = UniQForImageClassification.from_pretrained(run / "export")
    assert model.config.w_bits == 2 and model(torch.randn(1, 1, 28, 28)).logits.shape == (1, 4)


def test_accelerate_launch_two_processes(quick, tiny, tmp_path):
    work, _ = quick
    run = tmp_path / "ddp"
    cmd = accelerate_command(2, "--dataset", str(tiny), "--bits", "2", "--init-from", str(work / "fp"),
                             "--epochs", "1", "--batch-size", "16", "--max-steps", "2", "--num-workers", "0",
                             "--dynamics-every", "1", "--output-dir", str(run), "--no-progress", "--log-with", "none")
    done = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoint = latest_checkpoint(run)
    assert read_trainer_state(checkpoint).global_step == 2  # 2 processes x 8 images = the global batch of 16
    weights = load_file(checkpoint / "model.safetensors")
    model = UniQForImageClassification.from_pretrained(run / "best")
    assert model.load_state_dict(weights, strict=True) is not None  # the Accelerate checkpoint loads
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in weights.items())  # and is the exported best model
    assert [r["step"] for r in _lines(run / "dynamics.jsonl")] == [1, 2]  # main process only
