"""The quantizer math: Table 1, level sets, symmetry, idempotence, STE gradients (Eq. 6)."""

import hashlib
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from uniq_hub.model.quant import (
    code_range,
    dequantize_codes,
    fake_quant,
    fake_quant_activation,
    fake_quant_weight,
    fake_quant_weight_lsq,
    grad_scale_factor,
    lsq_init_step,
    optimal_step,
    quantize_codes,
    scale_grad,
)
from uniq_hub.model.quant_kernels import fake_quant_learnable

# Table 1 of the paper: N -> (D_w^u, SQNR_w dB, D_a^u, SQNR_a dB).
TABLE1 = {2: (1.596, 4.4, 1.224, 5.5), 4: (0.996, 9.3, 0.651, 11.6), 8: (0.586, 14.3, 0.353, 17.2),
          16: (0.335, 19.4, 0.193, 22.7)}


@pytest.mark.parametrize("n", sorted(TABLE1))
def test_table1_reproduced_by_the_solver(n):
    bits = int(math.log2(n))
    dw, sw, da, sa = TABLE1[n]
    step_w, sqnr_w = optimal_step(bits, "weight")
    step_a, sqnr_a = optimal_step(bits, "activation")
    assert round(step_w, 3) == pytest.approx(dw, abs=1e-9)
    assert round(step_a, 3) == pytest.approx(da, abs=1e-9)
    assert abs(sqnr_w - sw) <= 0.05 + 1e-9
    assert abs(sqnr_a - sa) <= 0.05 + 1e-9


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("kind", ["weight", "activation"])
def test_optimal_step_agrees_with_quadrature_and_is_a_minimum(bits, kind):
    """Independent check: integrate (x - Q(x))^2 p(x) on a fine grid with the torch quantizer."""
    x = torch.linspace(-12, 12, 4_000_001, dtype=torch.float64)
    pdf = torch.exp(-0.5 * x**2) / math.sqrt(2 * math.pi)
    dx = float(x[1] - x[0])
    quant, signal = (fake_quant_weight, x) if kind == "weight" else (fake_quant_activation, x.clamp_min(0))
    power = float(((signal - (signal * pdf).sum() * dx) ** 2 * pdf).sum() * dx)
    step, sqnr = optimal_step(bits, kind)

    def mse(s: float) -> float:
        return float(((quant(signal, torch.tensor(s, dtype=torch.float64), bits) - signal) ** 2 * pdf).sum() * dx)

    assert 10 * math.log10(power / mse(step)) == pytest.approx(sqnr, abs=0.01)
    assert mse(step) < mse(step * 0.97) and mse(step) < mse(step * 1.03)


def test_optimal_step_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        optimal_step(2, "bias")
    with pytest.raises(ValueError, match="bits"):
        optimal_step(9, "weight")


bits_st = st.integers(1, 8)
step_st = st.floats(0.01, 4.0)
seed_st = st.integers(0, 2**31 - 1)


