"""Deep mixture of experts (Eigen, Ranzato & Sutskever, 2013): stacked MoE layers.

Layer ``l`` has ``n_experts`` experts and a gate that both read the previous layer's mixed output
``z_{l-1}``; ``z_l = sum_i g_l(z_{l-1})_i f_{l,i}(z_{l-1})``. All layers but the last have one
gate; the last has one gate per task (multi-gate), then a tower per task.
"""

from __future__ import annotations

import torch
from torch import nn

from mose.nn.embeddings import FeatureEmbedding, InputSpec
from mose.nn.experts import GroupedMLP
from mose.nn.gates import SoftmaxGates, mix
from mose.nn.towers import Towers, task_logits


class DeepMoE(nn.Module):
    """``layers`` hidden sizes, one per MoE layer; ``aux["gates"] (B, T, E)`` the last layer's task gates,
    ``aux["layer_gates"] (B, len(layers) - 1, E)`` the earlier layers' gates."""

    def __init__(self, input_spec: InputSpec, tasks: list[str], embed_dim: int = 16, n_experts: int = 4,
                 layers: list[int] = (64, 32), tower: list[int] = (32,), dropout: float = 0.0,
                 norm: str | None = None) -> None:
        super().__init__()
        if not layers:
            raise ValueError("model.layers needs at least one MoE layer size")
        self.tasks = list(tasks)
        self.embed = FeatureEmbedding(input_spec, embed_dim)
        self.experts, self.gates = nn.ModuleList(), nn.ModuleList()
        in_dim = self.embed.out_dim
        for i, hidden in enumerate(layers):
            last = i == len(layers) - 1
            self.experts.append(GroupedMLP(n_experts, in_dim, [hidden], dropout, norm=norm))
            self.gates.append(SoftmaxGates(in_dim, len(self.tasks) if last else 1, n_experts))
            in_dim = hidden
        self.towers = Towers(len(self.tasks), in_dim, list(tower), dropout, norm)

    def shared_parameters(self) -> list[nn.Parameter]:
        """The last shared layer (GradNorm's ``W``): the last MoE layer's expert output layer."""
        return list(self.experts[-1].layers[-1].parameters())

    def forward(self, batch: dict[str, torch.Tensor]) -> dict:
        z = self.embed(batch)
        layer_gates = []
        for experts, gate in zip(self.experts[:-1], self.gates[:-1]):
            g = gate(z)  # (B, 1, E)
            layer_gates.append(g)
            z = mix(experts(z), g).squeeze(1)
        gates = self.gates[-1](z)  # (B, T, E)
        logits = self.towers(mix(self.experts[-1](z), gates))
        aux = {"gates": gates}
        if layer_gates:
            aux["layer_gates"] = torch.cat(layer_gates, 1)
        return {**task_logits(logits, self.tasks), "aux": aux}
