"""CRD's full-bank scoring path: same numbers as the reference's row gather, gradients
taken with the pre-update bank rows, and the ``auto`` rule that picks between them."""

from __future__ import annotations

import copy
import gc

import pytest
import torch
import torch.nn.functional as F

import methods.crd as crd
from methods import DistillContext, StepInputs, build_method
from methods.crd import ContrastMemory, choose_scoring, nce_loss

f64 = torch.float64
# The two scoring paths are two computations (gather+bmm vs matmul+gather; a scatter+matmul
# backward), reduced in CPU-dependent orders: never compared exactly. In float64 rounding
# stays ≲ 1e-13 (d-term dots ×1/T in the exponent, ≤ K+1-term gradient sums), so 1e-12
# still fails on any real error (stale or updated bank rows move values by ≥ 1e-3).
TIGHT = dict(rtol=1e-12, atol=1e-12)
FORCED = ["gather", "full"]


def unit(*shape, gen, dtype=f64, device="cpu", requires_grad=False):
    v = F.normalize(torch.randn(*shape, generator=gen, dtype=dtype), dim=1).to(device)
    return v.requires_grad_(requires_grad)


def contrast(n, b, k, gen, idx):
    c = torch.randint(n, (b, k + 1), generator=gen)
    c[:, 0] = idx
    return c


def twin_memories(d, n, k, device="cpu", dtype=f64, seed=3, **kw):
    """One memory per forced path, same banks."""
    torch.manual_seed(seed)
    gather = ContrastMemory(d, n, k, scoring="gather", **kw).to(device, dtype)
    full = copy.deepcopy(gather)
    full.scoring = "full"
    return gather, full


# ------------------------------------------------------ gather ≡ full, several steps
def _step(memories, v_s, v_t, idx, c, n):
    """One call on each memory with its own leaf copies of v; returns outputs, losses, leaves."""
    results = []
    for memory in memories:
        leaf_s, leaf_t = v_s.detach().clone().requires_grad_(), v_t.detach().clone().requires_grad_()
        out_s, out_t = memory(leaf_s, leaf_t, idx, c)
        results.append((out_s, out_t, nce_loss(out_s, n) + nce_loss(out_t, n), leaf_s, leaf_t))
    return results


