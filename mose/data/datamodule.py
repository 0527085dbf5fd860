"""LightningDataModule over a prepared dataset, preparing it first when needed."""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset

from data_prep.build import ensure_prepared
from data_prep.dataset import read_manifest
from data_prep.sequences import LAYOUTS, WINDOWS
from data_prep.split import SPLITS
from mose.data.datasets import EventSplit, StreamSplit, identity
from mose.data.lanes import LaneBatchSampler


class EventDataModule(pl.LightningDataModule):
    """Train / val / test loaders over ``data["dir"]``, and one for ``trainer.predict`` over ``predict_split``.

    ``data`` is the plain data config (``dir``, ``source``, ``prep``, ``tasks`` ...);
    ``prepare_data`` (rank 0 only) builds the dataset if it is missing or stale.
    ``layout`` is one of ``LAYOUTS``: ``per_event`` (one event and its history per example) or
    ``per_stream`` (windows of a user's stream, ``windows`` one of ``WINDOWS``). A dataset prepared
    with ``data.prep.carry_state`` serves its chunks in batch lanes (:mod:`mose.data.lanes`): at most
    ``batch_size`` (train) / ``eval_batch_size`` lanes, one user's chunks after another in each.
    These defaults are the data config's: :func:`loader_settings` reads them from here.
    """

    def __init__(self, data: dict, batch_size: int = 1024, eval_batch_size: int = 8192, num_workers: int = 0,
                 pin_memory: bool = False, layout: str = LAYOUTS[0], windows: str = WINDOWS[0],
                 predict_split: str = "test") -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"data.layout must be one of {LAYOUTS}, got '{layout}'")
        self.layout, self.windows, self.predict_split = layout, windows, predict_split
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

    @property
    def carry_state(self) -> bool:
        """Whether the dataset was prepared for carried LSTM states (``data.prep.carry_state``)."""
        return self.layout == "per_stream" and bool(self.manifest.get("carry_state", False))

    def setup(self, stage: str | None = None) -> None:
        carry = self.carry_state
        for split in SPLITS:
            if split not in self.splits:
                self.splits[split] = (EventSplit(self.root, split) if self.layout == "per_event"
                                      else StreamSplit(self.root, split, self.windows, carry_state=carry))

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.splits[split]
        if getattr(dataset, "carry_state", False):
            lanes = max(1, min(self.batch_size if shuffle else self.eval_batch_size, int(dataset.first.sum())))
            sampler = LaneBatchSampler(dataset.first, lanes, shuffle=shuffle, seed=torch.initial_seed() % 2**32)
            return DataLoader(dataset, batch_sampler=sampler, collate_fn=identity, num_workers=self.num_workers,
                              pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0)
        return DataLoader(
            dataset, batch_size=self.batch_size if shuffle else self.eval_batch_size, shuffle=shuffle,
            sampler=None if shuffle else eval_sampler(dataset), collate_fn=identity, num_workers=self.num_workers,
            pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_split, shuffle=False)


def eval_sampler(dataset: Dataset) -> UnrepeatedDistributedSampler | None:
    """Under DDP, this process's share of an evaluation split (val, test, predict): rows ``rank::world``,
    every example exactly once, the shares off by at most one row. None in a single process.

    Lightning's default for val/test is a ``DistributedSampler``, which pads the shares to equal
    length with repeated examples, so AUC/GAUC over the synced predictions would count those twice;
    a ``DistributedSampler`` subclass given here is kept as is. The metrics' states are concatenated
    across processes (unequal lengths are fine) and the per-step logs sync only at epoch end.
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return None
    return UnrepeatedDistributedSampler(dataset, num_replicas=dist.get_world_size(), rank=dist.get_rank(),
                                        shuffle=False)


def loader_settings(data: Mapping, **overrides) -> dict:
    """The :class:`EventDataModule` arguments besides ``data`` (``batch_size``, ``layout`` ...): each
    from ``overrides`` or else the data config where not None, else the constructor's default."""
    params = list(inspect.signature(EventDataModule).parameters.values())[1:]
    return {p.name: next((v for v in (overrides.get(p.name), data.get(p.name)) if v is not None), p.default)
            for p in params}
