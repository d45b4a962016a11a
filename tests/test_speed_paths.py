"""The fast paths: compiled kernels equal the eager reference, compile fallback, recompute of
saved quantized tensors, and the eval-mode weight cache."""

import gc
import os
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from uniq_hub.model import quant_kernels
from uniq_hub.model.modules import QConv2d, QLinear, QuantSpec
from uniq_hub.model.quant import code_range, fake_quant, quantize_dequantize, scale_grad
from uniq_hub.model.quant_kernels import fake_quant_learnable, set_compile, set_recompute

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def compiled():
    """Run with the compiled kernels on, restoring the switch afterwards."""
    saved = dict(quant_kernels._state)
    set_compile(True)
    yield
    quant_kernels._state.update(saved)


def _both_paths(fn):
    """``fn()`` with compiled kernels, then with the eager reference."""
    set_compile(True)
    fast = fn()
    assert set_compile(False), "the compiled kernels failed and fell back; nothing was compared"
    try:
        return fast, fn()
    finally:
        set_compile(True)


CASES = {
    # name: (x shape, step shape, scheme, bits, memory format)
    "activation-layer": ((8, 16, 12, 12), (), "unsigned", 2, torch.contiguous_format),
    "activation-channels-last": ((8, 16, 12, 12), (), "unsigned", 1, torch.channels_last),
    "signed-input-8bit": ((4, 3, 32, 32), (), "symmetric", 8, torch.contiguous_format),
    "weight-per-channel": ((64, 32, 3, 3), (64, 1, 1, 1), "symmetric", 2, torch.contiguous_format),
    "weight-per-channel-cl": ((64, 32, 3, 3), (64, 1, 1, 1), "symmetric", 1, torch.channels_last),
    "lsq-weight-per-channel": ((32, 256), (32, 1), "twos_complement", 3, torch.contiguous_format),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_compiled_kernels_match_eager_reference(case, compiled):
    shape, step_shape, scheme, bits, fmt = CASES[case]
    gen = torch.Generator().manual_seed(len(case))
    x0 = (torch.randn(shape, generator=gen) * 1.5).to(memory_format=fmt)
    if scheme == "unsigned":
        x0 = x0.relu()
    # Steps from 0.05 to 1: plenty of clipped and of inside elements; one step at the clamp floor.
    s0 = torch.rand(step_shape, generator=gen) * 0.95 + 0.05
    if s0.dim():
        s0.view(-1)[0] = 1e-9
    grad_out = torch.randn(shape, generator=gen).to(memory_format=fmt)
    lo, hi, offset = code_range(bits, scheme)

    def run():
        x, s = x0.clone().requires_grad_(True), s0.clone().requires_grad_(True)
        q = fake_quant_learnable(x, s, lo, hi, offset, grad_scale=0.37, min_step=1e-8)
        q.backward(grad_out)
        return q.detach(), x.grad, s.grad

    (q_fast, gx_fast, gs_fast), (q_ref, gx_ref, gs_ref) = _both_paths(run)
    assert q_fast.is_contiguous(memory_format=fmt)
    assert torch.equal(q_fast, q_ref)
    assert torch.equal(gx_fast, gx_ref)
    torch.testing.assert_close(gs_fast, gs_ref, rtol=1e-4, atol=1e-6)
    # The folded clamp / grad scale equal the three ops chained, in the reference path too.
    x, s = x0.clone().requires_grad_(True), s0.clone().requires_grad_(True)
    set_compile(False)
    q = fake_quant(x, scale_grad(s.clamp_min(1e-8), 0.37), lo, hi, offset)
    q.backward(grad_out)
    assert torch.equal(q.detach(), q_ref) and torch.equal(x.grad, gx_ref)
    torch.testing.assert_close(s.grad, gs_ref, rtol=1e-6, atol=1e-9)
    if s0.dim():
        assert float(gs_fast.view(-1)[0]) == 0.0  # clamped step: no gradient, as clamp_min gives


def _conv_layer(per_channel: bool = True) -> QConv2d:
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3, padding=1, bias=True)
    layer = QConv2d.from_float(conv, QuantSpec(2, "weight", per_channel=per_channel), QuantSpec(2, "activation"))
    layer.input_quantizer.init_from(torch.randn(4, 16, 10, 10).relu())
    return layer


