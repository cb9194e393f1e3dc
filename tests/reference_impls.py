"""Independent re-statements of the reference implementations, for parity tests.

Written in the references' own style (probability space, Python-float constants,
``params`` buffers) so that a change in ``methods/`` that drifts from them fails:
- KD, DKD: mdistiller (``mdistiller/distillers/KD.py``, ``DKD.py``)
- FitNet ConvReg, CRD memory / NCE loss / Embed: RepDistiller (``models/util.py``, ``crd/``)
- CKD: the formula of the paper / official code (InfoNCE over L2-normalised logits)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def ref_kd(logits_student, logits_teacher, temperature):
    log_pred_student = F.log_softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    loss = F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1).mean()
    return loss * temperature**2


def _gt_mask(logits, target):
    return torch.zeros_like(logits).scatter_(1, target.reshape(-1).unsqueeze(1), 1).bool()


def _other_mask(logits, target):
    return torch.ones_like(logits).scatter_(1, target.reshape(-1).unsqueeze(1), 0).bool()


def _cat_mask(t, mask1, mask2):
    return torch.cat([(t * mask1).sum(dim=1, keepdims=True), (t * mask2).sum(1, keepdims=True)], dim=1)


def ref_dkd(logits_student, logits_teacher, target, alpha, beta, temperature):
    gt_mask = _gt_mask(logits_student, target)
    other_mask = _other_mask(logits_student, target)
    pred_student = _cat_mask(F.softmax(logits_student / temperature, dim=1), gt_mask, other_mask)
    pred_teacher = _cat_mask(F.softmax(logits_teacher / temperature, dim=1), gt_mask, other_mask)
    log_pred_student = torch.log(pred_student)
    tckd = F.kl_div(log_pred_student, pred_teacher, reduction="sum") * temperature**2 / target.shape[0]
    pred_teacher_part2 = F.softmax(logits_teacher / temperature - 1000.0 * gt_mask, dim=1)
    log_pred_student_part2 = F.log_softmax(logits_student / temperature - 1000.0 * gt_mask, dim=1)
    nckd = F.kl_div(log_pred_student_part2, pred_teacher_part2, reduction="sum") * temperature**2 / target.shape[0]
    return alpha * tckd + beta * nckd


def ref_ckd(logits_student, logits_teacher, temperature):
    """Row by row, in plain arithmetic: -log( e^{<t_i,s_i>/τ} / Σ_j e^{<t_i,s_j>/τ} )."""
    s = logits_student / logits_student.norm(dim=1, keepdim=True)
    t = logits_teacher / logits_teacher.norm(dim=1, keepdim=True)
    total = 0.0
    for i in range(s.shape[0]):
        scores = torch.stack([(t[i] * s[j]).sum() / temperature for j in range(s.shape[0])])
        total = total - (scores[i] - torch.logsumexp(scores, 0))
    return total / s.shape[0]


class RefConvReg(nn.Module):
    def __init__(self, s_shape, t_shape):
        super().__init__()
        s_N, s_C, s_H, s_W = s_shape
        t_N, t_C, t_H, t_W = t_shape
        if s_H == 2 * t_H:
            self.conv = nn.Conv2d(s_C, t_C, kernel_size=3, stride=2, padding=1)
        elif s_H * 2 == t_H:
            self.conv = nn.ConvTranspose2d(s_C, t_C, kernel_size=4, stride=2, padding=1)
        elif s_H >= t_H:
            self.conv = nn.Conv2d(s_C, t_C, kernel_size=(1 + s_H - t_H, 1 + s_W - t_W))
        else:
            raise NotImplementedError
        self.bn = nn.BatchNorm2d(t_C)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class RefEmbed(nn.Module):
    def __init__(self, dim_in, dim_out=128):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x):
        x = self.linear(x.view(x.shape[0], -1))
        norm = x.pow(2).sum(1, keepdim=True).pow(1.0 / 2)
        return x.div(norm)


class RefContrastMemory(nn.Module):
    """RepDistiller's ContrastMemory: v1 = student, v2 = teacher; returns (out_v1, out_v2)."""

    def __init__(self, input_size, output_size, K, T=0.07, momentum=0.5):
        super().__init__()
        self.register_buffer("params", torch.tensor([K, T, -1, -1, momentum]))
        stdv = 1.0 / math.sqrt(input_size / 3)
        self.register_buffer("memory_v1", torch.rand(output_size, input_size).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_v2", torch.rand(output_size, input_size).mul_(2 * stdv).add_(-stdv))

    def forward(self, v1, v2, y, idx):
        K = int(self.params[0].item())
        T = self.params[1].item()
        Z_v1 = self.params[2].item()
        Z_v2 = self.params[3].item()
        momentum = self.params[4].item()
        batch_size = v1.size(0)
        output_size, input_size = self.memory_v1.shape
        weight_v1 = torch.index_select(self.memory_v1, 0, idx.view(-1)).detach().view(batch_size, K + 1, input_size)
        out_v2 = torch.exp(torch.div(torch.bmm(weight_v1, v2.view(batch_size, input_size, 1)), T))
        weight_v2 = torch.index_select(self.memory_v2, 0, idx.view(-1)).detach().view(batch_size, K + 1, input_size)
        out_v1 = torch.exp(torch.div(torch.bmm(weight_v2, v1.view(batch_size, input_size, 1)), T))
        if Z_v1 < 0:
            self.params[2] = out_v1.mean() * output_size
            Z_v1 = self.params[2].clone().detach().item()
        if Z_v2 < 0:
            self.params[3] = out_v2.mean() * output_size
            Z_v2 = self.params[3].clone().detach().item()
        out_v1 = torch.div(out_v1, Z_v1).contiguous()
        out_v2 = torch.div(out_v2, Z_v2).contiguous()
        with torch.no_grad():
            l_pos = torch.index_select(self.memory_v1, 0, y.view(-1))
            l_pos.mul_(momentum).add_(torch.mul(v1, 1 - momentum))
            self.memory_v1.index_copy_(0, y, l_pos.div(l_pos.pow(2).sum(1, keepdim=True).pow(0.5)))
            ab_pos = torch.index_select(self.memory_v2, 0, y.view(-1))
            ab_pos.mul_(momentum).add_(torch.mul(v2, 1 - momentum))
            self.memory_v2.index_copy_(0, y, ab_pos.div(ab_pos.pow(2).sum(1, keepdim=True).pow(0.5)))
        return out_v1, out_v2


def ref_contrast_loss(x, n_data, eps=1e-7):
    bsz = x.shape[0]
    m = x.size(1) - 1
    Pn = 1 / float(n_data)
    P_pos = x.select(1, 0)
    log_D1 = torch.div(P_pos, P_pos.add(m * Pn + eps)).log_()
    P_neg = x.narrow(1, 1, m)
    log_D0 = torch.div(P_neg.clone().fill_(m * Pn), P_neg.add(m * Pn + eps)).log_()
    return -(log_D1.sum(0) + log_D0.view(-1, 1).sum(0)) / bsz
