"""Loss numerics: golden values, parity with the reference formulations, gradients,
properties, and finiteness under autocast."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from methods.ckd import ckd_loss
from methods.crd import ContrastMemory, Embed, nce_loss
from methods.dkd import dkd_loss, tckd_nckd
from methods.fitnet import ConvReg, fitnet_loss
from methods.kd import kd_loss
from tests import reference_impls as ref
from tests.make_golden import GOLDEN, build, recompute

f64 = torch.float64
# float64 comparisons of two different computations (ours vs a reference re-statement, a
# golden value computed on another CPU, a fast path vs a slow one): every case here reduces
# at most a few hundred terms through exp/log, so rounding differs by ≲ 1e3·eps64 ≈ 2e-13
# (observed: ≤ 2e-15); 1e-12 still fails on any real change (a wrong constant, a term or an
# index moves these values by ≥ 1e-8). Exact equality is used only where the same
# operations run on the same inputs (a value stored and read back, an untouched row).
TIGHT = dict(rtol=1e-12, atol=1e-12)


def logits(*shape, scale=3.0, seed=0, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen, dtype=f64) * scale).requires_grad_(requires_grad)


# ---------------------------------------------------------------- golden values
@pytest.fixture(scope="module")
def golden():
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def recomputed(golden):
    """The losses re-evaluated on the golden file's own stored inputs (not on a fresh draw)."""
    return recompute(golden)


GOLDEN_CASES = ["kd_T4", "kd_T1", "ckd_tau1", "ckd_tau05", "dkd_a1_b8_T4", "dkd_a05_b2_T2", "nce_n50", "fitnet_convreg"]


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_golden_value_and_gradients(golden, recomputed, case):
    want, got = golden[case], recomputed[case]
    # Golden numbers were computed on another CPU: TIGHT (≤ 20 float64 inputs, a few
    # softmax/log reductions of ≤ 20 terms: rounding ≲ 1e-14 relative).
    assert math.isclose(got["value"], want["value"], rel_tol=1e-12, abs_tol=1e-12), (got["value"], want["value"])
    assert set(got["grads"]) == set(want["grads"])  # key names: exact
    for name, grad in want["grads"].items():
        torch.testing.assert_close(torch.tensor(got["grads"][name], dtype=f64), torch.tensor(grad, dtype=f64), **TIGHT)


@pytest.fixture(scope="module")
def redrawn():
    """What ``python -m tests.make_golden`` would write now, fresh inputs included."""
    return build()


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_make_golden_still_draws_the_stored_inputs(golden, redrawn, case):
    """Regenerating the file keeps its inputs, so a regenerated diff shows only changed values.
    Not exact: ``randn``'s Box-Muller log/cos differ in the last bits between CPUs' libm/SIMD
    code, a few ulp of values ≲ 10 in magnitude: rtol 1e-13 plus atol 1e-13 (values near the
    zeros of cos carry the absolute error of their neighbours); a changed seed or shape is O(1)."""
    drawn = redrawn[case]["inputs"]
    assert set(drawn) == set(golden[case]["inputs"])
    for name, values in golden[case]["inputs"].items():
        torch.testing.assert_close(
            torch.tensor(drawn[name], dtype=f64),
            torch.tensor(values, dtype=f64),
            rtol=1e-13,
            atol=1e-13,
            msg=f"golden inputs were regenerated differently: {case}.{name}",
        )


# CRD's memory has two scoring paths (row gather as the reference, full-bank matmul):
# every reference check runs under both.
SCORING = ["gather", "full"]