# float32 (eps32 = 1.2e-7), worst case over reduction lengths, n = 300, d = 16, K + 1 = 121:
# scores exp(⟨w, v⟩/T)/Z: a 16-term dot is off by ≤ 16·eps32·Σ|w||v| (≤ 1.1 here), i.e.
# ≤ 2.1e-6 absolute, ×1/T = 14.3 in the exponent → 3e-5 relative, and Z (their mean) once
# more → 6e-5, purely relative (positive values): rtol 1e-4, atol 0. Gradients: sums of
# K+1 = 121 terms g_ij·w_j with Σ|g||w| ≤ 1.2 → ≤ 121·eps32·1.2 = 1.7e-5 absolute, plus the
# scores' 6e-5 relative: rtol 1e-4, atol 2e-5 (observed here: ≤ 6e-7). A real error (stale
# or updated rows, a wrong T) moves these by ≥ 1e-3.
F32_SCORES = dict(rtol=1e-4, atol=0.0)
F32_GRADS = dict(rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("dtype,tol,grad_tol", [(f64, TIGHT, TIGHT), (torch.float32, F32_SCORES, F32_GRADS)])
def test_full_equals_gather_over_steps(dtype, tol, grad_tol):
    n, d, k, b = 300, 16, 120, 24
    memories = twin_memories(d, n, k, dtype=dtype)
    gen = torch.Generator().manual_seed(5)
    for _ in range(5):
        idx = torch.randint(n, (b,), generator=gen)  # may repeat within the batch
        c = contrast(n, b, k, gen, idx)
        (g_s, g_t, g_loss, gs_leaf, gt_leaf), (f_s, f_t, f_loss, fs_leaf, ft_leaf) = _step(
            memories, unit(b, d, gen=gen, dtype=dtype), unit(b, d, gen=gen, dtype=dtype), idx, c, n
        )
        torch.testing.assert_close(f_s, g_s, **tol)
        torch.testing.assert_close(f_t, g_t, **tol)
        (g_loss * 1.7).backward()
        (f_loss * 1.7).backward()
        torch.testing.assert_close(fs_leaf.grad, gs_leaf.grad, **grad_tol)
        torch.testing.assert_close(ft_leaf.grad, gt_leaf.grad, **grad_tol)
        gather, full = memories
        torch.testing.assert_close(full.params, gather.params, **tol)  # Z: the scores' mean, relative
        # Exact on purpose: banks are updated by the same code from the same v and the same old
        # rows on both paths (scores never feed the update): bit for bit. (Repeated idx: both
        # memories run the same serial index_copy_ on these 24×16 rows, the last write wins.)
        assert torch.equal(full.memory_student, gather.memory_student)
        assert torch.equal(full.memory_teacher, gather.memory_teacher)


def test_backward_after_update_uses_pre_update_rows():
    """d/dv Σ_j exp(⟨w_j, v⟩/T)/Z = Σ_j w_j · out_j / T, with w the rows BEFORE the update."""
    n, d, k, b = 30, 6, 20, 4
    memory = ContrastMemory(d, n, k, scoring="full").double()
    gen = torch.Generator().manual_seed(0)
    idx = torch.tensor([0, 1, 2, 3])
    c = contrast(n, b, k, gen, idx)
    c[:, 1] = 2  # every sample scores row 2, which this very call overwrites
    before = memory.memory_teacher.clone()
    v_s = unit(b, d, gen=gen, requires_grad=True)
    out_s, out_t = memory(v_s, unit(b, d, gen=gen), idx, c)
    assert not torch.equal(memory.memory_teacher[idx], before[idx]), "the call must have updated the rows"
    out_s.sum().backward()  # no "modified by an inplace operation" error
    expected = torch.einsum("bkd,bk->bd", before[c], out_s.detach()) / memory.nce_t
    torch.testing.assert_close(v_s.grad, expected, **TIGHT)


def test_two_forwards_then_one_backward_match_gather():
    """Each graph keeps seeing the bank as it was when it was scored, however many updates follow."""
    n, d, k, b = 50, 8, 30, 5
    memories = twin_memories(d, n, k)
    gen = torch.Generator().manual_seed(7)
    losses, leaves = [[], []], [[], []]
    for _ in range(3):
        idx = torch.randint(n, (b,), generator=gen)
        c = contrast(n, b, k, gen, idx)
        for path, (_, _, loss, leaf_s, leaf_t) in enumerate(
            _step(memories, unit(b, d, gen=gen), unit(b, d, gen=gen), idx, c, n)
        ):
            losses[path].append(loss)
            leaves[path] += [leaf_s, leaf_t]
    sum(losses[0]).backward()
    sum(losses[1]).backward(retain_graph=True)
    sum(losses[1]).backward()  # a second backward through the retained graph sees the same rows
    # full_leaf.grad = g + g (the same backward twice: exactly 2g), /2 exact; vs gather: TIGHT.
    for gather_leaf, full_leaf in zip(*leaves):
        torch.testing.assert_close(full_leaf.grad / 2, gather_leaf.grad, **TIGHT)


def test_outside_write_between_scoring_and_backward_is_refused():
    memory = ContrastMemory(4, 20, 10, scoring="full").double()
    gen = torch.Generator().manual_seed(0)
    v = unit(3, 4, gen=gen, requires_grad=True)
    out_s, _ = memory(v, unit(3, 4, gen=gen), torch.tensor([0, 1, 2]))
    with torch.no_grad():
        memory.memory_teacher.mul_(2)  # not through the memory: its old rows are lost
    with pytest.raises(RuntimeError, match="modified in place outside the memory"):
        out_s.sum().backward()


def test_snapshots_are_released_with_their_graph():
    memory = ContrastMemory(4, 20, 10, scoring="full")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        memory(
            unit(3, 4, gen=gen, dtype=torch.float32), unit(3, 4, gen=gen, dtype=torch.float32), torch.tensor([0, 1, 2])
        )
    assert len(memory._pending) == 0, "no graph, no snapshot"
    out_s, out_t = memory(
        unit(3, 4, gen=gen, dtype=torch.float32, requires_grad=True),
        unit(3, 4, gen=gen, dtype=torch.float32, requires_grad=True),
        torch.tensor([3, 4, 5]),
    )
    assert len(memory._pending) == 2
    (out_s.sum() + out_t.sum()).backward()
    del out_s, out_t
    gc.collect()
    assert len(memory._pending) == 0


def test_copies_and_state_dicts_do_not_share_pending_graphs():
    memory = ContrastMemory(4, 20, 10, scoring="full").double()
    gen = torch.Generator().manual_seed(0)
    v = unit(3, 4, gen=gen, requires_grad=True)
    out_s, _ = memory(v, unit(3, 4, gen=gen), torch.tensor([0, 1, 2]))
    twin = copy.deepcopy(memory)
    assert len(twin._pending) == 0
    twin(unit(3, 4, gen=gen), unit(3, 4, gen=gen), torch.tensor([0, 1, 2]))  # writes the copy's banks only
    out_s.sum().backward()
    assert torch.isfinite(v.grad).all()
    restored = ContrastMemory(4, 20, 10, scoring="full").double()
    restored.load_state_dict(memory.state_dict())
    assert torch.equal(restored.memory_student, memory.memory_student)  # a copy: exact


# ----------------------------------------------------------------- the auto rule
@pytest.mark.parametrize(
    "batch,k,n,d,expected",
    [
        (64, 16384, 50_000, 128, "full"),  # CIFAR-100: B(K+1) = 21 N
        (4, 16384, 50_000, 128, "full"),  # still reads more rows than the bank has
        (2, 16384, 50_000, 128, "full"),  # B(K+1) = 0.66 N
        (1, 16384, 50_000, 128, "gather"),  # B(K+1) = 0.33 N < N/2: the gather reads few rows
        (64, 4096, 200_000, 128, "full"),
        (256, 16384, 1_281_167, 128, "gather"),  # ImageNet: B×N would outgrow the gathered block
        (4096, 16384, 1_281_167, 128, "gather"),
        (64, 16384, 50_000, 1, "gather"),  # d = 1: a B×N matrix is bigger than the gather
    ],
)
def test_auto_rule(batch, k, n, d, expected):
    assert choose_scoring(batch, k + 1, n, d) == expected
    rows, full_elements, gather_elements = batch * (k + 1), 2 * batch * n, batch * (k + 1) * d
    assert (expected == "full") == (2 * rows >= n and full_elements <= gather_elements)


def test_auto_takes_the_chosen_path(monkeypatch):
    calls = []
    real = crd._FullBankScores.apply
    monkeypatch.setattr(crd._FullBankScores, "apply", lambda *a: calls.append(1) or real(*a))
    gen = torch.Generator().manual_seed(0)
    memory = ContrastMemory(8, 40, 12)  # auto
    assert memory.scoring_for(6) == "full" and memory.scoring_for(1) == "gather"
    v = lambda b: unit(b, 8, gen=gen, dtype=torch.float32, requires_grad=True)  # noqa: E731
    memory(v(6), v(6), torch.arange(6))
    assert len(calls) == 2
    memory(v(1), v(1), torch.arange(1))
    assert len(calls) == 2
    assert ContrastMemory(8, 40, 12, scoring="gather").scoring_for(6) == "gather"
    assert ContrastMemory(8, 40, 12, scoring="full").scoring_for(1) == "full"


def test_unknown_scoring_is_refused():
    with pytest.raises(ValueError, match="scoring must be one of"):
        ContrastMemory(4, 10, 3, scoring="dense")


@pytest.mark.parametrize("scoring", ["auto", *FORCED])
def test_crd_method_passes_scoring_and_stays_finite_under_autocast(scoring):
    b = 8
    context = DistillContext(
        num_classes=10, num_data=64, student_shapes={"embedding": (b, 32)}, teacher_shapes={"embedding": (b, 48)}
    )
    method = build_method({"type": "crd", "nce_k": 16, "scoring": scoring}, context)
    assert method.memory.scoring == scoring
    gen = torch.Generator().manual_seed(0)
    feature = torch.randn(b, 32, generator=gen, requires_grad=True)
    step = StepInputs(
        logits_student=torch.randn(b, 10, generator=gen, requires_grad=True),
        target=torch.randint(10, (b,), generator=gen),
        features_student={"embedding": feature},
        features_teacher={"embedding": torch.randn(b, 48, generator=gen)},
        index=torch.randperm(64, generator=gen)[:b],
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = method(step)
    total = sum(v.float() for v in losses.values())
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(feature.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_full_equals_gather_on_cuda():
    n, d, k, b = 2000, 32, 1000, 16
    memories = twin_memories(d, n, k, device="cuda")
    gen = torch.Generator().manual_seed(5)
    for _ in range(3):
        idx = torch.randint(n, (b,), generator=gen)
        # The exact bank check below needs distinct rows: CUDA's index_copy_ picks an arbitrary
        # winner among duplicates. (This seed draws none; a changed seed must keep it so.)
        assert idx.unique().numel() == b
        c = contrast(n, b, k, gen, idx).cuda()
        idx = idx.cuda()
        results = _step(memories, unit(b, d, gen=gen, device="cuda"), unit(b, d, gen=gen, device="cuda"), idx, c, n)
        for out, _, loss, *_ in results:
            loss.backward()
        (g_s, g_t, _, gs, gt), (f_s, f_t, _, fs, ft) = results
        # float64 on the GPU, other kernels and orders: scores ≤ 2·32·eps64·|w||v|/T ≈ 2e-13
        # relative, gradients (1001-term sums) ≤ 1.3e-13 absolute: 1e-10 / 1e-12 leave room
        # for the GPU's reduction trees and still catch any real error (≥ 1e-3).
        torch.testing.assert_close(f_s, g_s, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(f_t, g_t, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(fs.grad, gs.grad, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ft.grad, gt.grad, rtol=1e-10, atol=1e-12)
        # Exact: the same update code on the same v and rows (distinct, checked above) on both memories.
        torch.testing.assert_close(memories[1].memory_student, memories[0].memory_student, rtol=0, atol=0)
