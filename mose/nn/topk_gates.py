"""Noisy top-k gating (Shazeer et al., ICLR 2017) with its importance and load-balancing losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mose.nn.gates import gate_softmax


def cv_squared(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Squared coefficient of variation over the last dim: ``(..., E) -> (...)``; 0 for one expert."""
    if x.shape[-1] < 2:
        return x.new_zeros(x.shape[:-1])
    x = x.float()
    return x.var(-1) / (x.mean(-1) ** 2 + eps)


class NoisyTopKGates(nn.Module):
    """``G = n_gates`` sparse gates over ``E = n_experts``: ``(B, in_dim) -> (gates (B, G, E), loss ())``.

    ``z = x W_g + noise * softplus(x W_n)`` with standard normal noise (training only, when
    ``noisy``); the ``k`` largest entries of ``z`` are kept, the rest set to -inf, then softmax:
    every row has exactly ``k`` non-zero weights summing to 1 (ties aside).

    The loss is ``w_importance * CV(importance)^2 + w_load * CV(load)^2`` (Shazeer's eqs. 6-10) where
    ``importance`` is the batch sum of gate weights per expert and ``load`` the smooth estimate of
    the number of rows routed to each expert (the normal CDF of the margin to the k-th value),
    per gate, averaged over gates.
    """

    def __init__(self, in_dim: int, n_gates: int, n_experts: int, k: int = 2, noisy: bool = True,
                 w_importance: float = 0.01, w_load: float = 0.01, noise_eps: float = 1e-2) -> None:
        super().__init__()
        if not 1 <= k <= n_experts:
            raise ValueError(f"top-k gating needs 1 <= k <= n_experts, got k={k}, n_experts={n_experts}")
        self.n_gates, self.n_experts, self.k, self.noisy, self.noise_eps = n_gates, n_experts, k, noisy, noise_eps
        self.w_importance, self.w_load = w_importance, w_load
        self.proj = nn.Linear(in_dim, n_gates * n_experts)
        self.noise = nn.Linear(in_dim, n_gates * n_experts)
        nn.init.zeros_(self.proj.weight)  # as in the paper: start balanced, the noise breaks ties
        nn.init.zeros_(self.noise.weight)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        clean = self.proj(x).unflatten(-1, (self.n_gates, self.n_experts)).float()  # (B, G, E)
        if self.noisy and self.training:
            std = F.softplus(self.noise(x).unflatten(-1, (self.n_gates, self.n_experts)).float()) + self.noise_eps
            logits = clean + torch.randn_like(clean) * std
        else:
            std, logits = None, clean
        top = logits.topk(min(self.k + 1, self.n_experts), dim=-1)
        keep = torch.full_like(logits, float("-inf")).scatter(-1, top.indices[..., :self.k], top.values[..., :self.k])
        gates = gate_softmax(keep)  # exactly k non-zero per row
        return gates, self.balance_loss(gates, clean, logits, std, top.values)

    def balance_loss(self, gates: torch.Tensor, clean: torch.Tensor, noisy: torch.Tensor,
                     std: torch.Tensor | None, top: torch.Tensor) -> torch.Tensor:
        """Importance + load losses (a float32 scalar) from one forward pass's tensors."""
        w_importance, w_load = self.w_importance, self.w_load
        loss = w_importance * cv_squared(gates.sum(0)).mean()
        if w_load and std is not None and self.k < self.n_experts:
            # P(expert e still in the top k when its own noise is redrawn) (B, G, E)
            in_top = noisy >= top[..., self.k - 1: self.k]
            threshold = torch.where(in_top, top[..., self.k: self.k + 1], top[..., self.k - 1: self.k])
            prob = torch.distributions.Normal(0.0, 1.0).cdf((clean - threshold) / std)
            loss = loss + w_load * cv_squared(prob.sum(0)).mean()
        return loss  # without noise (or in eval) the load term is 0: the hard count has no gradient