@pytest.mark.parametrize("scoring", SCORING)
def test_golden_crd_memory(golden, scoring):
    case = golden["crd_memory"]
    memory = ContrastMemory(
        case["feat_dim"], case["n_data"], case["nce_k"], case["nce_t"], case["nce_m"], scoring
    ).double()
    with torch.no_grad():
        memory.memory_student.copy_(torch.tensor(case["start"]["memory_student"], dtype=f64))
        memory.memory_teacher.copy_(torch.tensor(case["start"]["memory_teacher"], dtype=f64))
    for call in case["calls"]:
        t = lambda key, dtype=f64: torch.tensor(call[key], dtype=dtype)  # noqa: E731
        out_s, out_t = memory(t("v_student"), t("v_teacher"), t("idx", torch.long), t("contrast_idx", torch.long))
        torch.testing.assert_close(out_s, t("out_student"), **TIGHT)
        torch.testing.assert_close(out_t, t("out_teacher"), **TIGHT)
        assert memory.z_student.item() == pytest.approx(call["z_student"], rel=1e-12)
        assert memory.z_teacher.item() == pytest.approx(call["z_teacher"], rel=1e-12)
        torch.testing.assert_close(memory.memory_student, t("memory_student"), **TIGHT)
        torch.testing.assert_close(memory.memory_teacher, t("memory_teacher"), **TIGHT)


# ---------------------------------------------------------- parity with references
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_matches_reference(seed, temperature):
    s, t = logits(8, 100, seed=seed), logits(8, 100, seed=seed + 100)
    assert kd_loss(s, t, temperature).item() == pytest.approx(ref.ref_kd(s, t, temperature).item(), rel=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_dkd_matches_reference(seed):
    s, t = logits(16, 100, seed=seed), logits(16, 100, seed=seed + 100)
    target = torch.randint(100, (16,), generator=torch.Generator().manual_seed(seed))
    for alpha, beta, temperature in [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0), (2.0, 0.0, 8.0)]:
        ours = dkd_loss(s, t, target, alpha, beta, temperature)
        theirs = ref.ref_dkd(s, t, target, alpha, beta, temperature)
        assert ours.item() == pytest.approx(theirs.item(), rel=1e-10)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("temperature", [1.0, 0.1])
def test_ckd_matches_reference(seed, temperature):
    s, t = logits(7, 10, seed=seed), logits(7, 10, seed=seed + 100)
    assert ckd_loss(s, t, temperature).item() == pytest.approx(ref.ref_ckd(s, t, temperature).item(), rel=1e-12)


@pytest.mark.parametrize(
    "s_shape,t_shape,conv_type",
    [
        ((2, 16, 16, 16), (2, 32, 8, 8), torch.nn.Conv2d),
        ((2, 16, 4, 4), (2, 8, 8, 8), torch.nn.ConvTranspose2d),
        ((2, 16, 8, 8), (2, 32, 8, 8), torch.nn.Conv2d),
        ((2, 16, 10, 9), (2, 8, 8, 8), torch.nn.Conv2d),
    ],
)
def test_convreg_matches_reference(s_shape, t_shape, conv_type):
    torch.manual_seed(0)
    ours = ConvReg(s_shape, t_shape).double()
    theirs = ref.RefConvReg(s_shape, t_shape).double()
    assert type(ours.conv) is conv_type
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(*s_shape, dtype=f64)
    out = ours(x)
    assert out.shape[1:] == t_shape[1:]
    torch.testing.assert_close(out, theirs(x.clone()), **TIGHT)


def test_convreg_refuses_impossible_shapes():
    with pytest.raises(ValueError, match="cannot map"):
        ConvReg((2, 16, 4, 4), (2, 8, 16, 16))


def test_embed_matches_reference():
    torch.manual_seed(0)
    ours, theirs = Embed(20, 8).double(), ref.RefEmbed(20, 8).double()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(5, 4, 5, dtype=f64)
    torch.testing.assert_close(ours(x), theirs(x), **TIGHT)
    assert torch.allclose(ours(x).norm(dim=1), torch.ones(5, dtype=f64))


def _pair_of_memories(feat_dim, n_data, k, seed=3, scoring="auto"):
    torch.manual_seed(seed)
    ours = ContrastMemory(feat_dim, n_data, k, 0.07, 0.5, scoring).double()
    torch.manual_seed(seed)
    theirs = ref.RefContrastMemory(feat_dim, n_data, k, 0.07, 0.5).double()
    return ours, theirs


def test_contrast_memory_init_matches_reference():
    ours, theirs = _pair_of_memories(16, 50, 8)
    # Exact: the same seed and the same ops (rand, mul_, add_, then .double()) on both sides.
    torch.testing.assert_close(ours.memory_student, theirs.memory_v1, rtol=0, atol=0)
    torch.testing.assert_close(ours.memory_teacher, theirs.memory_v2, rtol=0, atol=0)
    bound = 1 / math.sqrt(16 / 3)
    assert ours.memory_student.abs().max() <= bound


