"""Sequential task dependencies (``data.tasks.<task>.after=<parent>``): the probability chain.

A task declared ``after`` a parent (a conversion after a click) is trained and scored as the joint
event over all exposures (ESMM's "entire space"): its label is the product of its own and all its
ancestors' labels, and ``P(task) = P(task | parent) P(parent)`` down the chain. :class:`TaskChain`
holds the dependency as tensors, for the module (labels) and for the models that use it (ESMM's
product, AITM's transfer and calibrator).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from data_prep.schema import task_ancestors


LOG_P_MAX = -1e-7  # the joint probability is capped at 1 - 1e-7 (logit <= 16.1): bounded gradients


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, accurate at both ends (Maechler 2012).

    Each branch of the ``where`` gets an input where it is finite: the branch not taken still
    back-propagates ``0 * its gradient``, which is NaN where that gradient is infinite.
    """
    near_zero = x > -math.log(2.0)
    cut = torch.full_like(x, -math.log(2.0))
    return torch.where(near_zero, torch.log(-torch.expm1(torch.where(near_zero, x, cut))),
                       torch.log1p(-torch.exp(torch.where(near_zero, cut, x))))


def needs_dependency(after: dict[str, str], model: str) -> None:
    """Raise ``ValueError`` when a model that models task dependencies is given none (``after`` empty)."""
    if not after:
        raise ValueError(f"{model} needs a task dependency: declare data.tasks.<task>.after=<parent>, e.g. "
                         "'+data.tasks.convert={kind: binary, after: click}' (synthetic) or "
                         "'+data.tasks.long_view.after=is_click' (KuaiRand)")


class TaskChain(nn.Module):
    """The ``after`` dependencies of ``tasks`` as buffers (all ``(T,)`` or ``(T, T)``):

    ``ancestry[i, j]``: task ``j`` is task ``i`` or one of its ancestors; ``dependent[i]``: task ``i``
    has a parent; ``parent[i]``: its index (``i`` itself for a root).

    >>> c = TaskChain(["click", "convert"], {"convert": "click"})
    >>> c.joint_labels(torch.tensor([[1., 1.], [0., 1.], [1., 0.]]))
    tensor([[1., 1.],
            [0., 0.],
            [1., 0.]])
    """

    def __init__(self, tasks: list[str], after: dict[str, str] | None = None) -> None:
        super().__init__()
        tasks, after = list(tasks), dict(after or {})
        unknown = sorted(set(after) - set(tasks))
        if unknown:
            raise ValueError(f"task dependencies name unknown tasks {unknown}; tasks: {tasks}")
        chains = task_ancestors({t: after.get(t) for t in tasks})
        index = {t: i for i, t in enumerate(tasks)}
        ancestry = torch.eye(len(tasks), dtype=torch.bool)
        for t, chain in chains.items():
            ancestry[index[t], [index[a] for a in chain]] = True
        self.tasks, self.after = tasks, after
        self.depth = max((len(c) for c in chains.values()), default=0)  # longest chain of parents
        self.register_buffer("ancestry", ancestry, persistent=False)
        self.register_buffer("dependent", torch.tensor([t in after for t in tasks]), persistent=False)
        self.register_buffer("parent", torch.tensor([index[after.get(t, t)] for t in tasks]), persistent=False)

    @property
    def any(self) -> bool:
        return self.depth > 0

    def joint_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """``(..., T)`` labels -> each task's label times its ancestors' (0/1 for the dependent tasks)."""
        if not self.any:
            return labels
        return torch.where(self.ancestry, labels.unsqueeze(-2), 1).prod(-1)

    def joint_logits(self, conditional: torch.Tensor) -> torch.Tensor:
        """Conditional logits ``(..., T)`` (``logit P(task | parent)``, ``logit P(task)`` for a root) ->
        the joint ``logit P(task, ancestors)``: ``sum_j log sigmoid(c_j)`` over the ancestry, as a logit.

        Computed in float32 from log-probabilities (no product of small probabilities underflows),
        the joint capped at ``1 - 1e-7`` (:data:`LOG_P_MAX`); roots are returned unchanged.
        """
        c = conditional.float()
        log_p = F.logsigmoid(c) @ self.ancestry.T.to(c.dtype)  # (..., T)
        log_p = log_p.clamp_max(LOG_P_MAX)
        return torch.where(self.dependent, log_p - log1mexp(log_p), c)

    def calibration_loss(self, logits: torch.Tensor) -> torch.Tensor:
        """AITM's behavioural-expectation calibrator: ``sum_t mean_b relu(p_t - p_parent(t))`` over the
        dependent tasks, ``p = sigmoid(logits)``, ``logits (B, T)`` (any leading shape) -> scalar."""
        p = torch.sigmoid(logits.float())
        gap = torch.relu(p - p[..., self.parent]) * self.dependent
        return gap.flatten(0, -2).mean(0).sum()
