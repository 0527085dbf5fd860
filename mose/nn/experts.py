"""Many small MLPs evaluated as one batched operation (experts, towers)."""

from __future__ import annotations

import math

import torch
from torch import nn

from mose.nn.norm import FeatureNorm


class GroupedLinear(nn.Module):
    """``G`` independent linear maps with stacked weights ``(G, in, out)``.

    Input ``(B, in)`` (shared by all groups) or ``(B, G, in)``; output ``(B, G, out)``.
    """

    def __init__(self, groups: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        bound = 1 / math.sqrt(in_dim)
        self.weight = nn.Parameter(torch.empty(groups, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(groups, out_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return torch.einsum("bi,gio->bgo", x, self.weight) + self.bias
        return torch.einsum("bgi,gio->bgo", x, self.weight) + self.bias


class GroupedMLP(nn.Module):
    """``G`` MLPs of the same shape in one batched pass: ``(B, in) | (B, G, in) -> (B, G, hidden[-1])``.

    With ``last_activation=False`` the final layer is linear (a tower's logit layer). ``norm``
    (``batch`` | ``layer``) normalises every layer followed by an activation, before the ReLU.

    >>> GroupedMLP(4, 8, [16, 3])(torch.zeros(2, 8)).shape
    torch.Size([2, 4, 3])
    """

    def __init__(self, groups: int, in_dim: int, hidden: list[int], dropout: float = 0.0,
                 last_activation: bool = True, norm: str | None = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        self.norms = nn.ModuleList()
        for i, out_dim in enumerate(hidden):
            self.layers.append(GroupedLinear(groups, in_dim, out_dim))
            if norm and (i < len(hidden) - 1 or last_activation):
                self.norms.append(FeatureNorm(norm, (groups, out_dim)))
            in_dim = out_dim
        self.dropout = nn.Dropout(dropout)
        self.last_activation = last_activation
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1 or self.last_activation:
                if self.norms:
                    x = self.norms[i](x)
                x = self.dropout(torch.relu(x))
        return x
