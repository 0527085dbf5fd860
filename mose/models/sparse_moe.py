"""Sparsely gated MoE (Shazeer et al., ICLR 2017): one noisy top-k gate over many experts.

Only ``k`` experts get a non-zero weight per event; the importance and load-balancing losses keep
the experts equally used (``aux["loss"]``, added to the training loss by the module). The experts
run as one dense batched op (at a few dozen experts on CPU that is faster than dispatching rows);
the sparsity is in the gates. For one sparse gate per task use ``model=sparse_mmoe`` (MMoE with
``top_k``).
"""

from __future__ import annotations

import torch
from torch import nn

from mose.nn.embeddings import FeatureEmbedding, InputSpec
from mose.nn.experts import GroupedMLP
from mose.nn.gates import mix
from mose.nn.topk_gates import NoisyTopKGates
from mose.nn.towers import Towers, task_logits


class SparseMoE(nn.Module):
    """``embed -> E experts -> one top-k gate -> towers``; ``aux["gates"] (B, T, E)`` (the gate repeated)."""

    def __init__(self, input_spec: InputSpec, tasks: list[str], embed_dim: int = 16, n_experts: int = 8,
                 k: int = 2, noisy: bool = True, w_importance: float = 0.01, w_load: float = 0.01,
                 expert: list[int] = (64,), tower: list[int] = (32,), dropout: float = 0.0,
                 norm: str | None = None) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.embed = FeatureEmbedding(input_spec, embed_dim)
        self.experts = GroupedMLP(n_experts, self.embed.out_dim, list(expert), dropout, norm=norm)
        self.gate = NoisyTopKGates(self.embed.out_dim, 1, n_experts, k, noisy, w_importance, w_load)
        self.towers = Towers(len(self.tasks), self.experts.out_dim, list(tower), dropout, norm)

    def shared_parameters(self) -> list[nn.Parameter]:
        """The last shared layer (GradNorm's ``W``): the experts' output layer."""
        return list(self.experts.layers[-1].parameters())

    def forward(self, batch: dict[str, torch.Tensor]) -> dict:
        x = self.embed(batch)
        gate, loss = self.gate(x)  # (B, 1, E)
        logits = self.towers(mix(self.experts(x), gate).squeeze(1))
        return {**task_logits(logits, self.tasks),
                "aux": {"gates": gate.expand(-1, len(self.tasks), -1), "loss": loss}}
