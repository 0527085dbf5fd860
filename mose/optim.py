"""The optimizer recipe: learning rate scaled up with the batch size, a gradual warm-up, a separate embedding lr.

Config (``conf/train.yaml``, group ``optim``; the default is ``scale_lr=linear``, ``warmup_steps=5``, measured
in docs/performance.md), with ``batch`` the global batch (``data.batch_size`` x devices x
``trainer.accumulate_grad_batches``; events, or windows for the per-stream layout) and ``ref_batch``
(``optim.ref_batch``, by default the data config's ``data.ref_batch``) the batch ``optim.lr`` was tuned at:

- ``scale_lr``: ``none`` | ``linear`` | ``sqrt``: above ``ref_batch`` the lr used is ``lr * k`` with
  ``k = batch / ref_batch`` (linear, Goyal et al. 2017) or ``sqrt(batch / ref_batch)`` (sqrt); a batch at or
  below ``ref_batch`` keeps ``lr`` (``k = 1``), so every run at its data config's batch trains as tuned;
- ``warmup_steps``: Goyal et al.'s gradual warm-up: the lr starts at ``lr`` and reaches ``lr * k`` linearly
  at optimizer step ``warmup_steps`` (0-based), then stays (nothing to warm when ``k = 1``);
- ``embed_lr_scale``: the embedding tables' lr as a multiple of the (scaled) lr (1: the same lr as the rest).

Example::

    >>> scaled_lr(5e-3, batch=2048, ref_batch=512, rule="sqrt")
    0.01
    >>> [warmup_factor(s, 4, k=4.0) for s in range(6)]   # of the scaled lr: from 1/k up to 1
    [0.25, 0.4375, 0.625, 0.8125, 1.0, 1.0]
"""

from __future__ import annotations

import math

import torch
from torch import nn

SCALE_RULES = ("none", "linear", "sqrt")
RECIPE_KEYS = ("scale_lr", "ref_batch", "warmup_steps", "embed_lr_scale")  # optim.<key> -> MultiTaskModule


def recipe(optim) -> dict:
    """The recipe keys of an ``optim`` config section (:data:`RECIPE_KEYS`, those it sets), as
    :class:`mose.module.MultiTaskModule` keyword arguments; the module's defaults fill the rest."""
    return {key: optim[key] for key in RECIPE_KEYS if key in optim}


def scaled_lr(lr: float, batch: int, ref_batch: int, rule: str = "none") -> float:
    """``lr`` tuned at ``ref_batch``, scaled up to ``batch`` by ``rule`` (``none`` | ``linear`` | ``sqrt``); a batch
    at or below ``ref_batch`` keeps ``lr``."""
    if rule not in SCALE_RULES:
        raise ValueError(f"optim.scale_lr must be one of {SCALE_RULES}, got '{rule}'")
    if batch <= 0 or ref_batch <= 0:
        raise ValueError(f"batch ({batch}) and optim.ref_batch ({ref_batch}) must be positive")
    ratio = max(1.0, batch / ref_batch)
    return lr * {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[rule]


def warmup_factor(step: int, warmup_steps: int, k: float) -> float:
    """The multiplier of the scaled lr ``lr * k`` at optimizer step ``step`` (0-based): from ``1 / k`` (the
    unscaled lr) at step 0 linearly up to 1 at step ``warmup_steps``, then 1."""
    if warmup_steps <= 0:
        return 1.0
    return (1.0 + (k - 1.0) * min(1.0, step / warmup_steps)) / k


def embedding_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The weights of every ``nn.Embedding`` / ``nn.EmbeddingBag`` under ``module`` (each once)."""
    seen, out = set(), []
    for m in module.modules():
        if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and id(m.weight) not in seen:
            seen.add(id(m.weight))
            out.append(m.weight)
    return out


def build_optimizer(module: nn.Module, lr: float, weight_decay: float = 0.0, batch: int | None = None,
                    scale_lr: str = "none", ref_batch: int = 512, warmup_steps: int = 0,
                    embed_lr_scale: float = 1.0) -> torch.optim.Optimizer | dict:
    """Fused AdamW over ``module``'s parameters with the recipe above; with a scaled lr and ``warmup_steps`` the
    Lightning ``{"optimizer", "lr_scheduler"}`` dict (a per-step ``LambdaLR``), else the optimizer alone."""
    base = scaled_lr(lr, batch or ref_batch, ref_batch, scale_lr)
    k = base / lr if lr else 1.0
    embed = embedding_parameters(module) if embed_lr_scale != 1.0 else []
    embed_ids = {id(p) for p in embed}
    rest = [p for p in module.parameters() if id(p) not in embed_ids]
    groups = [{"params": rest, "lr": base}] + ([{"params": embed, "lr": base * embed_lr_scale}] if embed else [])
    # fused: one kernel over all parameters (CPU and GPU) instead of a per-tensor loop; ~5x faster
    # AdamW step on CPU, ~8% of an MMoE training step (docs/performance.md)
    opt = torch.optim.AdamW(groups, lr=base, weight_decay=weight_decay, fused=True)
    if warmup_steps <= 0 or k == 1.0:
        return opt
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_factor(step, warmup_steps, k))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step", "frequency": 1}}