@pytest.mark.parametrize("scoring", SCORING)
def test_contrast_memory_matches_reference_over_steps(scoring):
    n, d, k, b = 40, 8, 12, 6
    ours, theirs = _pair_of_memories(d, n, k, scoring=scoring)
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):  # the first call fixes Z, later calls reuse it and see updated banks
        v_s = F.normalize(torch.randn(b, d, generator=gen, dtype=f64), dim=1).requires_grad_()
        v_t = F.normalize(torch.randn(b, d, generator=gen, dtype=f64), dim=1).requires_grad_()
        v_s_ref, v_t_ref = v_s.detach().clone().requires_grad_(), v_t.detach().clone().requires_grad_()
        idx = torch.randperm(n, generator=gen)[:b]
        contrast = torch.randint(n, (b, k + 1), generator=gen)
        contrast[:, 0] = idx
        out_s, out_t = ours(v_s, v_t, idx, contrast)
        ref_s, ref_t = theirs(v_s_ref, v_t_ref, idx, contrast)
        torch.testing.assert_close(out_s, ref_s.squeeze(2), **TIGHT)
        torch.testing.assert_close(out_t, ref_t.squeeze(2), **TIGHT)
        loss = nce_loss(out_s, n) + nce_loss(out_t, n)
        ref_loss = ref.ref_contrast_loss(ref_s, n) + ref.ref_contrast_loss(ref_t, n)
        assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-12)
        loss.backward()
        ref_loss.backward()
        torch.testing.assert_close(v_s.grad, v_s_ref.grad, **TIGHT)
        torch.testing.assert_close(v_t.grad, v_t_ref.grad, **TIGHT)
        torch.testing.assert_close(ours.memory_student, theirs.memory_v1, **TIGHT)
        torch.testing.assert_close(ours.memory_teacher, theirs.memory_v2, **TIGHT)
        # Z = n·mean of the B·(K+1) = 78 scores: two computations (bmm/matmul vs the reference's
        # bmm, reduced in a CPU-dependent order). Dots of d = 8 terms differ by ≲ 8·eps64·|w||v|,
        # × 1/T ≈ 14 in the exponent, plus ≲ 78·eps64 from the mean: ≲ 1e-13 relative (a 1-ulp,
        # 2.5e-16, difference was seen on an AMD EPYC). rel 1e-12 still catches a wrong T, n or mean.
        assert ours.z_student.item() == pytest.approx(theirs.params[2].item(), rel=1e-12, abs=0)
        assert ours.z_teacher.item() == pytest.approx(theirs.params[3].item(), rel=1e-12, abs=0)


def test_contrast_memory_z_is_fixed_after_first_call_and_saved():
    memory = ContrastMemory(4, 10, 3)
    v = F.normalize(torch.randn(2, 4), dim=1)
    idx = torch.tensor([0, 1])
    memory(v, v, idx)
    z = memory.z_student.item()
    assert z > 0
    memory(F.normalize(torch.randn(2, 4), dim=1) * 0 + v, v, idx)
    assert memory.z_student.item() == z  # exact: the stored buffer read back, not recomputed
    restored = ContrastMemory(4, 10, 3)
    restored.load_state_dict(memory.state_dict())  # a copy: exact
    assert restored.z_student.item() == z and restored.z_teacher.item() == memory.z_teacher.item()


def test_contrast_memory_update_rows_are_normalised_mixtures():
    memory = ContrastMemory(4, 10, 3, nce_m=0.5).double()
    old = memory.memory_student.clone()
    v = F.normalize(torch.randn(2, 4, dtype=f64), dim=1)
    idx = torch.tensor([3, 7])
    memory(v, v, idx)
    expected = F.normalize(0.5 * old[idx] + 0.5 * v, dim=1)
    torch.testing.assert_close(memory.memory_student[idx], expected, **TIGHT)
    untouched = [i for i in range(10) if i not in (3, 7)]
    assert torch.equal(memory.memory_student[untouched], old[untouched])  # rows never written: exact