def _randn(seed: int, *shape: int, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


@settings(max_examples=60, deadline=None)
@given(bits=bits_st, step=step_st, seed=seed_st)
def test_weight_outputs_lie_on_symmetric_levels_without_zero(bits, step, seed):
    n = 2**bits
    x = _randn(seed, 257, scale=step * n)
    q = fake_quant_weight(x, torch.tensor(step, dtype=torch.float64), bits)
    k = q / step + (n - 1) / 2  # level index
    assert torch.allclose(k, k.round(), atol=1e-6)
    assert k.round().min() >= 0 and k.round().max() <= n - 1
    assert (q.abs() >= step / 2 - 1e-9).all()  # no zero level


@settings(max_examples=60, deadline=None)
@given(bits=bits_st, step=step_st, seed=seed_st)
def test_activation_outputs_lie_on_unsigned_levels(bits, step, seed):
    n = 2**bits
    x = _randn(seed, 257, scale=step * n)
    q = fake_quant_activation(x, torch.tensor(step, dtype=torch.float64), bits)
    k = q / step
    assert torch.allclose(k, k.round(), atol=1e-6)
    assert k.round().min() >= 0 and k.round().max() <= n - 1
    assert (q[x <= 0] == 0).all()


@settings(max_examples=60, deadline=None)
@given(bits=bits_st, step=step_st, seed=seed_st)
def test_weight_quantizer_is_odd_and_both_are_idempotent(bits, step, seed):
    s = torch.tensor(step, dtype=torch.float64)
    # Avoid exact rounding ties, where round-half-to-even breaks odd symmetry by convention.
    x = _randn(seed, 300, scale=step * 2**bits)
    x = x[((x / step + (2**bits - 1) / 2) % 1 - 0.5).abs() > 1e-6]
    q = fake_quant_weight(x, s, bits)
    assert torch.equal(fake_quant_weight(-x, s, bits), -q)
    assert torch.allclose(fake_quant_weight(q, s, bits), q, atol=1e-12)
    a = fake_quant_activation(x, s, bits)
    assert torch.allclose(fake_quant_activation(a, s, bits), a, atol=1e-12)


def _eq6_weight(x: np.ndarray, d: float, bits: int) -> np.ndarray:
    """Eq. 6, written independently; outside the range it is sign(x) alpha / D."""
    n = 2**bits
    alpha = d * (n - 1) / 2
    inside = -x / d + np.round(x / d - 0.5) + 0.5  # N = 2**bits is even
    return np.where(np.abs(x) < alpha, inside, np.sign(x) * alpha / d)


def _grad_activation(x: np.ndarray, d: float, bits: int) -> np.ndarray:
    n = 2**bits
    return np.where(x <= 0, 0.0, np.where(x >= (n - 1) * d, n - 1, np.round(x / d) - x / d))


@settings(max_examples=60, deadline=None)
@given(bits=bits_st, step=step_st, seed=seed_st)
def test_step_gradients_follow_eq6(bits, step, seed):
    x = _randn(seed, 200, scale=step * 2**bits)
    frac = (x.numpy() / step + 0.5) % 1
    ties = np.minimum(frac, 1 - frac) < 1e-9  # exact round() ties: measure zero, skip them
    for quant, reference in ((fake_quant_weight, _eq6_weight), (fake_quant_activation, _grad_activation)):
        # One step per element (a broadcast per-"channel" step) gives the elementwise gradient.
        s_elem = torch.full_like(x, step).requires_grad_(True)
        quant(x, s_elem, bits).sum().backward()
        expected = reference(x.numpy(), step, bits)
        np.testing.assert_allclose(s_elem.grad.numpy()[~ties], expected[~ties], rtol=1e-9, atol=1e-9)
        # A scalar step receives the sum of the elementwise gradients.
        s = torch.tensor(step, dtype=torch.float64, requires_grad=True)
        quant(x, s, bits).sum().backward()
        assert float(s.grad) == pytest.approx(float(s_elem.grad.sum()), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("bits", range(1, 9))
def test_input_gradient_mask_at_clip_edges(bits):
    n, d = 2**bits, 0.5
    alpha, top = d * (n - 1) / 2, d * (n - 1)
    eps = 1e-6
    x = torch.tensor([-alpha - eps, -alpha, -alpha + eps, 0.1, alpha - eps, alpha, alpha + eps], dtype=torch.float64,
                     requires_grad=True)
    fake_quant_weight(x, d, bits).sum().backward()
    assert x.grad.tolist() == [0, 1, 1, 1, 1, 1, 0]
    y = torch.tensor([-eps, 0.0, eps, top - eps, top, top + eps], dtype=torch.float64, requires_grad=True)
    fake_quant_activation(y, d, bits).sum().backward()
    assert y.grad.tolist() == [0, 1, 1, 1, 1, 0]


@settings(max_examples=25, deadline=None)
@given(bits=bits_st, seed=seed_st)
def test_per_channel_steps_broadcast_like_separate_scalars(bits, seed):
    w = _randn(seed, 4, 3, 2, 2, scale=1.0)
    steps = torch.tensor([0.05, 0.2, 0.7, 1.5], dtype=torch.float64).reshape(4, 1, 1, 1).requires_grad_(True)
    q = fake_quant_weight(w, steps, bits)
    (q * w).sum().backward()
    for c in range(4):
        sc = steps[c, 0, 0, 0].detach().clone().requires_grad_(True)
        qc = fake_quant_weight(w[c], sc, bits)
        (qc * w[c]).sum().backward()
        assert torch.equal(q[c], qc)
        assert float(steps.grad[c]) == pytest.approx(float(sc.grad), rel=1e-12, abs=1e-12)


def test_lsq_weight_quantizer_is_semi_symmetric():
    x = torch.linspace(-10, 10, 1001, dtype=torch.float64)
    q = fake_quant_weight_lsq(x, 1.0, 2)
    assert sorted(set(q.tolist())) == [-2.0, -1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="1-bit"):
        fake_quant_weight_lsq(x, 1.0, 1)


@pytest.mark.parametrize("scheme", ["symmetric", "unsigned", "twos_complement"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_codes_round_trip_to_fake_quantized_values(scheme, bits):
    x = _randn(bits, 64, 9, scale=2.0).float()
    step = torch.rand(64, 1, generator=torch.Generator().manual_seed(1)) + 0.05
    codes = quantize_codes(x, step, bits, scheme)
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 2**bits - 1
    assert torch.equal(dequantize_codes(codes, step, bits, scheme), fake_quant(x, step, *code_range(bits, scheme)))


def test_gradient_scaling_and_lsq_init():
    assert grad_scale_factor(100, 2, "weight") == pytest.approx(1 / math.sqrt(100 * 1))
    assert grad_scale_factor(100, 4, "weight") == pytest.approx(1 / math.sqrt(100 * 7))
    assert grad_scale_factor(100, 2, "activation") == pytest.approx(1 / math.sqrt(100 * 3))
    s = torch.tensor(2.0, requires_grad=True)
    y = scale_grad(s, 0.25)
    assert float(y.detach()) == 2.0
    (3 * y).backward()
    assert float(s.grad) == pytest.approx(0.75)
    assert lsq_init_step(0.5, 2, "activation") == pytest.approx(2 * 0.5 / math.sqrt(3))


# Recorded with the implementation before the math / kernels split (commit 9c452da): sha256 (first
# 16 hex digits) of Q(x) and dQ/dx bytes, and the summed step gradient, for seeded float64 inputs.
GOLDEN = {
    "symmetric": ("7fb7000598ab17c9", -18.831982769455347),
    "unsigned": ("27813de4e3aaaedd", 4.501001236457318),
    "twos_complement": ("e768b231810e6dc3", -10.145495607516079),
}


def test_values_and_gradients_unchanged_since_before_the_split():
    gen = torch.Generator().manual_seed(12)
    cases = [("symmetric", 2, (8, 3, 5, 5), (8, 1, 1, 1)), ("unsigned", 3, (4, 6, 7, 7), ()),
             ("twos_complement", 4, (16, 20), (16, 1))]
    for scheme, bits, shape, step_shape in cases:
        x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2).requires_grad_(True)
        s = (torch.rand(step_shape, generator=gen, dtype=torch.float64) * 0.5 + 0.1).requires_grad_(True)
        g = torch.randn(shape, generator=gen, dtype=torch.float64)
        q = fake_quant_learnable(x, s, *code_range(bits, scheme), 0.3, 1e-8)
        q.backward(g)
        digest = hashlib.sha256(q.detach().numpy().tobytes() + x.grad.numpy().tobytes()).hexdigest()[:16]
        assert digest == GOLDEN[scheme][0], scheme
        assert float(s.grad.sum()) == pytest.approx(GOLDEN[scheme][1], rel=1e-12), scheme
