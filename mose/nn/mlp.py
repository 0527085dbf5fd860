"""Plain feed-forward stack."""

from __future__ import annotations

from torch import nn

from mose.nn.norm import FeatureNorm


class MLP(nn.Sequential):
    """``Linear -> [norm] -> ReLU -> Dropout`` per hidden size: ``(..., in_dim) -> (..., hidden[-1])``.

    ``norm``: ``batch`` | ``layer`` | None (:class:`mose.nn.norm.FeatureNorm`).

    >>> MLP(8, [16, 4])(torch.zeros(2, 8)).shape
    torch.Size([2, 4])
    """

    def __init__(self, in_dim: int, hidden: list[int], dropout: float = 0.0, norm: str | None = None) -> None:
        layers: list[nn.Module] = []
        for out_dim in hidden:
            layers += [nn.Linear(in_dim, out_dim), *([FeatureNorm(norm, (out_dim,))] if norm else []), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            in_dim = out_dim
        super().__init__(*layers)
        self.out_dim = in_dim
