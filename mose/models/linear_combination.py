"""Linear combination of encoders: separate encoders mixed by learned static weights.

The baseline that gating improves on: each task mixes the ``n_experts`` encoders with its own
learned weights, the same for every input (no gate network). ``mix="convex"`` (default) takes
``softmax(w_t)`` (non-negative, summing to 1); ``mix="free"`` the unconstrained weights ``w_t``
themselves, a learned linear combination (any sign, any sum; they start at ``1/E``, where
``convex`` starts too).
"""

from __future__ import annotations

import torch
from torch import nn

from mose.nn.embeddings import FeatureEmbedding, InputSpec
from mose.nn.experts import GroupedMLP
from mose.nn.gates import mix
from mose.nn.towers import Towers, task_logits

MIXES = ("convex", "free")


class LinearCombination(nn.Module):
    """``convex``: ``aux["gates"] (B, T, E)``, the static weights, equal for every row. ``free``:
    ``aux["mix_weights"] (T, E)`` instead (not a distribution, so no gate diagnostics)."""

    def __init__(self, input_spec: InputSpec, tasks: list[str], embed_dim: int = 16, n_experts: int = 4,
                 expert: list[int] = (128, 64), tower: list[int] = (32,), dropout: float = 0.0,
                 mix: str = "convex", norm: str | None = None) -> None:
        super().__init__()
        if mix not in MIXES:
            raise ValueError(f"model.mix must be one of {MIXES}, got '{mix}'")
        self.tasks, self.mix = list(tasks), mix
        self.embed = FeatureEmbedding(input_spec, embed_dim)
        self.experts = GroupedMLP(n_experts, self.embed.out_dim, list(expert), dropout, norm=norm)
        init = 0.0 if mix == "convex" else 1.0 / n_experts  # both start at the uniform mix
        self.mix_logits = nn.Parameter(torch.full((len(self.tasks), n_experts), init))
        self.towers = Towers(len(self.tasks), self.experts.out_dim, list(tower), dropout, norm)

    def shared_parameters(self) -> list[nn.Parameter]:
        """The last shared layer (GradNorm's ``W``): the encoders' output layer."""
        return list(self.experts.layers[-1].parameters())

    def weights(self) -> torch.Tensor:
        """Each task's weights over the encoders ``(T, E)``."""
        return torch.softmax(self.mix_logits, -1) if self.mix == "convex" else self.mix_logits

    def forward(self, batch: dict[str, torch.Tensor]) -> dict:
        x = self.embed(batch)
        weights = self.weights().expand(x.shape[0], -1, -1)  # (B, T, E)
        logits = self.towers(mix(self.experts(x), weights))
        aux = {"gates": weights} if self.mix == "convex" else {"mix_weights": self.mix_logits}
        return {**task_logits(logits, self.tasks), "aux": aux}