def test_contrast_memory_fallback_draw_keeps_positive_in_column_zero():
    memory = ContrastMemory(4, 10, 5)
    idx = torch.tensor([4, 2, 9])
    drawn = memory._draw_contrast_index(idx)
    assert drawn.shape == (3, 6) and torch.equal(drawn[:, 0], idx)


def test_nce_loss_formula():
    x = torch.rand(3, 5, dtype=f64) + 0.1
    n, k = 50, 4
    noise = k / n
    expected = (
        -(torch.log(x[:, 0] / (x[:, 0] + noise + 1e-7)).sum() + torch.log(noise / (x[:, 1:] + noise + 1e-7)).sum()) / 3
    )
    assert nce_loss(x, n).item() == pytest.approx(expected.item(), rel=1e-12)


# ------------------------------------------------------------------ gradients
def test_gradcheck_kd():
    s, t = logits(4, 6, seed=1, requires_grad=True), logits(4, 6, seed=2, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: kd_loss(a, b, 4.0), (s, t))


def test_gradcheck_dkd():
    s, t = logits(4, 6, seed=1, requires_grad=True), logits(4, 6, seed=2, requires_grad=True)
    target = torch.tensor([0, 5, 2, 2])
    assert torch.autograd.gradcheck(lambda a, b: dkd_loss(a, b, target, 1.0, 8.0, 4.0), (s, t))


def test_gradcheck_ckd():
    s, t = logits(5, 6, seed=1, requires_grad=True), logits(5, 6, seed=2)
    assert torch.autograd.gradcheck(lambda a: ckd_loss(a, t, 0.5), (s,))


def test_ckd_teacher_is_detached():
    s, t = logits(5, 6, seed=1, requires_grad=True), logits(5, 6, seed=2, requires_grad=True)
    ckd_loss(s, t).backward()
    assert t.grad is None and s.grad is not None


def test_gradcheck_fitnet():
    torch.manual_seed(0)
    reg = ConvReg((2, 3, 8, 8), (2, 4, 4, 4)).double()
    fs = torch.randn(2, 3, 8, 8, dtype=f64, requires_grad=True)
    ft = torch.randn(2, 4, 4, 4, dtype=f64)
    assert torch.autograd.gradcheck(lambda a: fitnet_loss(reg(a), ft), (fs,))


