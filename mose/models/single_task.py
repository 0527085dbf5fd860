"""Single-task baseline: an independent network (embeddings included) per task."""

from __future__ import annotations

import torch
from torch import nn

from mose.nn.embeddings import FeatureEmbedding, InputSpec
from mose.nn.mlp import MLP


class SingleTask(nn.Module):
    """For each task its own ``embed -> MLP -> logit``; nothing is shared between tasks."""

    def __init__(self, input_spec: InputSpec, tasks: list[str], embed_dim: int = 16,
                 hidden: list[int] = (128, 64, 32), dropout: float = 0.0,
                 norm: str | None = None) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.nets = nn.ModuleDict()
        for t in self.tasks:
            embed = FeatureEmbedding(input_spec, embed_dim)
            mlp = MLP(embed.out_dim, list(hidden), dropout, norm)
            self.nets[t] = nn.Sequential(embed, mlp, nn.Linear(mlp.out_dim, 1))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict:
        return {t: net(batch).squeeze(-1) for t, net in self.nets.items()}
