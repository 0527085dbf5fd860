"""MMoE (Ma et al., KDD 2018): shared experts, one softmax gate per task."""

from __future__ import annotations

import torch
from torch import nn

from mose.nn.embeddings import FeatureEmbedding, InputSpec
from mose.nn.experts import GroupedMLP
from mose.nn.gates import SoftmaxGates, mix
from mose.nn.towers import Towers, task_logits


class MMoE(nn.Module):
    """``embed -> E experts (one batched op) -> per-task gate mix -> per-task towers``.

    ``aux["gates"]`` holds the gate weights ``(B, T, E)``.
    """

    def __init__(self, input_spec: InputSpec, tasks: list[str], embed_dim: int = 16, n_experts: int = 4,
                 expert: list[int] = (128, 64), tower: list[int] = (32,), dropout: float = 0.0) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.embed = FeatureEmbedding(input_spec, embed_dim)
        self.experts = GroupedMLP(n_experts, self.embed.out_dim, list(expert), dropout)
        self.gates = SoftmaxGates(self.embed.out_dim, len(self.tasks), n_experts)
        self.towers = Towers(len(self.tasks), self.experts.out_dim, list(tower), dropout)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict:
        x = self.embed(batch)
        gates = self.gates(x)  # (B, T, E)
        mixed = mix(self.experts(x), gates)  # (B, T, H)
        return {**task_logits(self.towers(mixed), self.tasks), "aux": {"gates": gates}}
