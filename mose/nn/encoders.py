"""Sequence encoders over a user's history."""

from __future__ import annotations

import torch
from torch import nn


class MeanPool(nn.Module):
    """Masked mean over the sequence: ``(*, K, D), mask (*, K) -> (*, D)``; empty histories give 0."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(x.dtype)
        return (x * m).sum(-2) / m.sum(-2).clamp_min(1.0)
