"""Regenerate ``tests/golden/losses.json``: fixed inputs, loss values and gradients.

Run only when a loss is meant to change (``python -m tests.make_golden``); the golden
test then pins the new numbers. Inputs are stored in the file and the test re-evaluates
each loss on those stored inputs (:func:`recompute`), so the check depends neither on a
random generator's stream staying the same across torch versions nor on ``randn`` giving
the same last bits on every CPU (its Box-Muller log/cos come from the CPU's libm/SIMD code).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from methods.ckd import ckd_loss
from methods.crd import ContrastMemory, nce_loss
from methods.dkd import dkd_loss
from methods.fitnet import ConvReg, fitnet_loss
from methods.kd import kd_loss

GOLDEN = Path(__file__).parent / "golden" / "losses.json"


def _case(fn, inputs: dict, grad_of: tuple[str, ...], **kwargs) -> dict:
    tensors = {k: torch.tensor(v, dtype=torch.float64, requires_grad=k in grad_of) for k, v in inputs.items()}
    value = fn(**tensors, **kwargs)
    value.backward()
    return {
        "inputs": inputs,
        "kwargs": kwargs,
        "value": value.item(),
        "grads": {k: tensors[k].grad.tolist() for k in grad_of},
    }


def _logits(gen: torch.Generator, *shape: int, scale: float = 3.0) -> list:
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).tolist()


def _losses(dkd_target: list[int]) -> dict:
    """Case name -> the loss it pins, called with the case's stored inputs and kwargs."""

    def dkd(logits_student, logits_teacher, **kw):
        return dkd_loss(logits_student, logits_teacher, torch.tensor(dkd_target), **kw)

    def nce(x, n_data):
        return nce_loss(x, n_data)

    def regress(feature_student, feature_teacher, conv_weight):
        reg = ConvReg((2, 2, 4, 4), (2, 3, 2, 2)).double()
        with torch.no_grad():
            reg.conv.bias.zero_()
        regressed = torch.func.functional_call(reg, {"conv.weight": conv_weight}, (feature_student,))
        return fitnet_loss(regressed, feature_teacher)

    return {
        "kd_T4": kd_loss,
        "kd_T1": kd_loss,
        "ckd_tau1": ckd_loss,
        "ckd_tau05": ckd_loss,
        "dkd_a1_b8_T4": dkd,
        "dkd_a05_b2_T2": dkd,
        "nce_n50": nce,
        "fitnet_convreg": regress,
    }


def build() -> dict:
    gen = torch.Generator().manual_seed(20261122)
    s, t = _logits(gen, 4, 5), _logits(gen, 4, 5)
    target = [0, 3, 1, 4]
    loss = _losses(target)
    logit_pair = {"logits_student": s, "logits_teacher": t}
    both, student = ("logits_student", "logits_teacher"), ("logits_student",)
    cases = {
        "kd_T4": _case(loss["kd_T4"], logit_pair, both, temperature=4.0),
        "kd_T1": _case(loss["kd_T1"], logit_pair, both, temperature=1.0),
        "ckd_tau1": _case(loss["ckd_tau1"], logit_pair, student, temperature=1.0),
        "ckd_tau05": _case(loss["ckd_tau05"], logit_pair, student, temperature=0.5),
        "dkd_a1_b8_T4": _case(loss["dkd_a1_b8_T4"], logit_pair, both, alpha=1.0, beta=8.0, temperature=4.0),
        "dkd_a05_b2_T2": _case(loss["dkd_a05_b2_T2"], logit_pair, student, alpha=0.5, beta=2.0, temperature=2.0),
        "dkd": {"target": target},
    }

    scores = (torch.rand(3, 5, generator=gen, dtype=torch.float64) * 2).tolist()
    cases["nce_n50"] = _case(loss["nce_n50"], {"x": scores}, ("x",), n_data=50)

    fs, ft = _logits(gen, 2, 2, 4, 4, scale=1.0), _logits(gen, 2, 3, 2, 2, scale=1.0)
    weight = _logits(gen, 3, 2, 3, 3, scale=0.3)
    cases["fitnet_convreg"] = _case(
        loss["fitnet_convreg"],
        {"feature_student": fs, "feature_teacher": ft, "conv_weight": weight},
        ("feature_student", "conv_weight"),
    )
    cases["crd_memory"] = _memory_case(gen)
    return cases


def recompute(golden: dict) -> dict:
    """Every loss case of a golden file re-evaluated on the inputs and kwargs stored in it
    (same gradient targets); the CRD memory case replays its stored inputs in the test."""
    loss = _losses(golden["dkd"]["target"])
    return {
        name: _case(fn, golden[name]["inputs"], tuple(golden[name]["grads"]), **golden[name]["kwargs"])
        for name, fn in loss.items()
    }


def _memory_case(gen: torch.Generator) -> dict:
    n, d, k = 6, 3, 2
    memory = ContrastMemory(d, n, k, nce_t=0.5, nce_m=0.5).double()
    with torch.no_grad():
        memory.memory_student.copy_(torch.rand(n, d, generator=gen, dtype=torch.float64) - 0.5)
        memory.memory_teacher.copy_(torch.rand(n, d, generator=gen, dtype=torch.float64) - 0.5)
    start = {"memory_student": memory.memory_student.tolist(), "memory_teacher": memory.memory_teacher.tolist()}
    calls = []
    for _ in range(2):
        v_s = torch.nn.functional.normalize(torch.randn(2, d, generator=gen, dtype=torch.float64), dim=1)
        v_t = torch.nn.functional.normalize(torch.randn(2, d, generator=gen, dtype=torch.float64), dim=1)
        idx = torch.randperm(n, generator=gen)[:2]
        contrast = torch.randint(n, (2, k + 1), generator=gen)
        contrast[:, 0] = idx
        out_s, out_t = memory(v_s, v_t, idx, contrast)
        calls.append(
            {
                "v_student": v_s.tolist(),
                "v_teacher": v_t.tolist(),
                "idx": idx.tolist(),
                "contrast_idx": contrast.tolist(),
                "out_student": out_s.tolist(),
                "out_teacher": out_t.tolist(),
                "z_student": memory.z_student.item(),
                "z_teacher": memory.z_teacher.item(),
                "memory_student": memory.memory_student.tolist(),
                "memory_teacher": memory.memory_teacher.tolist(),
            }
        )
    return {"n_data": n, "feat_dim": d, "nce_k": k, "nce_t": 0.5, "nce_m": 0.5, "start": start, "calls": calls}


if __name__ == "__main__":
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(build(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
