"""TensorBoard summaries: a per-task custom-scalars layout at fit start; at the end of testing, per-task
PR curves and the hparams tab with the final metrics (and the run's model name and seed).

(The gate heatmaps are logged by ``MultiTaskModule`` itself, as ``val/gates`` / ``test/gates``.)
Lightning 2.x calls callbacks' ``on_test_epoch_end`` *before* the module's, so the test metric
states (``pl_module.metrics["test"]``: predictions and labels of every test event) are still
accumulated there; the computed ``pl_module.results["test"]`` exist from ``on_test_end`` on.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

from mose.metrics import BINARY, HPARAMS, METRICS, metric_keys


def _tensorboard(trainer: pl.Trainer) -> TensorBoardLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


def sweep_run_name(sweep_dir: str | Path, model: str, seed: int, job: int) -> tuple[str, str]:
    """TensorBoard ``(name, version)`` of one multirun job under ``<sweep_dir>/tensorboard``: ``<model>``,
    ``seed<k>`` (``tensorboard --logdir <sweep dir>/tensorboard`` lists ``mmoe/seed0``, not ``0/tensorboard``),
    and ``seed<k>-job<n>`` when another job of the sweep took that name (a sweep over other settings)."""
    version = f"seed{seed}"
    if (Path(sweep_dir) / "tensorboard" / model / version).exists():
        version = f"{version}-job{job}"
    return model, version


def tensorboard_overrides(cfg) -> dict:
    """Logger overrides for ``instantiate(cfg.logger, **...)``: in a Hydra multirun, a TensorBoardLogger writes
    to ``<sweep dir>/tensorboard/<model>/seed<k>`` (:func:`sweep_run_name`); a single run keeps its config."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN or not str(cfg.logger.get("_target_", "")).endswith("TensorBoardLogger"):
        return {}
    model = hc.runtime.choices.get("model") or str(cfg.model._target_).rsplit(".", 1)[-1].lower()
    name, version = sweep_run_name(hc.sweep.dir, model, cfg.seed, hc.job.num)
    return {"save_dir": str(Path(hc.sweep.dir) / "tensorboard"), "name": name, "version": version}


def task_layout(tasks: dict[str, str]) -> dict:
    """A TensorBoard custom-scalars layout for ``{task: kind}``: per task, one chart for its loss and one per
    metric of its kind (:data:`mose.metrics.METRICS`) with the train / val / test curves together
    (``click/auc``: ``val/click/auc`` and ``test/click/auc``); then the ``<metric>_mean`` charts."""
    layout = {t: {f"{t}/{m}": ["Multiline", [rf"^(train|val|test)/{re.escape(t)}/{m}$"]]
                  for m in ("loss", *(s.name for s in METRICS if kind in s.kinds))} for t, kind in tasks.items()}
    layout["mean"] = {f"{s.name}_mean": ["Multiline", [rf"^(val|test)/{s.name}_mean$"]] for s in METRICS
                      if s.mean and any(k in s.kinds for k in tasks.values())}
    return layout


def hparam_metrics(results: dict[str, float], tasks: dict[str, str]) -> dict[str, float]:
    """``test/<task>/<metric>`` and ``test/<metric>_mean`` of the metrics the hparams tab shows
    (:data:`mose.metrics.METRICS`) for ``{task: kind}``, from the flat test ``results``; NaNs left out.
    The names are those of the test scalars the run already logs, which the hparams tab reads."""
    return {f"test/{k}": results[k] for k in metric_keys(tasks, HPARAMS) if not math.isnan(results.get(k, math.nan))}


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
    ``test/<task>/<metric>`` and ``test/auc_mean`` scalars (:func:`hparam_metrics`): the hparams summary names
    them and TensorBoard reads their values, so no second copy of them is logged. Rank 0 only; under DDP the PR curves cover rank 0's share of the test set.
    """

    def __init__(self, pr_curves: bool = True, hparams: bool = True, num_thresholds: int = 127,
                 run: dict | None = None) -> None:
        """``run``: extra hparams of the run, e.g. ``{model: mmoe, seed: 0}`` (conf/callbacks/default.yaml)."""
        self.pr_curves, self.hparams, self.num_thresholds = pr_curves, hparams, num_thresholds
        self.run = dict(run or {})

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The CUSTOM SCALARS tab: one chart per task with its train / val / test curves (:func:`task_layout`)."""
        tb = _tensorboard(trainer)
        if self.hparams and tb is not None and trainer.is_global_zero:
            kinds = {t: "binary" if bool(pl_module.binary[i]) else "regression" for i, t in enumerate(pl_module.tasks)}
            tb.experiment.add_custom_scalars(task_layout(kinds))

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
        params = flat_hparams({**self.run, "model": h.get("model", {}), "lr": h.get("lr"), "weight_decay": h.get("weight_decay"),
                               "data": {k: h.get("data", {}).get(k) for k in ("name", "batch_size", "layout")},
                               "weighting": h.get("weighting")})
        from torch.utils.tensorboard.summary import hparams

        writer = tb.experiment._get_file_writer()  # as Lightning's log_hyperparams, without logging the metrics again
        for summary in hparams(params, hparam_metrics(results, pl_module.metrics["test"].tasks)):
            writer.add_summary(summary)
        tb.experiment.flush()
