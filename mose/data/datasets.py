"""A split of a prepared dataset, served a whole batch per indexing operation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from data_prep.split import SPLITS

FIELDS = ("user", "user_key", "item", "cat", "num", "labels", "prior_bucket", "cohorts", "hist_item", "hist_label")


class EventSplit(Dataset):
    """Events of one split of a per-event dataset, over memory-mapped ``.npy`` arrays.

    ``dataset.__getitems__(positions)`` returns a dict of batched tensors (one fancy-index per
    array, rows sorted for locality); there is no per-row Python.
    """

    def __init__(self, root: str | Path, split: str, fields: tuple[str, ...] = FIELDS) -> None:
        root = Path(root)
        self.arrays = {f: np.load(root / f"{f}.npy", mmap_mode="r") for f in fields}
        self.index = np.flatnonzero(np.load(root / "split.npy") == SPLITS.index(split))

    def __len__(self) -> int:
        return len(self.index)

    def __getitems__(self, positions: list[int]) -> dict[str, torch.Tensor]:
        rows = np.sort(self.index[np.asarray(positions)])
        return {name: torch.from_numpy(np.ascontiguousarray(arr[rows])) for name, arr in self.arrays.items()}

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([position]).items()}


def identity(batch):
    """Collate function for datasets that already return whole batches."""
    return batch
