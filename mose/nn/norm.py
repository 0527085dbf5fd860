"""Normalisation of hidden layers (experts, towers, bottoms): ``batch`` or ``layer``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("batch", "layer")


class FeatureNorm(nn.Module):
    """Normalises ``(..., *shape)`` activations; ``shape`` is ``(H,)`` or ``(G, H)`` for ``G`` groups.

    ``batch``: BatchNorm over every leading position (each of the ``G * H`` features has its own
    statistics and affine), as in the DeepCTR family of rankers. ``layer``: LayerNorm over ``H``
    per position, with a per-group affine. Output has the input's shape.
    """

    def __init__(self, kind: str, shape: tuple[int, ...]) -> None:
        super().__init__()
        if kind not in NORMS:
            raise ValueError(f"model.norm must be one of {NORMS} or null, got {kind!r}")
        self.kind, self.shape = kind, tuple(shape)
        if kind == "batch":
            self.bn = nn.BatchNorm1d(math.prod(self.shape))
        else:
            self.weight = nn.Parameter(torch.ones(self.shape))
            self.bias = nn.Parameter(torch.zeros(self.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "batch":
            return self.bn(x.reshape(-1, self.bn.num_features)).reshape(x.shape)
        return F.layer_norm(x, self.shape[-1:]) * self.weight + self.bias
