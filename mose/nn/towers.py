"""Per-task towers producing one logit per task."""

from __future__ import annotations

import torch
from torch import nn

from mose.nn.experts import GroupedMLP


class Towers(nn.Module):
    """One MLP tower per task, batched: ``(B, T, in_dim) | (B, in_dim) -> (B, T)`` logits."""

    def __init__(self, n_tasks: int, in_dim: int, hidden: list[int], dropout: float = 0.0,
                 norm: str | None = None) -> None:
        super().__init__()
        self.mlp = GroupedMLP(n_tasks, in_dim, [*hidden, 1], dropout, last_activation=False, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x).squeeze(-1)


def task_logits(logits: torch.Tensor, tasks: list[str]) -> dict[str, torch.Tensor]:
    """Split ``(B, T)`` logits into ``{task: (B,)}``."""
    return {t: logits[:, i] for i, t in enumerate(tasks)}


def step_logits(heads: nn.Module, x: torch.Tensor, tasks: list[str]) -> dict[str, torch.Tensor]:
    """Per-step heads: ``(B, S, T, H)`` through a ``GroupedLinear(T, H, 1)`` -> ``{task: (B, S)}``."""
    logits = heads(x.flatten(0, 1)).squeeze(-1).unflatten(0, x.shape[:2])
    return {t: logits[..., i] for i, t in enumerate(tasks)}
