"""The TensorBoard logger of every run (``conf/logger/tensorboard.yaml``): Lightning's, minus its ``epoch`` scalar.

Lightning adds an ``epoch`` scalar to every logged step; it would be the first card of the Time Series
tab (and the only top-level group beside ``train`` / ``val`` / ``test``), so it is left out: the
step axis and the custom-scalars layout already place every curve. Everything else is Lightning's.
"""

from __future__ import annotations

from collections.abc import Mapping

from pytorch_lightning.loggers import TensorBoardLogger as LightningTensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only


class TensorBoardLogger(LightningTensorBoardLogger):
    """``pytorch_lightning.loggers.TensorBoardLogger`` that does not write Lightning's ``epoch`` scalar."""

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        super().log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step)
