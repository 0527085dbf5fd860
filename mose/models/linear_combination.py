"""Linear combination of encoders: separate encoders mixed by learned static weights.

The baseline that gating improves on: each task mixes the ``n_experts`` encoders with its own
weights ``softmax(w_t)``, learned but the same for every input (no gate network).
"""

from __future__ import annotations

import torch
from torch import nn

from mose.nn.embeddings import FeatureEmbedding, InputSpec
from mose.nn.experts import GroupedMLP
from mose.nn.gates import mix
from mose.nn.towers import Towers, task_logits


class LinearCombination(nn.Module):
    """``aux["gates"] (B, T, E)``: the static weights, equal for every row."""

    def __init__(self, input_spec: InputSpec, tasks: list[str], embed_dim: int = 16, n_experts: int = 4,
                 expert: list[int] = (128, 64), tower: list[int] = (32,), dropout: float = 0.0,
                 norm: str | None = None) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.embed = FeatureEmbedding(input_spec, embed_dim)
        self.experts = GroupedMLP(n_experts, self.embed.out_dim, list(expert), dropout, norm=norm)
        self.mix_logits = nn.Parameter(torch.zeros(len(self.tasks), n_experts))
        self.towers = Towers(len(self.tasks), self.experts.out_dim, list(tower), dropout, norm)

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.experts.layers[-1].parameters())

    def forward(self, batch: dict[str, torch.Tensor]) -> dict:
        x = self.embed(batch)
        gates = torch.softmax(self.mix_logits, -1).expand(x.shape[0], -1, -1)  # (B, T, E)
        logits = self.towers(mix(self.experts(x), gates))
        return {**task_logits(logits, self.tasks), "aux": {"gates": gates}}
