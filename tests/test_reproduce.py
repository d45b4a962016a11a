"""benchmarks/reproduce.py: the row plan keeps one protocol, a toy run writes a well-formed,
resumable JSON, and the claim verdicts follow the stated rule."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "benchmarks" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


rp = _load()
SHARED = ("arch", "dataset", "max_train_samples", "max_eval_samples", "train_split", "eval_split", "epochs",
          "batch_size", "eval_every", "num_channels", "image_size", "label_smoothing", "grad_accum", "max_steps")


def test_every_row_of_the_cpu_plan_shares_the_protocol(tmp_path):
    protocol = rp.PROTOCOLS["cpu"]
    jobs = rp.plan(protocol, rp.resolve_rows(None), protocol.seeds, tmp_path)
    trained = [j for j in jobs if j["config"] is not None]
    assert {j["row"] for j in jobs} == set(rp.ROWS_BY_NAME)
    assert len(trained) == len(protocol.seeds) * sum(1 for r in rp.ROWS if not r.same_as)
    for key in SHARED:
        assert len({getattr(j["config"], key) for j in trained}) == 1, key
    cfg = trained[0]["config"]
    assert (cfg.max_train_samples, cfg.max_eval_samples, cfg.epochs) == (protocol.train_samples,
                                                                       protocol.eval_samples, protocol.epochs)
    quantized = [j["config"] for j in trained if j["config"].quantized]
    assert {c.calib_batches for c in quantized} == {protocol.calib_batches}
    for job in trained:  # starts: FP of the same seed for multi-bit, the 2/2 UniQ run for 1 bit
        c, row = job["config"], rp.ROWS_BY_NAME[job["row"]]
        expected = None if row.bits == rp.FP else "uniq-w2a2" if row.bits == 1 else "fp"
        assert (Path(c.init_from).name if c.init_from else None) == expected, job["row"]
        if c.init_from:
            assert Path(c.init_from).parent.name == f"seed{job['seed']}"
        assert c.seed == job["seed"]
    by = {(j["row"], j["seed"]): j["config"] for j in trained}
    assert by[("lsq-w2a2", 0)].method == "lsq" and by[("uniq-w2a2", 0)].method == "uniq"
    assert by[("init-0.1-w2a2", 0)].step_init == 0.1 and by[("uniq-w2a2", 0)].step_init == "mse"
    sgd, sgd_w = by[("w1a1-sgd", 0)], by[("w1a1-sgd-warmup", 0)]
    adam, adam_w = by[("w1a1-adam", 0)], by[("w1a1-adam-warmup", 0)]
    assert (sgd.optimizer, sgd.lr, adam.optimizer, adam.lr) == ("sgd", 0.01, "adam", 0.004)
    assert sgd.warmup_epochs == adam.warmup_epochs == 0
    assert sgd_w.warmup_epochs == adam_w.warmup_epochs == protocol.warmup_epochs > 0
    assert sgd_w.warmup_lr == adam_w.warmup_lr == rp.WARMUP_LR


def test_rows_pull_in_their_dependencies_in_order():
    names = [r.name for r in rp.resolve_rows(["uniq-w1a1"])]
    assert names == ["fp", "uniq-w2a2", "w1a1-adam-warmup", "uniq-w1a1"]
    with pytest.raises(SystemExit, match="unknown row"):
        rp.resolve_rows(["uniq-w9a9"])


def test_toy_run_writes_well_formed_json_and_resumes(tmp_path, hf_offline):
    out, docs = tmp_path / "r.json", tmp_path / "r.md"
    argv = ["--protocol", "toy", "--rows", "fp,uniq-w2a2,init-mse-w2a2", "--seeds", "0", "--jobs", "1",
            "--threads", "1", "--output", str(out), "--runs", str(tmp_path / "runs"), "--docs", str(docs)]
    assert rp.main(argv) == 0
    results = json.loads(out.read_text())
    assert results["protocol"]["name"] == "toy" and results["protocol"]["train_samples"] == 128
    assert results["environment"]["torch"] and results["invocations"][0]["wall_s"] > 0
    rows = results["rows"]
    assert set(rows) == {"fp", "uniq-w2a2", "init-mse-w2a2"}
    for name in ("fp", "uniq-w2a2"):
        seed = rows[name]["seeds"]["0"]
        assert 0 <= seed["top1"] <= 100 and seed["num_eval"] == 64 and seed["steps"] == 2 and seed["seconds"] > 0
        assert rows[name]["n"] == 1 and rows[name]["mean"] == pytest.approx(seed["top1"], abs=1e-3)
    assert rows["uniq-w2a2"]["settings"]["init_from"] == "fp"
    assert rows["init-mse-w2a2"]["same_as"] == "uniq-w2a2"
    assert rows["init-mse-w2a2"]["seeds"] == rows["uniq-w2a2"]["seeds"]
    assert (tmp_path / "r.png").stat().st_size > 0 and "Table 4 analogue" in docs.read_text()

    assert rp.main(argv) == 0  # everything done: nothing retrained, the results kept
    again = json.loads(out.read_text())
    assert again["rows"] == rows and len(again["invocations"]) == 2
    with pytest.raises(SystemExit, match="another protocol"):
        rp.main(["--protocol", "cpu", "--output", str(out), "--runs", str(tmp_path / "runs"), "--docs", str(docs)])


def _entry(*top1):
    return {"seeds": {str(i): {"top1": v} for i, v in enumerate(top1)}}


@pytest.mark.parametrize("a, b, verdict", [
    ((90.0, 91.0, 90.5), (88.0, 89.2, 88.4), "held"),
    ((88.0, 89.2, 88.4), (90.0, 91.0, 90.5), "contradicted"),
    ((90.0, 88.0), (89.0, 89.0), "not resolved"),   # the seeds disagree
    ((90.0,), (80.0,), "not resolved"),             # one seed: no spread to judge by
])
def test_compare_verdicts(a, b, verdict):
    assert rp.compare(_entry(*a), _entry(*b))["verdict"] == verdict
