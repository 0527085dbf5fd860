"""Sequence encoders over a user's history."""

from __future__ import annotations

import torch
from torch import nn


class MeanPool(nn.Module):
    """Masked mean over the sequence: ``(B, K, D), mask (B, K) -> (B, D)``; empty histories give 0."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(x.dtype)
        return (x * m).sum(1) / m.sum(1).clamp_min(1.0)
