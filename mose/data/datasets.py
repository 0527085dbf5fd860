"""A split of a prepared dataset, served a whole batch per indexing operation.

The fields are those of the array table (``data_prep.arrays``): ``EVENT_FIELDS`` per event,
``STEP_FIELDS`` per stream step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from data_prep.arrays import EVENT_FIELDS, STEP_FIELDS
from data_prep.dataset import load_arrays
from data_prep.sequences import WINDOWS
from data_prep.split import SPLITS

EVAL_ONLY = ("user_key", "cohorts")  # GAUC grouping and per-cohort metrics: the training loss never reads them


def split_fields(fields: tuple[str, ...], split: str) -> tuple[str, ...]:
    """The fields a split's batches carry: the train split skips ``EVAL_ONLY`` (less to gather per step)."""
    return tuple(f for f in fields if split != "train" or f not in EVAL_ONLY)


class EventSplit(Dataset):
    """Events of one split of a per-event dataset, over memory-mapped ``.npy`` arrays.

    ``dataset.__getitems__(positions)`` returns a dict of batched tensors (one fancy-index per
    array, rows sorted for locality); there is no per-row Python.
    """

    def __init__(self, root: str | Path, split: str, fields: tuple[str, ...] = EVENT_FIELDS) -> None:
        root = Path(root)
        self.arrays = load_arrays(root, split_fields(fields, split))
        self.index = np.flatnonzero(np.load(root / "split.npy") == SPLITS.index(split))

    def __len__(self) -> int:
        return len(self.index)

    def __getitems__(self, positions: list[int]) -> dict[str, torch.Tensor]:
        rows = np.sort(self.index[np.asarray(positions)])
        return {name: torch.from_numpy(np.take(arr, rows, axis=0)) for name, arr in self.arrays.items()}

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([position]).items()}


class StreamSplit(Dataset):
    """Windows of users' event streams for one split (per-stream layout), right-padded.

    ``windows="chunks"``: the prepared chunks (``stream_rows``); a step is scored if it is the
    chunk's to score and its event is in this split. ``windows="next_step"``: one window per
    event of the split, the user's last ``length`` events up to it, scoring only that event.
    ``carry_state`` (chunks only): every chunk of each user up to the user's last chunk that scores
    this split, from the user's first (earlier splits' chunks are context: nothing scored), so a
    carried LSTM state has read the user's whole past; ``first`` marks each user's first chunk, and
    batches come from :class:`mose.data.lanes.LaneBatchSampler` (position -1: an empty lane).
    ``__getitems__`` returns every step field as ``(B, S, ...)`` plus ``valid (B, S)`` (a real
    event) and ``mask (B, S)`` (scored), gathered with one fancy-index per array; with
    ``carry_state`` also ``reset (B,)``: the lanes whose carried state starts afresh.
    """

    def __init__(self, root: str | Path, split: str, windows: str = WINDOWS[0], length: int | None = None,
                 carry_state: bool = False) -> None:
        if windows not in WINDOWS:
            raise ValueError(f"data.windows must be one of {WINDOWS}, got '{windows}'")
        if carry_state and windows != "chunks":
            raise ValueError(f"data.prep.carry_state=true needs data.windows=chunks, got '{windows}'")
        root = Path(root)
        self.arrays = load_arrays(root, split_fields(STEP_FIELDS, split))
        in_split = np.load(root / "split.npy") == SPLITS.index(split)
        self.windows, self.carry_state = windows, carry_state
        if windows == "chunks":
            rows, scored = np.load(root / "stream_rows.npy"), np.load(root / "stream_scored.npy")
            mask = scored & in_split[rows.clip(0)]
            keep = mask.any(1)
            if carry_state:  # chunks are sorted by (user, time): keep each user's chunks up to its last kept one
                owner = np.searchsorted(np.load(root / "user_offsets.npy"), rows[:, 0], side="right") - 1
                first = np.ones(len(rows), dtype=bool)
                first[1:] = owner[1:] != owner[:-1]
                last_kept = np.full(owner.max(initial=-1) + 1, -1)
                np.maximum.at(last_kept, owner[keep], np.flatnonzero(keep))
                keep = np.arange(len(rows)) <= last_kept[owner]
                self.first = first[keep]
            self.rows, self.mask = rows[keep], mask[keep]
        else:
            offsets = np.load(root / "user_offsets.npy")
            self.ends = np.flatnonzero(in_split)
            user_start = offsets[np.searchsorted(offsets, self.ends, side="right") - 1]
            self.length = int(length or np.load(root / "stream_rows.npy", mmap_mode="r").shape[1])
            self.starts = np.maximum(self.ends - self.length + 1, user_start)

    def __len__(self) -> int:
        return len(self.rows) if self.windows == "chunks" else len(self.ends)

    def _rows(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.windows == "chunks":
            if self.carry_state:  # -1: an empty lane, all padding
                empty = (pos < 0)[:, None]
                return np.where(empty, -1, self.rows[pos.clip(0)]), ~empty & self.mask[pos.clip(0)]
            return self.rows[pos], self.mask[pos]
        rows = self.starts[pos, None] + np.arange(self.length)[None, :]
        ends = self.ends[pos, None]
        return np.where(rows <= ends, rows, -1), rows == ends

    def __getitems__(self, positions: list[int]) -> dict[str, torch.Tensor]:
        # carried states: the lanes keep their order; otherwise rows sorted for locality
        pos = np.asarray(positions) if self.carry_state else np.sort(np.asarray(positions))
        rows, mask = self._rows(pos)
        unique, inverse = np.unique(rows.clip(0), return_inverse=True)
        out = {name: torch.from_numpy(np.asarray(arr[unique])[inverse.reshape(rows.shape)])
               for name, arr in self.arrays.items()}
        out["valid"], out["mask"] = torch.from_numpy(rows >= 0), torch.from_numpy(mask)
        if self.carry_state:
            out["reset"] = torch.from_numpy((pos < 0) | self.first[pos.clip(0)])
        return out


def identity(batch):
    """Collate function for datasets that already return whole batches."""
    return batch
