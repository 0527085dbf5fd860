"""POSO (Dai et al., 2021): personalized gates that rescale a model's modules per user group.

A personalized gate ``g(x_pc) = C * sigmoid(MLP(x_pc))`` reads the personalization code ``x_pc``
(past-only user-group features: prior-activity bucket, new-user flag, activity level, days since
sign-up) and rescales a module's outputs. With the gate's last layer zeroed ``g = C / 2``, so with
``C = 2`` every POSO module computes exactly its base module.

- :class:`PosoGroupedMLP` (MLP-POSO): a gate per hidden layer of grouped MLPs (experts, towers).
- :class:`PosoAttention` (MHA-POSO): query unchanged, a light gate on the keys, personalized
  mixing of several value projections.
- :func:`poso_mix` (MMoE-POSO): each expert scaled by the personalized gate times the task gate.
"""

from __future__ import annotations

import torch
from torch import nn

from mose.nn.attention import TargetAttention
from mose.nn.embeddings import id_embedding
from mose.nn.experts import GroupedMLP


class PersonalizedGate(nn.Module):
    """``g(x_pc) = scale * sigmoid(W2 relu(W1 x_pc + b1) + b2)``: ``(*, in_dim) -> (*, out_dim)`` in ``(0, scale)``.

    >>> g = PersonalizedGate(4, 3); g.zero_last(); g(torch.randn(2, 4))
    tensor([[1., 1., 1.],
            [1., 1., 1.]], grad_fn=<MulBackward0>)
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 32, scale: float = 2.0) -> None:
        super().__init__()
        self.scale = float(scale)
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def zero_last(self) -> None:
        """Zero the last layer: the gate becomes the constant ``scale / 2``."""
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, pc: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.sigmoid(self.net(pc))


class PersonalizationCode(nn.Module):
    """Embeds the integer personalization code ``(*, P)`` (one table per column) -> ``(*, P * dim)``."""

    def __init__(self, vocab: tuple[int, ...], dim: int = 8) -> None:
        super().__init__()
        if not vocab:
            raise ValueError("POSO needs a personalization code: the dataset has no 'pcode' (re-prepare it)")
        self.tables = nn.ModuleList(id_embedding(n, dim) for n in vocab)
        self.out_dim = dim * len(vocab)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return torch.cat([t(codes[..., i]) for i, t in enumerate(self.tables)], dim=-1)


class PosoGroupedMLP(nn.Module):
    """MLP-POSO over ``G`` grouped MLPs: every hidden layer's output ``(B, G, H)`` times its gate.

    ``x (B, in_dim) | (B, G, in_dim), pc (B, pc_dim) -> (B, G, hidden[-1])``. ``self.base`` is the plain
    :class:`GroupedMLP` whose weights it uses; a linear last layer (tower logits) is not gated.
    """

    def __init__(self, groups: int, in_dim: int, hidden: list[int], pc_dim: int, dropout: float = 0.0,
                 last_activation: bool = True, gate_hidden: int = 32, scale: float = 2.0,
                 norm: str | None = None) -> None:
        super().__init__()
        self.base = GroupedMLP(groups, in_dim, hidden, dropout, last_activation, norm)
        self.groups = groups
        n_gated = len(hidden) if last_activation else len(hidden) - 1
        self.gates = nn.ModuleList(PersonalizedGate(pc_dim, groups * h, gate_hidden, scale) for h in hidden[:n_gated])
        self.out_dim = self.base.out_dim

    def forward(self, x: torch.Tensor, pc: torch.Tensor) -> torch.Tensor:
        return self.base(x, [gate(pc).unflatten(-1, (self.groups, -1)) for gate in self.gates])


class PosoAttention(nn.Module):
    """MHA-POSO around a :class:`TargetAttention` (``self.attn``, the base module).

    The query is left unchanged; the keys are scaled elementwise by a light gate (narrow hidden
    layer); the ``n_values`` value projections are mixed with personalized weights in ``(0, C)``.
    ``query (B, Dq), tokens (B, K, Dt), mask (B, K), pc (B, pc_dim) -> (B, out_dim)``.
    """

    def __init__(self, attn: TargetAttention, pc_dim: int, gate_hidden: int = 32, key_hidden: int = 8,
                 scale: float = 2.0) -> None:
        super().__init__()
        self.attn = attn
        self.key_gate = PersonalizedGate(pc_dim, attn.dim, key_hidden, scale)
        self.value_gate = PersonalizedGate(pc_dim, attn.n_values, gate_hidden, scale)
        self.out_dim = attn.out_dim

    def forward(self, query: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, pc: torch.Tensor) -> torch.Tensor:
        return self.attn(query, tokens, mask, key_scale=self.key_gate(pc), value_mix=self.value_gate(pc))


def poso_mix(experts: torch.Tensor, gates: torch.Tensor, personal: torch.Tensor) -> torch.Tensor:
    """MMoE-POSO mix: ``(B, E, H), task gates (B, T, E), personalized gates (B, E) -> (B, T, H)``.

    Works on any leading shape, e.g. stream steps ``(B, S, E, H), (B, S, T, E), (B, S, E)``.
    """
    return torch.einsum("...eh,...ge,...e->...gh", experts, gates, personal)