def test_conv_keeps_no_quantized_input_and_gradients_are_unchanged(compiled):
    layer = _conv_layer()
    x0 = torch.randn(4, 16, 10, 10).relu()
    produced = []
    layer.input_quantizer.register_forward_hook(lambda m, i, out: produced.append(weakref.ref(out)))
    x = x0.clone().requires_grad_(True)
    set_recompute(False)
    try:
        kept = layer(x)
        gc.collect()
        assert produced[0]() is not None, "without recompute the conv keeps Q(x) for backward"
    finally:
        set_recompute(True)
    del kept
    out = layer(x)
    gc.collect()
    assert produced[1]() is None, "the conv should save a recipe for Q(x), not Q(x) itself"
    out.square().sum().backward()
    # Reference: the same math with plain autograd and nothing recomputed.
    wq, aq = layer.weight_quantizer, layer.input_quantizer
    w = layer.weight.detach().clone().requires_grad_(True)
    sw, sa = wq.step.detach().clone().requires_grad_(True), aq.step.detach().clone().requires_grad_(True)
    xr = x0.clone().requires_grad_(True)
    set_compile(False)
    ref = F.conv2d(
        fake_quant(xr, scale_grad(sa.clamp_min(1e-8), aq._grad_scale(16 * 10 * 10)), *code_range(2, "unsigned")),
        fake_quant(w, scale_grad(sw.clamp_min(1e-8), wq._grad_scale(w.numel())), *code_range(2, "symmetric")),
        layer.bias.detach(), padding=1,
    )
    ref.square().sum().backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(x.grad, xr.grad)
    torch.testing.assert_close(layer.weight.grad, w.grad)
    torch.testing.assert_close(wq.step.grad, sw.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(aq.step.grad, sa.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_first_layer_step_gradient_by_adjoint_equals_direct(kind, compiled):
    """An input without gradient (the image): the step gradient comes from a forward op in backward."""
    torch.manual_seed(2)
    if kind == "conv":
        float_layer, x0 = nn.Conv2d(3, 8, 7, stride=2, padding=3), torch.randn(2, 3, 32, 32)
        layer = QConv2d.from_float(float_layer, QuantSpec(8, "weight", per_channel=True), QuantSpec(8, "signed"))
    else:
        float_layer, x0 = nn.Linear(64, 16), torch.randn(32, 64)
        layer = QLinear.from_float(float_layer, QuantSpec(8, "weight"), QuantSpec(8, "signed"))
    layer.input_quantizer.init_from(x0)
    with torch.no_grad():
        layer.input_quantizer.step.mul_(0.5)  # clip some inputs: both Eq. 6 branches matter
    grad_out = torch.randn_like(layer(x0))
    layer(x0).backward(grad_out)
    got = [p.grad.clone() for p in layer.parameters()]
    # Reference: the input marked as needing a gradient takes the ordinary path (data gradient).
    layer.zero_grad()
    layer(x0.clone().requires_grad_(True)).backward(grad_out)
    for name, (g, p) in zip([n for n, _ in layer.named_parameters()], zip(got, layer.parameters())):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert got[-1].abs().sum() > 0  # the input step did receive a gradient


def test_recompute_detects_inplace_change_of_the_saved_input(compiled):
    layer = _conv_layer()
    x = torch.randn(4, 16, 10, 10).relu().requires_grad_(True)
    pre = x * 1.0
    out = layer(pre)
    with torch.no_grad():
        pre.mul_(2.0)  # the quantizer's saved input changed: backward must refuse, as autograd does
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_recompute_composes_with_activation_checkpointing(compiled):
    block = nn.Sequential(_conv_layer(), nn.ReLU(), _conv_layer_like(32))
    x0 = torch.randn(2, 16, 10, 10).relu()
    grads = []
    for use_checkpoint in (False, True):
        block.zero_grad(set_to_none=True)
        x = x0.clone().requires_grad_(True)
        out = checkpoint(block, x, use_reentrant=False) if use_checkpoint else block(x)
        out.sum().backward()
        grads.append([x.grad] + [p.grad for p in block.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def _conv_layer_like(chans: int) -> QConv2d:
    torch.manual_seed(1)
    layer = QConv2d.from_float(nn.Conv2d(chans, 8, 3, padding=1), QuantSpec(1, "weight", per_channel=True),
                               QuantSpec(1, "activation", step_init=0.5))
    return layer


def test_eval_weight_cache_reuses_and_invalidates():
    layer = QLinear.from_float(nn.Linear(64, 128), QuantSpec(2, "weight", per_channel=True), None).eval()
    with torch.no_grad():
        first = layer.quantized_weight()
        assert layer.quantized_weight() is first  # cached
        layer.weight.mul_(3.0)  # in place, as an optimizer or load_state_dict does
        second = layer.quantized_weight()
        assert second is not first and not torch.equal(second, first)
        layer.weight_quantizer.step.mul_(0.5)
        third = layer.quantized_weight()
        assert third is not second and torch.equal(third, layer.weight_quantizer(layer.weight))
        layer.weight = nn.Parameter(layer.weight.detach().clone())  # swapped Parameter
        assert layer.quantized_weight() is not third
    with torch.inference_mode():
        inf = layer.quantized_weight()
        assert inf.is_inference()
    with torch.no_grad():
        assert not layer.quantized_weight().is_inference()
    # Training mode and autograd always see a fresh, differentiable weight.
    layer.train()
    assert layer.quantized_weight().grad_fn is not None


def test_fallback_without_compile_and_when_compile_fails(tmp_path):
    """The library default is eager; ``UNIQ_COMPILE=0`` overrides ``set_compile(True)``; a broken compiler
    warns once, naming the error, and falls back to eager."""
    script = textwrap.dedent(
        """
        import os, warnings, torch
        from uniq_hub.model.quant_kernels import fake_quant_learnable, set_compile
        x = torch.randn(64, 256).relu()
        s = torch.tensor(0.3, requires_grad=True)
        assert not set_compile(False), "eager unless asked"
        os.environ["UNIQ_COMPILE"] = "0"
        set_compile(True)
        assert not set_compile(False), "UNIQ_COMPILE=0 overrides the call"
        del os.environ["UNIQ_COMPILE"]
        ref = fake_quant_learnable(x, s, 0, 3, 0.0)
        set_compile(True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            q = fake_quant_learnable(x, s, 0, 3, 0.0)
            q.sum().backward()
        assert not set_compile(False), "a failed compile must switch the compiled kernels off"
        assert torch.equal(q, ref) and s.grad is not None
        assert [str(w.message) for w in caught if "torch.compile of the quantizer kernels failed" in str(w.message)]
        print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "UNIQ_COMPILE"}
    env.update({"CXX": str(tmp_path / "no-such-compiler"),
                "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"), "PYTHONPATH": str(ROOT)})
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def _benchmarks():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import baseline_quant
        import speed
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return baseline_quant, speed


@pytest.mark.parametrize("bits", [2, 1])
def test_detach_trick_baseline_computes_the_same_model(bits):
    """The speed baseline is the same math written plainly: same outputs, same gradients."""
    import copy

    from uniq_hub import QuantConfig, calibrate, create_model, quantize_

    baseline_quant, _ = _benchmarks()
    torch.manual_seed(0)
    ours = quantize_(create_model("resnet20", num_classes=10, num_channels=1), QuantConfig(w_bits=bits, a_bits=bits))
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    calibrate(ours, [x])
    base = baseline_quant.to_baseline(copy.deepcopy(ours))
    assert not any(type(m).__name__ in ("QConv2d", "QLinear") for m in base.modules())
    outs = []
    for model in (ours, base):
        model.train()
        out = model(x)
        F.cross_entropy(out, y).backward()
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1])
    grads = dict(ours.named_parameters()), dict(base.named_parameters())
    assert grads[0].keys() == grads[1].keys()
    for name, p in grads[0].items():
        torch.testing.assert_close(p.grad, grads[1][name].grad, rtol=2e-3, atol=1e-5, msg=name)


def test_speed_script_table_block_and_arguments(tmp_path):
    _, speed = _benchmarks()
    doc = tmp_path / "speed.md"
    doc.write_text("# Speed\n\nintro\n\n<!-- speed-cpu begin (written by benchmarks/speed.py) -->\nold\n"
                   "<!-- speed-cpu end -->\n\nouttro\n")
    speed.write_block(doc, "speed-cpu", "| new |\n")
    text = doc.read_text()
    assert "intro" in text and "outtro" in text and "| new |" in text and "old" not in text
    speed.write_block(doc, "speed-cuda", "| gpu |\n")
    assert "| new |" in doc.read_text() and "| gpu |" in doc.read_text()
    args = speed.parse_args(["--quick"])
    assert args.models == ["resnet20"] and args.bits == [2] and not args.memory
    with pytest.raises(SystemExit):
        speed.parse_args(["--models", "resnet99"])
    report = {"rows": [{"model": "m", "name": "ours-w2a2", "variant": "ours", "train_ratio": 1.3, "eval_ratio": 1.0,
                        "memory_ratio": 1.1}]}
    assert speed.targets(report) == ["m ours-w2a2: train 1.300x > 1.15x"]


@pytest.mark.parametrize("training", [True, False])
def test_whole_model_compile_traces_one_graph(training):
    """Under a user's torch.compile the quantizers trace into the model's graph: no graph breaks
    (no Python-side caches, version checks or recompute hooks while compiling)."""
    from uniq_hub import QuantConfig, calibrate, create_model, quantize_

    torch.manual_seed(0)
    net = create_model("resnet20", num_classes=10, num_channels=1)
    x = torch.randn(4, 1, 28, 28)
    quantize_(net, QuantConfig(w_bits=2, a_bits=2))
    calibrate(net, [x])
    net.train(training)
    with torch.set_grad_enabled(training):
        explained = torch._dynamo.explain(net)(x)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1
    torch._dynamo.reset()


def test_math_fake_quant_is_pure_and_equals_the_fused_node(compiled, monkeypatch):
    """``quant.fake_quant`` never goes through the kernels (no state, no compile) and gives the values and
    gradients of the fused, compiled node."""
    calls = []
    run = quant_kernels._run_kernel
    monkeypatch.setattr(quant_kernels, "_run_kernel", lambda name, *a: calls.append(name) or run(name, *a))
    x0, lo, hi, offset = torch.randn(64, 128), *code_range(3, "symmetric")
    results = []
    for fn in (fake_quant, fake_quant_learnable):
        x, s = x0.clone().requires_grad_(True), torch.tensor(0.2, requires_grad=True)
        q = fn(x, s, lo, hi, offset)
        q.backward(x0)
        results.append((q.detach(), x.grad, s.grad))
        if fn is fake_quant:
            assert calls == []
    assert calls == ["forward_layer", "backward_layer"]
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_inference_runs_the_eager_math_even_with_compiling_on(compiled, monkeypatch):
    """Evaluation never goes through the compiled kernels: the same numbers wherever it runs (a compiled
    CPU kernel's code depends on the instruction set it was generated for; docs/portability.md)."""
    monkeypatch.setitem(quant_kernels._KERNELS, "forward_layer", lambda x, step, bounds: torch.zeros_like(x))
    monkeypatch.setattr(quant_kernels, "_compiled", {})
    monkeypatch.setattr(quant_kernels.torch, "compile", lambda fn, **kw: fn)
    x = torch.randn(64, 256).relu()
    step = torch.tensor(0.3, requires_grad=True)
    with torch.no_grad():
        reference = quantize_dequantize(x, step, 0, 3, 0.0)
        assert torch.equal(quant_kernels.fake_quant_learnable(x, step, 0, 3, 0.0), reference)
    assert not quant_kernels.fake_quant_learnable(x, step, 0, 3, 0.0).any()  # training: the (stubbed) kernel
