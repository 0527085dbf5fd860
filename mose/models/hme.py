"""Hierarchical mixture of experts (Jordan & Jacobs, 1994): a tree of predictors, one gating tree per task.

The leaves are whole predictors: ``n_branches * n_experts`` leaf experts (one batched MLP), each
with its own output tower per task, so leaf ``l`` predicts task ``t`` itself (``o_lt``). Per task a
two-level gating tree weighs the leaves: a top gate over ``n_branches`` branches and, per branch,
a gate over its ``n_experts`` leaves; a leaf's weight is the product of the gate weights on its path,
``p(g) p(e | g)``. The task's prediction is the gated mixture of the leaves' predictions,
``sum_g p(g) sum_e p(e|g) P_ge``: for binary tasks the mixture of the leaves' *probabilities*
``sum_l p_l sigmoid(o_lt)`` (the classic HME likelihood, a mixture of Bernoullis), for regression
tasks the mixture mean ``sum_l p_l o_lt`` (unit-variance Gaussian leaves).

The model returns the leaves' logits ``aux["expert_logits"] (B, T, E)`` and the leaf weights
``aux["gates"] (B, T, E)`` (``E = n_branches * n_experts`` leaves); as for Jacobs et al.'s competitive OMoE, :class:`mose.module.MultiTaskModule`
trains the mixture's negative log-likelihood ``-log sum_l p_l P(y | o_lt)``
(:func:`mose.nn.mixture.competitive_nll`) and scores the mixture prediction
(:func:`mose.nn.mixture.mixture_logits`) in evaluation, ``mose-predict`` and ``mose-export`` alike.
The model's own task outputs (``out[task]``, used only outside the module) are the gate-weighted
mean of the leaf logits, which equals the chosen leaf's logit when the tree picks one leaf.
"""

from __future__ import annotations

import torch
from torch import nn

from mose.nn.embeddings import FeatureEmbedding, InputSpec
from mose.nn.experts import GroupedMLP
from mose.nn.gates import SoftmaxGates
from mose.nn.towers import task_logits


class HME(nn.Module):
    """``aux["gates"] (B, T, E)`` leaf weights (``E = n_branches * n_experts`` leaves, branch-major),
    ``aux["branch_gates"] (B, T, n_branches)``, ``aux["expert_logits"] (B, T, E)`` each leaf's logit per task."""

    def __init__(self, input_spec: InputSpec, tasks: list[str], embed_dim: int = 16, n_branches: int = 2,
                 n_experts: int = 2, expert: list[int] = (64,), tower: list[int] = (32,),
                 dropout: float = 0.0, norm: str | None = None) -> None:
        super().__init__()
        self.tasks, self.n_branches, self.n_experts = list(tasks), n_branches, n_experts
        n, self.n_leaves = len(self.tasks), n_branches * n_experts
        self.embed = FeatureEmbedding(input_spec, embed_dim)
        self.experts = GroupedMLP(self.n_leaves, self.embed.out_dim, list(expert), dropout, norm=norm)
        # one tower per (leaf, task), leaf-major: group e * T + t reads leaf e's output
        self.towers = GroupedMLP(self.n_leaves * n, self.experts.out_dim, [*tower, 1], dropout,
                                 last_activation=False, norm=norm)
        self.top = SoftmaxGates(self.embed.out_dim, n, n_branches)
        self.lower = SoftmaxGates(self.embed.out_dim, n * n_branches, n_experts)

    def shared_parameters(self) -> list[nn.Parameter]:
        """The last shared layer (GradNorm's ``W``): the leaf experts' output layer, read by every task's tower."""
        return list(self.experts.layers[-1].parameters())

    def leaf_gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Leaf weights ``(B, T, E)`` (path products) and the top gates ``(B, T, n_branches)`` of input ``(B, D)``."""
        top = self.top(x)  # (B, T, n_branches)
        lower = self.lower(x).unflatten(1, (len(self.tasks), self.n_branches))  # (B, T, n_branches, n_experts)
        return (top.unsqueeze(-1) * lower).flatten(2), top

    def forward(self, batch: dict[str, torch.Tensor]) -> dict:
        x = self.embed(batch)
        gates, top = self.leaf_gates(x)
        leaves = self.experts(x)  # (B, E, H)
        per_task = leaves.repeat_interleave(len(self.tasks), 1)  # (B, E * T, H)
        expert_logits = self.towers(per_task).view(x.shape[0], self.n_leaves, -1).transpose(1, 2)  # (B, T, E)
        logits = (gates * expert_logits).sum(-1)  # (B, T); the module scores the mixture instead
        aux = {"gates": gates, "branch_gates": top, "expert_logits": expert_logits}
        return {**task_logits(logits, self.tasks), "aux": aux}
