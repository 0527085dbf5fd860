"""Hierarchical mixture of experts (Jordan & Jacobs, 1994): a two-level gating tree, one per task.

A top gate picks among ``n_branches`` branches, each branch's own gate among its
``n_experts`` leaf experts; a leaf's weight is the product of the gate weights on its path,
``p(g) p(e | g)``, so the output is ``sum_g p(g) sum_e p(e|g) o_ge``. Every task has its own tree
over the shared leaves (multi-gate, as MMoE); the leaves run as one batched op.
"""

from __future__ import annotations

import torch
from torch import nn

from mose.nn.embeddings import FeatureEmbedding, InputSpec
from mose.nn.experts import GroupedMLP
from mose.nn.gates import SoftmaxGates, mix
from mose.nn.towers import Towers, task_logits


class HME(nn.Module):
    """``aux["gates"] (B, T, n_branches * E)`` leaf weights (branch-major),
    ``aux["branch_gates"] (B, T, n_branches)``."""

    def __init__(self, input_spec: InputSpec, tasks: list[str], embed_dim: int = 16, n_branches: int = 2,
                 n_experts: int = 2, expert: list[int] = (64,), tower: list[int] = (32,),
                 dropout: float = 0.0, norm: str | None = None) -> None:
        super().__init__()
        self.tasks, self.n_branches, self.n_experts = list(tasks), n_branches, n_experts
        n = len(self.tasks)
        self.embed = FeatureEmbedding(input_spec, embed_dim)
        self.experts = GroupedMLP(n_branches * n_experts, self.embed.out_dim, list(expert), dropout, norm=norm)
        self.top = SoftmaxGates(self.embed.out_dim, n, n_branches)
        self.lower = SoftmaxGates(self.embed.out_dim, n * n_branches, n_experts)
        self.towers = Towers(n, self.experts.out_dim, list(tower), dropout, norm)

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.experts.layers[-1].parameters())

    def forward(self, batch: dict[str, torch.Tensor]) -> dict:
        x = self.embed(batch)
        top = self.top(x)  # (B, T, n_branches)
        lower = self.lower(x).unflatten(1, (len(self.tasks), self.n_branches))  # (B, T, n_branches, E)
        gates = (top.unsqueeze(-1) * lower).flatten(2)  # (B, T, n_branches * E) path products
        logits = self.towers(mix(self.experts(x), gates))
        return {**task_logits(logits, self.tasks), "aux": {"gates": gates, "branch_gates": top}}
