"""A Rich progress bar that shows each task's latest validation metric beside the training loss."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar

from mose.metrics import PROGRESS, shown_in


def progress_bar(enabled: bool = True) -> pl.Callback:
    """The training progress bar for ``callbacks.progress_bar`` (``enabled: ${trainer.enable_progress_bar}``):
    a :class:`TaskProgressBar`, or a no-op callback when the trainer has no progress bar."""
    return TaskProgressBar() if enabled else pl.Callback()


class TaskProgressBar(RichProgressBar):
    """``RichProgressBar`` plus ``<task> auc`` / ``<task> mse`` (latest validation) and ``val auc_mean``.

    The per-task metrics are those :data:`mose.metrics.METRICS` shows in the progress bar.

    Reads ``trainer.callback_metrics`` (``val/<task>/auc`` ...), so it needs nothing from the module.
    """

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, int | str | float]:
        items = super().get_metrics(trainer, pl_module)
        metrics = trainer.callback_metrics
        for task in getattr(pl_module, "tasks", []):
            for name in shown_in(PROGRESS):
                value = metrics.get(f"val/{task}/{name}")
                if value is not None:
                    items[f"{task} {name}"] = f"{float(value):.4f}"
        if (mean := metrics.get("val/auc_mean")) is not None:
            items["val auc_mean"] = f"{float(mean):.4f}"
        return items
