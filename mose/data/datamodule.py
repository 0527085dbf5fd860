"""LightningDataModule over a prepared dataset, preparing it first when needed."""

from __future__ import annotations

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from data_prep.build import ensure_prepared
from data_prep.prepare import read_manifest
from mose.data.datasets import EventSplit, StreamSplit, identity


class EventDataModule(pl.LightningDataModule):
    """Train / val / test loaders over ``data["dir"]``.

    ``data`` is the plain data config (``dir``, ``source``, ``prep``, ``tasks`` ...);
    ``prepare_data`` (rank 0 only) builds the dataset if it is missing or stale.
    ``layout`` is ``per_event`` (one event and its history per example) or ``per_stream``
    (windows of a user's stream, ``windows`` = ``chunks`` or ``next_step``).
    """

    def __init__(self, data: dict, batch_size: int = 1024, eval_batch_size: int = 8192, num_workers: int = 0,
                 pin_memory: bool = False, layout: str = "per_event", windows: str = "chunks") -> None:
        super().__init__()
        if layout not in ("per_event", "per_stream"):
            raise ValueError(f"layout must be 'per_event' or 'per_stream', got '{layout}'")
        self.layout, self.windows = layout, windows
        self.data = dict(data)
        self.root = self.data["dir"]
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.splits: dict[str, EventSplit] = {}

    def prepare_data(self) -> None:
        ensure_prepared(self.data)

    @property
    def manifest(self) -> dict:
        return read_manifest(self.root)

    def setup(self, stage: str | None = None) -> None:
        for split in ("train", "val", "test"):
            if split not in self.splits:
                self.splits[split] = (EventSplit(self.root, split) if self.layout == "per_event"
                                      else StreamSplit(self.root, split, self.windows))

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.splits[split], batch_size=self.batch_size if shuffle else self.eval_batch_size, shuffle=shuffle,
            collate_fn=identity, num_workers=self.num_workers, pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
