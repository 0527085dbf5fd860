"""Jacobs et al. (1991) mixture of whole predictors: the competitive likelihood and the blended output."""

from __future__ import annotations

import torch
import torch.nn.functional as F

TINY = 1e-12


def expert_log_likelihood(expert_logits: torch.Tensor, target: torch.Tensor, binary: torch.Tensor) -> torch.Tensor:
    """Per-expert log-likelihood ``(B, T, E)`` of the targets ``(B, T)``.

    Regression: ``-1/2 (y - o_i)^2`` (unit-variance Gaussian, constant dropped, as in Jacobs et al.);
    binary: ``log Bernoulli(y | sigmoid(o_i))``. ``binary`` is a ``(T,)`` bool mask.
    """
    y = target.unsqueeze(-1).expand_as(expert_logits)
    bern = -F.binary_cross_entropy_with_logits(expert_logits, y, reduction="none")
    gauss = -0.5 * (y - expert_logits) ** 2
    return torch.where(binary[:, None], bern, gauss)


def competitive_nll(expert_logits: torch.Tensor, gates: torch.Tensor, target: torch.Tensor,
                    binary: torch.Tensor) -> torch.Tensor:
    """``-log sum_i p_i L_i(y)`` per row and task: ``(B, T, E), (B, T, E), (B, T) -> (B, T)``.

    For a regression task this is Jacobs et al.'s ``-log sum_i p_i exp(-1/2 ||y - o_i||^2)``.
    """
    log_p = gates.float().clamp_min(TINY).log()
    return -torch.logsumexp(log_p + expert_log_likelihood(expert_logits.float(), target, binary), dim=-1)


def mixture_logits(expert_logits: torch.Tensor, gates: torch.Tensor, binary: torch.Tensor) -> torch.Tensor:
    """The mixture's prediction as a logit ``(B, T)``: log-odds of ``sum_i p_i sigmoid(o_i)`` for binary
    tasks, the mean ``sum_i p_i o_i`` for regression tasks."""
    o, log_p = expert_logits.float(), gates.float().clamp_min(TINY).log()
    log_odds = torch.logsumexp(log_p + F.logsigmoid(o), -1) - torch.logsumexp(log_p + F.logsigmoid(-o), -1)
    return torch.where(binary, log_odds, (gates.float() * o).sum(-1))
