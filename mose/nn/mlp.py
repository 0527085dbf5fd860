"""Plain feed-forward stack."""

from __future__ import annotations

from torch import nn


class MLP(nn.Sequential):
    """``Linear -> ReLU -> Dropout`` per hidden size: ``(..., in_dim) -> (..., hidden[-1])``.

    >>> MLP(8, [16, 4])(torch.zeros(2, 8)).shape
    torch.Size([2, 4])
    """

    def __init__(self, in_dim: int, hidden: list[int], dropout: float = 0.0) -> None:
        layers: list[nn.Module] = []
        for out_dim in hidden:
            layers += [nn.Linear(in_dim, out_dim), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            in_dim = out_dim
        super().__init__(*layers)
        self.out_dim = in_dim