def test_gradcheck_crd_path():
    torch.manual_seed(0)
    embed_s, embed_t = Embed(6, 4).double(), Embed(5, 4).double()
    memory = ContrastMemory(4, 12, 5).double()
    memory(
        F.normalize(torch.randn(3, 4, dtype=f64), dim=1),
        F.normalize(torch.randn(3, 4, dtype=f64), dim=1),
        torch.tensor([0, 1, 2]),
    )
    idx = torch.tensor([3, 4, 5])
    contrast = torch.randint(12, (3, 6))
    contrast[:, 0] = idx

    def crd(f_s, f_t):
        bank = copy.deepcopy(memory)  # scoring updates the banks in place: keep each call pure
        out_s, out_t = bank(embed_s(f_s), embed_t(f_t), idx, contrast)
        return nce_loss(out_s, 12) + nce_loss(out_t, 12)

    f_s = torch.randn(3, 6, dtype=f64, requires_grad=True)
    f_t = torch.randn(3, 5, dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(crd, (f_s, f_t))


# ------------------------------------------------------------------ properties
def test_kd_is_zero_for_identical_logits_and_positive_otherwise():
    s = logits(6, 10)
    assert kd_loss(s, s.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-14)
    assert kd_loss(s, logits(6, 10, seed=9), 4.0).item() > 0


def test_kd_scales_with_temperature_squared_for_identical_softmax_gap():
    s, t = logits(4, 5), logits(4, 5, seed=1)
    manual = (F.softmax(t, 1) * (F.log_softmax(t, 1) - F.log_softmax(s, 1))).sum(1).mean()
    assert kd_loss(s, t, 1.0).item() == pytest.approx(manual.item(), rel=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_decomposes_kd_per_sample(temperature):
    s, t = logits(12, 20, seed=4), logits(12, 20, seed=5)
    target = torch.randint(20, (12,), generator=torch.Generator().manual_seed(0))
    tckd, nckd = tckd_nckd(s, t, target, temperature)
    p_t_target = F.softmax(t / temperature, 1).gather(1, target[:, None]).squeeze(1)
    kd_per_sample = temperature**2 * F.kl_div(
        F.log_softmax(s / temperature, 1), F.softmax(t / temperature, 1), reduction="none"
    ).sum(1)
    torch.testing.assert_close(kd_per_sample, tckd + (1 - p_t_target) * nckd, rtol=1e-10, atol=1e-12)


def test_dkd_with_beta_equal_one_minus_teacher_confidence_is_kd():
    """Summing the identity over the batch: alpha = 1, beta = 1 − p_t is KD itself (one sample)."""
    s, t = logits(1, 9, seed=6), logits(1, 9, seed=7)
    target = torch.tensor([2])
    beta = 1 - F.softmax(t / 4.0, 1)[0, 2].item()
    assert dkd_loss(s, t, target, 1.0, beta, 4.0).item() == pytest.approx(kd_loss(s, t, 4.0).item(), rel=1e-10)


def test_dkd_stays_finite_where_the_reference_gives_nan():
    s = torch.tensor([[200.0, -200.0, -200.0, -200.0], [0.5, 0.1, -0.3, 0.0]], requires_grad=True)
    t = torch.tensor([[300.0, -300.0, -300.0, -300.0], [0.2, 0.4, 0.0, -0.1]])
    target = torch.tensor([0, 1])
    reference = ref.ref_dkd(s.detach(), t, target, 1.0, 8.0, 1.0)
    assert not torch.isfinite(reference), "fixture no longer reproduces the reference's failure"
    loss = dkd_loss(s, t, target, 1.0, 8.0, 1.0)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(s.grad).all()


def test_dkd_refuses_two_classes():
    with pytest.raises(ValueError, match="at least 3 classes"):
        dkd_loss(torch.randn(4, 2), torch.randn(4, 2), torch.tensor([0, 1, 0, 1]), 1.0, 8.0, 4.0)


def test_ckd_batch_of_one_is_zero():
    # Exact on any CPU: a 1×1 score matrix gives log_softmax = s - s - log(exp(0)) = 0 in IEEE.
    assert ckd_loss(logits(1, 10), logits(1, 10, seed=1)).item() == 0.0


def test_ckd_invariant_to_positive_row_scaling():
    s, t = logits(6, 10), logits(6, 10, seed=1)
    scale_s = torch.rand(6, 1, dtype=f64) * 10 + 0.1
    scale_t = torch.rand(6, 1, dtype=f64) * 10 + 0.1
    assert ckd_loss(s * scale_s, t * scale_t).item() == pytest.approx(ckd_loss(s, t).item(), rel=1e-12)


def test_ckd_changes_when_a_constant_is_added():
    s, t = logits(6, 10), logits(6, 10, seed=1)
    assert ckd_loss(s + 5.0, t).item() != pytest.approx(ckd_loss(s, t).item(), rel=1e-6)
    assert ckd_loss(s, t + 5.0).item() != pytest.approx(ckd_loss(s, t).item(), rel=1e-6)


def test_ckd_argument_order_is_student_first():
    """Teacher rows, student columns: swapping the arguments transposes M and changes the loss."""
    s, t = logits(6, 10), logits(6, 10, seed=1)
    s_hat, t_hat = F.normalize(s, dim=1), F.normalize(t, dim=1)
    m = t_hat @ s_hat.t()
    expected = F.cross_entropy(m, torch.arange(6))
    assert ckd_loss(s, t).item() == pytest.approx(expected.item(), rel=1e-12)
    assert ckd_loss(t, s).item() != pytest.approx(expected.item(), rel=1e-6)


def test_ckd_lower_when_student_aligns_with_teacher():
    t = logits(8, 10, seed=1)
    assert ckd_loss(t * 2.0, t).item() < ckd_loss(logits(8, 10, seed=2), t).item()
