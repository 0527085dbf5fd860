"""The MoSE paper's baselines on stream data, each with an LSTM or a feed-forward cell.

single-task (a network per task), multi-head (one shared network, a linear head per task) and
shared-bottom (a shared network, a tower per task). The fourth pair is ``MoSE`` itself
(``cell="lstm"``) and its feed-forward MMoE (``cell="ff"``), in ``mose.models.mose``.
All map ``(B, S)`` stream steps to ``{task: (B, S) logits}``.
"""

from __future__ import annotations

import torch
from torch import nn

from mose.nn.embeddings import FeatureEmbedding, InputSpec
from mose.nn.experts import GroupedLinear
from mose.nn.sequence import GroupedSequence
from mose.nn.towers import step_logits


class StreamSingleTask(nn.Module):
    """A separate embedding and sequence network per task (batched as groups)."""

    def __init__(self, input_spec: InputSpec, tasks: list[str], embed_dim: int = 16, cell: str = "lstm",
                 hidden: int = 64, num_layers: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.embeds = nn.ModuleList(
            FeatureEmbedding(input_spec, embed_dim, history=False, previous_labels=True) for _ in self.tasks)
        self.net = GroupedSequence(len(self.tasks), self.embeds[0].out_dim, hidden, num_layers, cell, dropout,
                                   shared_input=False)
        self.heads = GroupedLinear(len(self.tasks), hidden, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict:
        x = torch.stack([e(batch) for e in self.embeds], dim=2)  # (B, S, T, D)
        return step_logits(self.heads, self.net(x), self.tasks)


class StreamMultiHead(nn.Module):
    """One shared sequence network; a linear head per task."""

    def __init__(self, input_spec: InputSpec, tasks: list[str], embed_dim: int = 16, cell: str = "lstm",
                 hidden: int = 64, num_layers: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.embed = FeatureEmbedding(input_spec, embed_dim, history=False, previous_labels=True)
        self.net = GroupedSequence(1, self.embed.out_dim, hidden, num_layers, cell, dropout)
        self.heads = GroupedLinear(len(self.tasks), hidden, 1)

    def shared_parameters(self) -> list[nn.Parameter]:
        """The last shared layer (GradNorm's ``W``): the shared network's last layer, under every head."""
        return self.net.last_layer_parameters()

    def forward(self, batch: dict[str, torch.Tensor]) -> dict:
        h = self.net(self.embed(batch)).expand(-1, -1, len(self.tasks), -1)
        return step_logits(self.heads, h, self.tasks)


class StreamSharedBottom(nn.Module):
    """A shared sequence network, then a sequence tower per task."""

    def __init__(self, input_spec: InputSpec, tasks: list[str], embed_dim: int = 16, cell: str = "lstm",
                 bottom_hidden: int = 64, bottom_layers: int = 1, tower_hidden: int = 32, tower_layers: int = 1,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.embed = FeatureEmbedding(input_spec, embed_dim, history=False, previous_labels=True)
        self.bottom = GroupedSequence(1, self.embed.out_dim, bottom_hidden, bottom_layers, cell, dropout)
        self.towers = GroupedSequence(len(self.tasks), bottom_hidden, tower_hidden, tower_layers, cell, dropout)
        self.heads = GroupedLinear(len(self.tasks), tower_hidden, 1)

    def shared_parameters(self) -> list[nn.Parameter]:
        """The last shared layer (GradNorm's ``W``): the shared bottom's last layer."""
        return self.bottom.last_layer_parameters()

    def forward(self, batch: dict[str, torch.Tensor]) -> dict:
        return step_logits(self.heads, self.towers(self.bottom(self.embed(batch)).squeeze(2)), self.tasks)
