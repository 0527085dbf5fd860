"""ESMM (Ma et al., SIGIR 2018): the entire space multi-task model for post-click conversion.

A tower per task over one shared embedding. For a task declared after a parent
(``data.tasks.convert.after=click``) the tower predicts the conditional ``pCVR = P(convert | click)``
and the model's output is the joint ``pCTCVR = pCTR x pCVR``: the module trains it with BCE against
``click AND convert`` on every exposure, beside BCE of ``pCTR`` on click, so the CVR tower learns
only through the product and is never fitted on the clicked events alone (no sample selection
bias, and the plentiful click data trains the shared embedding). Chains multiply on
(``P(buy) = pCTR pCVR pBuy|convert``); tasks without a parent are plain towers.

The task's logit (what eval, predict and export read) is the joint's, so ``p_convert`` is
``P(click, convert)`` as ESMM defines it; the conditional pCVR is
``sigmoid(aux["conditional_logits"][:, t])``.
"""

from __future__ import annotations

import torch
from torch import nn

from mose.nn.embeddings import FeatureEmbedding, InputSpec
from mose.nn.task_chain import TaskChain, needs_dependency
from mose.nn.towers import Towers, task_logits


class ESMM(nn.Module):
    """``embed -> a tower per task -> joint logits down the after-chain``.

    ``after`` (``{task: parent}``) is given by the module from the data config.
    ``aux["conditional_logits"] (B, T)``: each tower's own logit (``logit P(task | parent)``).
    """

    def __init__(self, input_spec: InputSpec, tasks: list[str], after: dict[str, str] | None = None,
                 embed_dim: int = 16, tower: list[int] = (128, 64, 32), dropout: float = 0.0,
                 norm: str | None = None) -> None:
        super().__init__()
        needs_dependency(dict(after or {}), "ESMM")
        self.tasks = list(tasks)
        self.chain = TaskChain(self.tasks, after)
        self.embed = FeatureEmbedding(input_spec, embed_dim)
        self.towers = Towers(len(self.tasks), self.embed.out_dim, list(tower), dropout, norm)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict:
        conditional = self.towers(self.embed(batch))  # (B, T)
        logits = self.chain.joint_logits(conditional)
        return {**task_logits(logits, self.tasks), "aux": {"conditional_logits": conditional}}
