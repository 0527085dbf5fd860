"""TensorBoard at the end of testing: per-task PR curves and the hparams tab with the final metrics.

(The gate heatmaps are logged by ``MultiTaskModule`` itself, as ``val/gates`` / ``test/gates``.)
Lightning 2.x calls callbacks' ``on_test_epoch_end`` *before* the module's, so the test metric
states (``pl_module.metrics["test"]``: predictions and labels of every test event) are still
accumulated there; the computed ``pl_module.results["test"]`` exist from ``on_test_end`` on.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

from mose.metrics import BINARY, HPARAMS, metric_keys


def _tensorboard(trainer: pl.Trainer) -> TensorBoardLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


def hparam_metrics(results: dict[str, float], tasks: dict[str, str]) -> dict[str, float]:
    """``hp/<task>/<metric>`` and ``hp/<metric>_mean`` of the metrics the hparams tab shows
    (:data:`mose.metrics.METRICS`) for ``{task: kind}``, from the flat test ``results``; NaNs left out."""
    return {f"hp/{k}": results[k] for k in metric_keys(tasks, HPARAMS) if not math.isnan(results.get(k, math.nan))}


def flat_hparams(hparams: dict, prefix: str = "") -> dict[str, float | int | str | bool]:
    """Nested hyper-parameters -> ``{"model/n_experts": 4, ...}`` with scalar values (lists as text)."""
    out: dict = {}
    for key, value in hparams.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flat_hparams(value, f"{name}/")
        elif isinstance(value, (int, float, str, bool)):
            out[name] = value
        elif value is not None:
            out[name] = str(value)
    return out


class TestSummaries(pl.Callback):
    """After ``trainer.test``: ``test/pr/<task>`` PR curves (binary tasks) and the hparams tab.

    The hparams tab gets the model, optimizer and data settings, and as metrics the final test
    ``hp/<task>/<metric>`` and ``hp/auc_mean`` (:func:`hparam_metrics`; the names differ from the
    scalars so TensorBoard keeps both). Rank 0 only; under DDP the PR curves cover rank 0's share of the test set.
    """

    def __init__(self, pr_curves: bool = True, hparams: bool = True, num_thresholds: int = 127) -> None:
        self.pr_curves, self.hparams, self.num_thresholds = pr_curves, hparams, num_thresholds

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        tb = _tensorboard(trainer)
        if not self.pr_curves or tb is None or not trainer.is_global_zero:
            return
        metric = pl_module.metrics["test"]
        if not metric.preds:
            return
        preds, targets = torch.cat(metric.preds).cpu(), torch.cat(metric.targets).cpu()  # (N, T)
        for i, (task, kind) in enumerate(metric.tasks.items()):
            if kind == BINARY:
                tb.experiment.add_pr_curve(f"test/pr/{task}", targets[:, i] > 0.5, preds[:, i],
                                           global_step=trainer.global_step, num_thresholds=self.num_thresholds)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        tb = _tensorboard(trainer)
        results = getattr(pl_module, "results", {}).get("test")
        if not self.hparams or tb is None or not results or not trainer.is_global_zero:
            return
        h = dict(pl_module.hparams)
        params = flat_hparams({"model": h.get("model", {}), "lr": h.get("lr"), "weight_decay": h.get("weight_decay"),
                               "data": {k: h.get("data", {}).get(k) for k in ("name", "batch_size", "layout")},
                               "weighting": h.get("weighting")})
        tb.log_hyperparams(params, hparam_metrics(results, pl_module.metrics["test"].tasks))
        tb.experiment.flush()
