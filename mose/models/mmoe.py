"""MMoE (Ma et al., KDD 2018): shared experts, one softmax gate per task.

``top_k > 0`` swaps the dense softmax gates for noisy top-k gates (Shazeer et al., 2017): the
sparsely gated MoE as MMoE's expert layer, with its importance/load losses in ``aux["loss"]``.
``item_prior > 0`` adds to each task's logit the item's smoothed train rate for that task (a
:class:`mose.models.popularity.Popularity` with ``item_prior`` pseudo events, counted once before
training): the wide item term of a wide & deep ranker, so rare items start from their counted rate
instead of an embedding that saw a few updates (docs/poso.md, KuaiRand user split).
"""

from __future__ import annotations

import torch
from torch import nn

from mose.models.popularity import Popularity
from mose.nn.embeddings import FeatureEmbedding, InputSpec
from mose.nn.experts import GroupedMLP
from mose.nn.gates import SoftmaxGates, mix
from mose.nn.topk_gates import NoisyTopKGates
from mose.nn.towers import Towers, task_logits


class MMoE(nn.Module):
    """``embed -> E experts (one batched op) -> per-task gate mix -> per-task towers``.

    ``aux["gates"]`` holds the gate weights ``(B, T, E)``; with ``top_k`` also ``aux["loss"]``.
    """

    def __init__(self, input_spec: InputSpec, tasks: list[str], embed_dim: int = 16, n_experts: int = 4,
                 expert: list[int] = (128, 64), tower: list[int] = (32,), dropout: float = 0.0,
                 top_k: int = 0, noisy: bool = True, w_importance: float = 0.01, w_load: float = 0.01,
                 norm: str | None = None, history_by_label: bool = False, item_prior: float = 0.0) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.prior = Popularity(input_spec, self.tasks, smoothing=item_prior) if item_prior else None
        self.embed = FeatureEmbedding(input_spec, embed_dim, history_by_label=history_by_label)
        self.experts = GroupedMLP(n_experts, self.embed.out_dim, list(expert), dropout, norm=norm)
        if top_k:
            self.gates = NoisyTopKGates(self.embed.out_dim, len(self.tasks), n_experts, top_k, noisy,
                                        w_importance, w_load)
        else:
            self.gates = SoftmaxGates(self.embed.out_dim, len(self.tasks), n_experts)
        self.towers = Towers(len(self.tasks), self.experts.out_dim, list(tower), dropout, norm)

    def shared_parameters(self) -> list[nn.Parameter]:
        """The last shared layer (GradNorm's ``W``): the experts' output layer."""
        return list(self.experts.layers[-1].parameters())

    def forward(self, batch: dict[str, torch.Tensor]) -> dict:
        x = self.embed(batch)
        aux = {}
        if isinstance(self.gates, NoisyTopKGates):
            gates, aux["loss"] = self.gates(x)
        else:
            gates = self.gates(x)  # (B, T, E)
        aux["gates"] = gates
        mixed = mix(self.experts(x), gates)  # (B, T, H)
        logits = task_logits(self.towers(mixed), self.tasks)
        if self.prior is not None:
            prior = self.prior(batch)
            logits = {t: logits[t] + prior[t] for t in self.tasks}
        return {**logits, "aux": aux}
