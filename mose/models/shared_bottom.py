"""Shared-Bottom (Caruana 1997): one shared network, one tower per task."""

from __future__ import annotations

import torch
from torch import nn

from mose.nn.embeddings import FeatureEmbedding, InputSpec
from mose.nn.mlp import MLP
from mose.nn.towers import Towers, task_logits


class SharedBottom(nn.Module):
    """``embed -> shared MLP -> per-task towers``."""

    def __init__(self, input_spec: InputSpec, tasks: list[str], embed_dim: int = 16,
                 bottom: list[int] = (128, 64), tower: list[int] = (32,), dropout: float = 0.0,
                 norm: str | None = None) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.embed = FeatureEmbedding(input_spec, embed_dim)
        self.bottom = MLP(self.embed.out_dim, list(bottom), dropout, norm)
        self.towers = Towers(len(self.tasks), self.bottom.out_dim, list(tower), dropout, norm)

    def shared_parameters(self) -> list[nn.Parameter]:
        """The last shared layer (GradNorm's ``W``): the bottom MLP's last linear layer."""
        linears = [m for m in self.bottom if isinstance(m, nn.Linear)]
        return list(linears[-1].parameters()) if linears else []

    def forward(self, batch: dict[str, torch.Tensor]) -> dict:
        return task_logits(self.towers(self.bottom(self.embed(batch))), self.tasks)
