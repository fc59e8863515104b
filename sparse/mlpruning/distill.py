"""Distillation loss of MLPruning: KL on the logits at a temperature plus hidden-state MSE.

``loss = (1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
+ hidden_mse * mean_l MSE(h_student_l, h_teacher_l)`` over the hidden states both models return with
``output_hidden_states=True`` (embeddings and every layer's output). Pruning never changes the residual
width, so student and teacher hidden states have the same shape when the student is the pruned teacher.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["distill_loss", "hidden_mse_loss"]


def hidden_mse_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over layers of the MSE between hidden states ``[B, L, H]`` (fp32 scalar).

    Raises:
        ValueError: different numbers of hidden states or shapes.
    """
    if len(student) != len(teacher) or not student:
        raise ValueError(f"teacher: expected as many hidden states as the student ({len(student)}), got {len(teacher)}")
    total = 0.0
    for i, (s, t) in enumerate(zip(student, teacher)):
        if s.shape != t.shape:
            raise ValueError(f"teacher: hidden state {i} has shape {tuple(t.shape)}, the student's {tuple(s.shape)}")
        total = total + F.mse_loss(s.float(), t.float())
    return total / len(student)


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None,
                 *, alpha: float = 0.5, temperature: float = 2.0, hidden_mse: float = 0.0,
                 student_hidden: Sequence[torch.Tensor] | None = None,
                 teacher_hidden: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """The loss of the module docstring (fp32 scalar).

    Args:
        student_logits, teacher_logits: ``[B, C]`` float; labels: ``[B]`` int64 (None: no CE term,
            ``alpha`` is then taken as 1).
        hidden_mse: weight of the hidden-state term (needs ``student_hidden`` and ``teacher_hidden``).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: expected a number in [0, 1], got {alpha!r}")
    if not temperature > 0:
        raise ValueError(f"temperature: expected a number > 0, got {temperature!r}")
    s, t = student_logits.float(), teacher_logits.float()
    kd = F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1), log_target=True,
                  reduction="batchmean") * temperature ** 2
    loss = kd if labels is None else (1.0 - alpha) * F.cross_entropy(s, labels) + alpha * kd
    if hidden_mse:
        if student_hidden is None or teacher_hidden is None:
            raise ValueError("hidden_mse: needs student_hidden and teacher_hidden (run both models with "
                             "output_hidden_states=True)")
        loss = loss + hidden_mse * hidden_mse_loss(student_hidden, teacher_hidden)
    return loss
