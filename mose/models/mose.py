"""MoSE (Qin et al., KDD 2020): a multi-gate mixture of sequential (LSTM) experts.

A shared-bottom LSTM reads the user's stream, ``n_experts`` LSTM experts read its output, a
softmax gate per task mixes the experts and an LSTM tower per task predicts that task at every
step. With ``cell="ff"`` every LSTM becomes a per-step MLP: the feed-forward MMoE baseline on
the same stream data.

Gates: ``gate="step"`` (default) computes a gate at each step from the bottom output at that
step (causal). ``gate="window"`` computes one gate per window from the bottom outputs of all
its steps, as in the paper; it sees later steps, so it is causal only with
``data.windows=next_step`` (each window scores its last event alone), and ``mose-train`` refuses it
with ``data.windows=chunks`` (``mose.config_checks.check_gate_windows``).

``poso=True`` adds POSO (Dai et al., 2021) on the experts, which the POSO paper did not do: each
expert's output at each step is scaled by a personalized gate ``C * sigmoid(MLP(x_pc))`` of the
step's past-only personalization code ``batch["pcode"] (B, S, P)``, times the task gate.
"""

from __future__ import annotations

import torch
from torch import nn

from mose.nn.embeddings import FeatureEmbedding, InputSpec
from mose.nn.encoders import MeanPool
from mose.nn.experts import GroupedLinear
from mose.nn.gates import SoftmaxGates
from mose.nn.poso import PersonalizationCode, PersonalizedGate, poso_mix
from mose.nn.sequence import GroupedSequence
from mose.nn.towers import step_logits

GATES = ("step", "window")


class MoSE(nn.Module):
    """``(B, S)`` stream steps -> ``{task: (B, S) logits}``; ``aux["gates"]`` is ``(B, S, T, E)``."""

    def __init__(self, input_spec: InputSpec, tasks: list[str], embed_dim: int = 16, cell: str = "lstm",
                 bottom_hidden: int = 64, bottom_layers: int = 1, n_experts: int = 4, expert_hidden: int = 32,
                 expert_layers: int = 1, tower_hidden: int = 16, tower_layers: int = 1, gate: str = "step",
                 dropout: float = 0.0, poso: bool = False, poso_scale: float = 2.0, poso_hidden: int = 32,
                 pc_dim: int = 8) -> None:
        super().__init__()
        if gate not in GATES:
            raise ValueError(f"model.gate must be one of {GATES}, got '{gate}'")
        self.tasks, self.gate = list(tasks), gate
        n = len(self.tasks)
        self.embed = FeatureEmbedding(input_spec, embed_dim, history=False, previous_labels=True)
        self.bottom = GroupedSequence(1, self.embed.out_dim, bottom_hidden, bottom_layers, cell, dropout)
        self.experts = GroupedSequence(n_experts, bottom_hidden, expert_hidden, expert_layers, cell, dropout)
        self.gates = SoftmaxGates(bottom_hidden, n, n_experts)
        self.towers = GroupedSequence(n, expert_hidden, tower_hidden, tower_layers, cell, dropout,
                                      shared_input=False)
        self.heads = GroupedLinear(n, tower_hidden, 1)
        self.pool = MeanPool()
        self.pc = PersonalizationCode(tuple(input_spec.pcode_vocab), pc_dim) if poso else None
        self.expert_gate = PersonalizedGate(self.pc.out_dim, n_experts, poso_hidden, poso_scale) if poso else None

    def shared_parameters(self) -> list[nn.Parameter]:
        """The last shared layer (GradNorm's ``W``): the sequential experts' last layer, which every task gate reads."""
        return self.experts.last_layer_parameters()

    def forward(self, batch: dict[str, torch.Tensor]) -> dict:
        h = self.bottom(self.embed(batch)).squeeze(2)  # (B, S, Hb)
        experts = self.experts(h)  # (B, S, E, He)
        if self.gate == "step":
            gates = self.gates(h)  # (B, S, T, E)
        else:
            window = self.pool(h, batch["valid"])  # (B, Hb)
            gates = self.gates(window).unsqueeze(1).expand(-1, h.shape[1], -1, -1)
        aux = {"gates": gates}
        if self.expert_gate is not None:
            aux["poso_gates"] = personal = self.expert_gate(self.pc(batch["pcode"]))  # (B, S, E)
            mixed = poso_mix(experts, gates, personal)
        else:
            mixed = torch.einsum("bseh,bste->bsth", experts, gates)  # (B, S, T, He)
        return {**step_logits(self.heads, self.towers(mixed), self.tasks), "aux": aux}
