"""AITM (Xi et al., KDD 2021): adaptive information transfer between sequential tasks.

Over one shared embedding each task has a tower ``q_t``. A task declared after a parent
(``data.tasks.convert.after=click``) receives what its parent passes on, ``p_{t-1} = g(z_{t-1})``
(a one-layer ReLU transfer network of the parent), and its AIT module attends over the two tokens
``{p_{t-1}, q_t}`` (:class:`~mose.nn.transfer.InformationTransfer`); ``z_t`` is the result (``q_t``
for a task without a parent) and a linear head on ``z_t`` gives the task's logit. Chains run
parent first (``depth`` batched passes over all dependent tasks).

As in the paper every task is trained on all exposures against its end-to-end label (the module
trains a dependent task against ``parent AND task``), so ``p_convert`` is ``P(click, convert)``; the
behavioural-expectation calibrator ``calibration_weight * sum_t mean relu(p_t - p_parent(t))``
(the paper's ``alpha = 0.6``; it sums over the batch, this takes the mean so the weight does not
scale with the batch size) goes in ``aux["loss"]``.
"""

from __future__ import annotations

import torch
from torch import nn

from mose.nn.embeddings import FeatureEmbedding, InputSpec
from mose.nn.experts import GroupedLinear, GroupedMLP
from mose.nn.task_chain import TaskChain, needs_dependency
from mose.nn.towers import task_logits
from mose.nn.transfer import InformationTransfer


class AITM(nn.Module):
    """``embed -> towers q (B, T, H) -> transfer + AIT down the after-chain -> z (B, T, H) -> heads``.

    ``after`` (``{task: parent}``) is given by the module from the data config. ``aux["loss"]`` the
    calibrator, ``aux["transfer_weights"] (B, Td, 2)``: each dependent task's AIT weight on the
    transferred and on its own token.
    """

    def __init__(self, input_spec: InputSpec, tasks: list[str], after: dict[str, str] | None = None,
                 embed_dim: int = 16, tower: list[int] = (128, 64, 32), dropout: float = 0.0,
                 calibration_weight: float = 0.6, norm: str | None = None) -> None:
        super().__init__()
        needs_dependency(dict(after or {}), "AITM")
        self.tasks = list(tasks)
        self.chain = TaskChain(self.tasks, after)
        dependent = [i for i, t in enumerate(self.tasks) if t in self.chain.after]
        parents = sorted({self.tasks.index(p) for p in self.chain.after.values()})
        self.register_buffer("dependent_idx", torch.tensor(dependent), persistent=False)  # (Td,)
        self.register_buffer("parent_idx", torch.tensor(parents), persistent=False)  # (Tp,)
        # for each dependent task, the slot of its parent among parent_idx
        self.register_buffer("parent_slot", torch.tensor([parents.index(int(self.chain.parent[i])) for i in dependent]),
                             persistent=False)
        self.calibration_weight = float(calibration_weight)
        self.embed = FeatureEmbedding(input_spec, embed_dim)
        self.towers = GroupedMLP(len(self.tasks), self.embed.out_dim, list(tower), dropout, norm=norm)
        dim = self.towers.out_dim
        self.transfer = GroupedMLP(len(parents), dim, [dim], dropout)  # g: what each parent passes on
        self.ait = InformationTransfer(len(dependent), dim)
        self.heads = GroupedLinear(len(self.tasks), dim, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict:
        q = self.towers(self.embed(batch))  # (B, T, H)
        z, own = q, q[:, self.dependent_idx]  # own: (B, Td, H)
        for _ in range(self.chain.depth):  # pass i settles the tasks i parents deep
            passed = self.transfer(z[:, self.parent_idx])[:, self.parent_slot]  # (B, Td, H)
            mixed, weights = self.ait(passed, own)
            z = q.index_copy(1, self.dependent_idx, mixed.to(q.dtype))
        logits = self.heads(z).squeeze(-1)  # (B, T)
        aux = {"loss": self.calibration_weight * self.chain.calibration_loss(logits), "transfer_weights": weights}
        return {**task_logits(logits, self.tasks), "aux": aux}
