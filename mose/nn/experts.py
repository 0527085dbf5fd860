"""Many small MLPs evaluated as one batched operation (experts, towers)."""

from __future__ import annotations

import math

import torch
from torch import nn

from mose.nn.norm import FeatureNorm


class GroupedLinear(nn.Module):
    """``G`` independent linear maps with stacked weights ``(G, in_dim, out_dim)``.

    Input ``(B, in_dim)`` (shared by all groups) or ``(B, G, in_dim)``; output ``(B, G, out_dim)``.
    """

    def __init__(self, groups: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        bound = 1 / math.sqrt(in_dim)
        self.weight = nn.Parameter(torch.empty(groups, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(groups, out_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the bias is added inside the matrix product (addmm / baddbmm), not as a separate pass;
        # a (B, G, in_dim) input is read as (G, B, in_dim) and the output is a (G, B, out_dim) tensor
        # viewed as (B, G, out_dim), so a stack of layers never copies to swap axes (~5% of an MMoE step)
        groups, in_dim, out_dim = self.weight.shape
        if x.dim() == 2:  # one input shared by all groups: a single (B, in_dim) @ (in_dim, G * out_dim)
            weight = self.weight.transpose(0, 1).reshape(in_dim, groups * out_dim)
            return torch.addmm(self.bias.reshape(-1), x, weight).view(-1, groups, out_dim)
        return torch.baddbmm(self.bias.unsqueeze(1), x.transpose(0, 1), self.weight).transpose(0, 1)


class GroupedMLP(nn.Module):
    """``G`` MLPs of the same shape in one pass: ``(B, in_dim) | (B, G, in_dim) -> (B, G, hidden[-1])``.

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

    def forward(self, x: torch.Tensor, scales: list[torch.Tensor] | None = None) -> torch.Tensor:
        """``scales[i]`` ``(B, G, hidden[i])``, if given, multiplies activated layer ``i`` (POSO's gates)."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1 or self.last_activation:
                if self.norms:
                    x = self.norms[i](x)
                x = self.dropout(torch.relu(x))
                if scales is not None:
                    x = x * scales[i]
        return x
