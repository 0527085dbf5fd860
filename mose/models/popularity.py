"""Item popularity: the trivial baseline every results table shows beside the models.

Per task, each item's smoothed train-split mean of the target: for a binary task the positive
rate ``(pos_i + a * p) / (n_i + a)`` (``p`` the train positive rate, ``a = smoothing`` pseudo
events), as a logit; for a regression task the same smoothed mean of the standardised target.
Items unseen in train (OOV) get ``p``. The counts come from one pass over the train split before
training (``fit_counts``, called by :class:`mose.module.MultiTaskModule`); the only trained
parameter is a per-task logit offset (a calibration shift: it changes no AUC or GAUC). Every user
gets the same ranking of items, so its GAUC is what item popularity alone achieves.

    model = Popularity(spec, ["click", "watch_time"])
    model.fit_counts([(item (M,), z (M, T))], binary (T,))
    model(batch)["click"]      # (B,) or (B, S): logits of the items' smoothed rates
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from mose.nn.embeddings import InputSpec

EPS = 1e-6


class Popularity(nn.Module):
    """Smoothed per-item train mean of each task's target; ``smoothing`` pseudo events at the global mean."""

    def __init__(self, input_spec: InputSpec, tasks: list[str], smoothing: float = 20.0) -> None:
        super().__init__()
        self.tasks, self.smoothing = list(tasks), float(smoothing)
        n_items, n_tasks = input_spec.n_items, len(self.tasks)
        self.register_buffer("sums", torch.zeros(n_items, n_tasks, dtype=torch.float64))  # (I, T)
        self.register_buffer("counts", torch.zeros(n_items, dtype=torch.float64))          # (I,)
        self.register_buffer("binary", torch.ones(n_tasks, dtype=torch.bool))              # (T,)
        self.offset = nn.Parameter(torch.zeros(n_tasks))                                   # (T,)

    @torch.no_grad()
    def fit_counts(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], binary: torch.Tensor) -> None:
        """Count the train split: ``batches`` of ``(item (M,), target (M, T))`` (binary labels 0/1, regression
        targets standardised); replaces earlier counts."""
        self.sums.zero_()
        self.counts.zero_()
        self.binary.copy_(binary)
        for item, target in batches:
            item = item.to(self.counts.device).long()
            self.sums.index_add_(0, item, target.to(self.sums))
            self.counts.index_add_(0, item, torch.ones_like(item, dtype=torch.float64))

    def rates(self) -> torch.Tensor:
        """``(I, T)`` smoothed per-item means (binary: probabilities, regression: standardised targets)."""
        prior = self.sums.sum(0) / self.counts.sum().clamp_min(1.0)  # (T,)
        return (self.sums + self.smoothing * prior) / (self.counts[:, None] + self.smoothing)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict:
        rate = self.rates()[batch["item"]].float()  # (*, T)
        logit = torch.where(self.binary, torch.logit(rate.clamp(EPS, 1 - EPS)), rate) + self.offset
        return {t: logit[..., i] for i, t in enumerate(self.tasks)} | {"aux": {}}
