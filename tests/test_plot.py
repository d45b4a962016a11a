"""``uniq-hub plot``: dynamics and accuracy-against-bits PNGs from run directories."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.image
import pytest

from uniq_hub.cli import main
from uniq_hub.plot import pick_quantizers, read_dynamics, run_results

QUANTIZERS = [f"layer{i}.0.conv1.{kind}" for i in (1, 2, 3) for kind in ("weight_quantizer", "input_quantizer")]


def _run(root: Path, name: str, bits: int, top1: float, method: str = "uniq", zoo: str | None = None,
         dynamics: bool = True, warmup: float = 0.0) -> Path:
    """A run directory as ``uniq-hub train`` leaves it (the files plot reads)."""
    run = root / name
    (run / "export").mkdir(parents=True)
    config = {"run_name": name, "arch": "resnet20", "dataset": "fashion_mnist", "w_bits": bits, "a_bits": bits,
              "method": method, "zoo": zoo, "optimizer": "adam" if bits == 1 else "sgd", "warmup_epochs": warmup}
    (run / "train_config.json").write_text(json.dumps(config))
    (run / "export" / "eval_results.json").write_text(json.dumps(
        {"model_id": name, "dataset": "fashion_mnist", "split": "test", "top1": top1, "top5": 99.0,
         "num_examples": 100, "command": "uniq-hub evaluate ..."}))
    if dynamics and bits != 32:
        with open(run / "dynamics.jsonl", "w") as f:
            for step in range(1, 11):
                row = {"step": step * 10, "epoch": step / 2}
                for q in QUANTIZERS:
                    row.update({f"{q}/step": 0.5 + 0.01 * step, f"{q}/std": 1.0 + 0.1 * math.sin(step),
                                f"{q}/sqnr": 10.0 + 0.1 * step, f"{q}/sqnr_opt": 11.6, f"{q}/step_opt": 0.6})
                f.write(json.dumps(row) + "\n")
    return run


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 300 and pixels.std() > 0.01  # drawn, not blank


def test_plot_runs(tmp_path, capsys):
    runs = [_run(tmp_path, "fp", 32, 91.5), _run(tmp_path, "w2a2", 2, 89.0), _run(tmp_path, "w4a4", 4, 91.0),
            _run(tmp_path, "w1a1", 1, 85.0, warmup=2.0), _run(tmp_path, "lsq-w2a2", 2, 88.0, method="lsq"),
            _run(tmp_path, "r18-w2a2", 2, 60.0, zoo="uniq/resnet18-w2a2", dynamics=False)]
    out = tmp_path / "plots"
    assert main(["plot", *map(str, runs), "--out", str(out)]) == 0
    for name in ("w2a2", "w4a4", "w1a1", "lsq-w2a2"):
        _assert_png(out / f"{name}-dynamics.png")
    assert not (out / "fp-dynamics.png").exists() and not (out / "r18-w2a2-dynamics.png").exists()
    _assert_png(out / "accuracy_vs_bits.png")
    printed = capsys.readouterr().out
    assert "bits FP  top-1  91.50%" in printed and "(paper 67.8%)" in printed

    results = {r.run: r for r in run_results(runs)}
    assert (results["fp"].bits, results["w1a1"].top1, results["lsq-w2a2"].method) == (32, 85.0, "lsq")
    assert results["r18-w2a2"].paper_top1 == 67.8 and results["w2a2"].paper_top1 is None


def test_dynamics_reading_and_selection(tmp_path):
    run = _run(tmp_path, "w2a2", 2, 89.0)
    dynamics = read_dynamics(run)
    assert list(dynamics) == QUANTIZERS  # model order kept
    assert dynamics["layer2.0.conv1.input_quantizer"]["epoch"] == [s / 2 for s in range(1, 11)]
    assert dynamics["layer1.0.conv1.weight_quantizer"]["sqnr_opt"][0] == 11.6
    acts = [q for q in QUANTIZERS if q.endswith("input_quantizer")]
    assert pick_quantizers(QUANTIZERS, limit=2) == [acts[0], acts[-1]]  # spread over the depth
    assert pick_quantizers(QUANTIZERS, ["layer2.0.conv1.weight"]) == ["layer2.0.conv1.weight_quantizer"]
    with pytest.raises(ValueError, match="no quantizer matches"):
        pick_quantizers(QUANTIZERS, ["fc."])
    with pytest.raises(FileNotFoundError, match="dynamics.jsonl does not exist"):
        read_dynamics(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a training run directory"):
        run_results([tmp_path / "nothing"])
    (run / "dynamics.jsonl").write_text("{broken\n")
    with pytest.raises(ValueError, match=r"dynamics.jsonl:1 is not a JSON line"):
        read_dynamics(run)
