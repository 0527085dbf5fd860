"""CGC and PLE (Tang et al., RecSys 2020): task-specific and shared experts, progressive extraction.

``levels=1`` is CGC (Customized Gate Control): one :class:`ExtractionLayer` whose task gates mix
the task's own experts with the shared ones. ``levels>1`` is PLE: stacked extraction layers, each
but the last with a shared gate feeding the next level's shared experts; task ``t``'s experts
at level ``l+1`` read task ``t``'s output of level ``l``.
"""

from __future__ import annotations

import torch
from torch import nn

from mose.nn.embeddings import FeatureEmbedding, InputSpec
from mose.nn.extraction import ExtractionLayer
from mose.nn.towers import Towers, task_logits


class PLE(nn.Module):
    """``aux["gates"] (B, T, T*n_specific + n_shared)`` the last level's task gates (0 on other tasks' experts)."""

    def __init__(self, input_spec: InputSpec, tasks: list[str], embed_dim: int = 16, levels: int = 2,
                 n_specific: int = 1, n_shared: int = 2, expert: list[int] = (64,), tower: list[int] = (32,),
                 dropout: float = 0.0, norm: str | None = None) -> None:
        super().__init__()
        if levels < 1:
            raise ValueError(f"model.levels must be >= 1, got {levels}")
        self.tasks = list(tasks)
        n = len(self.tasks)
        self.embed = FeatureEmbedding(input_spec, embed_dim)
        self.levels = nn.ModuleList()
        in_dim = self.embed.out_dim
        for level in range(levels):
            layer = ExtractionLayer(n, in_dim, list(expert), n_specific, n_shared, level < levels - 1, dropout, norm)
            self.levels.append(layer)
            in_dim = layer.out_dim
        self.towers = Towers(n, in_dim, list(tower), dropout, norm)

    def shared_parameters(self) -> list[nn.Parameter]:
        """The last shared layer (GradNorm's ``W``): the last level's expert output layer (one batched
        tensor, so a task's gradient there covers the shared experts and its own, never another task's)."""
        return list(self.levels[-1].experts.layers[-1].parameters())

    def forward(self, batch: dict[str, torch.Tensor]) -> dict:
        x = self.embed(batch)
        task_x, shared_x = x, x
        for layer in self.levels:
            task_x, shared_x, gates = layer(task_x, shared_x)
        return {**task_logits(self.towers(task_x), self.tasks), "aux": {"gates": gates}}
