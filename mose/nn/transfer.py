"""AITM's adaptive information transfer (Xi et al., KDD 2021), batched over the dependent tasks."""

from __future__ import annotations

import math

import torch
from torch import nn

from mose.nn.experts import GroupedLinear
from mose.nn.gates import gate_softmax


class InformationTransfer(nn.Module):
    """The AIT module of ``G`` dependent tasks at once: attention over two tokens per task.

    ``transferred (B, G, H)`` (``p_{t-1}``: what the parent task passes on) and ``own (B, G, H)``
    (``q_t``: the task's own tower output) -> ``(B, G, H)``:
    ``z_t = sum_u w_u h1(u)``, ``w_u = softmax_u(<h2(u), h3(u)> / sqrt(H))`` over ``u in {p_{t-1}, q_t}``,
    with ``h1, h2, h3`` linear maps of each task (one grouped layer). The weights ``(B, G, 2)``
    (transferred, own) are returned too.
    """

    def __init__(self, groups: int, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.proj = GroupedLinear(groups, dim, 3 * dim)  # h1 (value), h2 (query), h3 (key) of each task

    def forward(self, transferred: torch.Tensor, own: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.stack([transferred, own], dim=0)  # (2, B, G, H)
        value, query, key = self.proj(tokens.flatten(0, 1)).unflatten(0, tokens.shape[:2]).chunk(3, dim=-1)
        weights = gate_softmax(((query * key).sum(-1) / math.sqrt(self.dim)).movedim(0, -1))  # (B, G, 2)
        return torch.einsum("bgu,ubgh->bgh", weights.to(value.dtype), value), weights
