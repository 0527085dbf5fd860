"""The arrays of a prepared dataset: name -> dtype and per-row shape, read by every writer and reader.

Per-event arrays (N events, rows sorted by user then time) and their per-row dimensions::

    C categorical features   F numeric features   T tasks   L binary tasks   K history_len
    G cohort columns         P personalization-code columns

``event`` / ``step``: the array is a field of per-event batches (``EventSplit``) / of per-stream
steps (``StreamSplit``). The layout arrays (``user_offsets``, ``stream_rows``, ``stream_scored``)
describe users and stream chunks, not events.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_prep.fit import FittedState
from data_prep.sequences import HIST_ITEM_DTYPE


@dataclass(frozen=True)
class ArraySpec:
    dtype: type
    dims: tuple[str, ...]  # per-row shape, in the symbols above
    event: bool = False
    step: bool = False
    doc: str = ""


ARRAYS: dict[str, ArraySpec] = {
    "split": ArraySpec(np.int8, (), doc="0 train, 1 val, 2 test, 3 a train event left out (new_user_train_fraction)"),
    "user": ArraySpec(np.int64, (), True, True, "user vocabulary index (OOV for users unseen in train)"),
    "user_key": ArraySpec(np.int64, (), True, True, "dense id over all users (row of users.parquet), for GAUC"),
    "item": ArraySpec(np.int64, (), True, True, "item vocabulary index"),
    "ts": ArraySpec(np.int64, (), doc="event time, ms (serving looks histories up by it)"),
    "cat": ArraySpec(np.int64, ("C",), True, True, "categorical features, each its own vocabulary"),
    "num": ArraySpec(np.float32, ("F",), True, True, "numeric features standardised with train statistics"),
    "labels": ArraySpec(np.float32, ("T",), True, True, "task labels, untransformed"),
    "n_prior": ArraySpec(np.int64, (), doc="the user's events strictly before this one"),
    "prior_bucket": ArraySpec(np.int64, (), True, True, "log2 bucket of n_prior"),
    "cohorts": ArraySpec(np.int64, ("G",), True, True, "cohort value codes (-1: outside the fitted names)"),
    "hist_item": ArraySpec(HIST_ITEM_DTYPE, ("K",), True, False, "last K items strictly before (0 = padding)"),
    "hist_label": ArraySpec(np.int8, ("K", "L"), True, False, "binary labels of those events"),
    "prev_label": ArraySpec(np.int8, ("L",), False, True, "binary labels of the latest event strictly before"),
    "pcode": ArraySpec(np.int64, ("P",), True, True, "POSO personalization code, past only"),
}
LAYOUT: dict[str, ArraySpec] = {
    "user_offsets": ArraySpec(np.int64, (), doc="(U + 1,) first row of each user, then N"),
    "stream_rows": ArraySpec(np.int64, ("stream_len",), doc="(S, stream_len) rows of each chunk (-1 = pad)"),
    "stream_scored": ArraySpec(np.bool_, ("stream_len",), doc="(S, stream_len) steps scored in that chunk"),
}
EVENT_FIELDS = tuple(n for n, a in ARRAYS.items() if a.event)
STEP_FIELDS = tuple(n for n, a in ARRAYS.items() if a.step)


def row_shapes(fitted: FittedState) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """``{name: (dtype, per-row shape)}`` of the per-event arrays of datasets transformed with ``fitted``."""
    spec, options = fitted.spec, fitted.options
    sizes = {"C": len(spec.categorical), "F": len(spec.numeric), "T": len(spec.tasks), "L": len(spec.binary_tasks),
             "K": options.history_len, "G": len(fitted.cohorts), "P": len(fitted.pcode_info["sizes"])}
    return {n: (np.dtype(a.dtype), tuple(sizes[d] for d in a.dims)) for n, a in ARRAYS.items()}
