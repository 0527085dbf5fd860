"""Batch lanes for carried LSTM states: each user's chunks in time order, one chunk per lane per batch.

``data.prep.carry_state=true``: the users are dealt round-robin to ``lanes`` fixed batch lanes,
longest first (users of equal length in a new random order each epoch when shuffling), and
batch ``i`` holds the ``i``-th chunk of every lane. A lane serves its users one after another,
each user's chunks in time order, so the LSTM state a lane carries out of a chunk is the one its
next chunk continues (``mose.nn.carry``); where a lane moves on to its next user (or has run out:
position -1) the state is reset. The index of a whole epoch is a few numpy array ops.

    sampler = LaneBatchSampler(split.first, lanes=64, shuffle=True, seed=0)
    DataLoader(split, batch_sampler=sampler, collate_fn=identity)   # batches (64, S, ...), reset (64,)
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


def lane_batches(first: np.ndarray, lanes: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """``(n_batches, lanes)`` chunk positions (-1: an empty slot) for chunks sorted by (user, time).

    ``first (C,)`` marks each user's first chunk. Users, longest first (ties in a random order when
    ``rng`` is given, else in user order), are dealt round-robin to the lanes, the i-th to lane
    ``i % lanes``; a lane serves its users one after another, so every user's chunks are
    consecutive slots of one lane, in time order. Dealing longest first balances the lanes, and
    makes every lane's length, so the number of batches, the same whatever the shuffle (Lightning
    counts an epoch's batches once, and validates when that count is reached).
    """
    starts = np.flatnonzero(first)
    counts = np.diff(np.append(starts, len(first)))
    ties = rng.random(len(starts)) if rng is not None else np.arange(len(starts))
    order = np.lexsort((ties, -counts))
    sizes = np.zeros(-(-len(order) // lanes) * lanes, dtype=np.int64)
    sizes[: len(order)] = counts[order]
    table = sizes.reshape(-1, lanes)                      # (rounds, lanes): round r deals users r*lanes ...
    slot0 = (np.cumsum(table, axis=0) - table).ravel()[: len(order)]  # each user's first slot in its lane
    lane = np.arange(len(order)) % lanes
    user = np.repeat(np.arange(len(order)), counts[order])  # dealt user of every served chunk
    rank = np.arange(len(user)) - np.repeat(np.cumsum(counts[order]) - counts[order], counts[order])
    out = np.full((int(table.sum(0).max(initial=0)), lanes), -1, dtype=np.int64)
    out[slot0[user] + rank, lane[user]] = starts[order][user] + rank
    return out


class LaneBatchSampler(Sampler):
    """Batches of lane positions (:func:`lane_batches`), users dealt anew each epoch when ``shuffle``."""

    def __init__(self, first: np.ndarray, lanes: int, shuffle: bool = False, seed: int = 0) -> None:
        self.first, self.lanes, self.shuffle, self.seed = np.asarray(first, dtype=bool), int(lanes), shuffle, seed
        self.epoch = 0

    def batches(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch]) if self.shuffle else None
        return lane_batches(self.first, self.lanes, rng)

    def __iter__(self) -> Iterator[list[int]]:
        index = self.batches()
        self.epoch += 1
        return iter(index.tolist())

    def __len__(self) -> int:
        return len(lane_batches(self.first, self.lanes))  # the same for every shuffle
