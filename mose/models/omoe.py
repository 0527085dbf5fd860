"""One-gate MoE (OMoE): shared experts, a single softmax gate for every task.

``mixture="hidden"`` (default) is the MMoE paper's OMoE baseline: the gate mixes the experts'
hidden outputs and a tower per task reads the mix. ``mixture="cooperative"`` and
``"competitive"`` are Jacobs et al.'s (1991) adaptive mixture of local experts: each expert is a
whole predictor (its MLP plus a linear output per task), the output is the gate-blended
``sum_i p_i o_i``; *cooperative* trains that blend with the task loss (squared error for
regression), *competitive* with the mixture likelihood ``-log sum_i p_i exp(-1/2 ||y - o_i||^2)``
(``aux["expert_logits"]``, which :class:`mose.module.MultiTaskModule` turns into that loss; binary
tasks use the Bernoulli likelihood of each expert instead of the Gaussian).
"""

from __future__ import annotations

import torch
from torch import nn

from mose.nn.embeddings import FeatureEmbedding, InputSpec
from mose.nn.experts import GroupedLinear, GroupedMLP
from mose.nn.gates import SoftmaxGates, mix
from mose.nn.towers import Towers, task_logits

MIXTURES = ("hidden", "cooperative", "competitive")


class OMoE(nn.Module):
    """``embed -> E experts -> one gate (B, E) -> towers``; ``aux["gates"]`` is that gate repeated ``(B, T, E)``."""

    def __init__(self, input_spec: InputSpec, tasks: list[str], embed_dim: int = 16, n_experts: int = 4,
                 expert: list[int] = (128, 64), tower: list[int] = (32,), dropout: float = 0.0,
                 mixture: str = "hidden", norm: str | None = None) -> None:
        super().__init__()
        if mixture not in MIXTURES:
            raise ValueError(f"model.mixture must be one of {MIXTURES}, got '{mixture}'")
        self.tasks, self.mixture = list(tasks), mixture
        self.embed = FeatureEmbedding(input_spec, embed_dim)
        self.experts = GroupedMLP(n_experts, self.embed.out_dim, list(expert), dropout, norm=norm)
        self.gate = SoftmaxGates(self.embed.out_dim, 1, n_experts)
        if mixture == "hidden":
            self.towers = Towers(len(self.tasks), self.experts.out_dim, list(tower), dropout, norm)
        else:  # each expert predicts every task itself
            self.heads = GroupedLinear(n_experts, self.experts.out_dim, len(self.tasks))

    def shared_parameters(self) -> list[nn.Parameter]:
        """The last shared layer (GradNorm's ``W``): the experts' output layer."""
        return list(self.experts.layers[-1].parameters())

    def forward(self, batch: dict[str, torch.Tensor]) -> dict:
        x = self.embed(batch)
        gate = self.gate(x)  # (B, 1, E)
        experts = self.experts(x)  # (B, E, H)
        gates = gate.expand(-1, len(self.tasks), -1)  # (B, T, E)
        aux = {"gates": gates}
        if self.mixture == "hidden":
            logits = self.towers(mix(experts, gate).squeeze(1))  # (B, T)
        else:
            expert_logits = self.heads(experts).transpose(1, 2)  # (B, T, E): o_i per task
            logits = (gates * expert_logits).sum(-1)  # the blended output
            if self.mixture == "competitive":
                aux["expert_logits"] = expert_logits
        return {**task_logits(logits, self.tasks), "aux": aux}
