"""Canonical events -> prepared per-event dataset, in memory: validate, split, fit on train, transform, write.

    prepare(events, spec, "outputs/data/x", PrepOptions(history_len=20))
    prepare(next_day, spec, "outputs/data/x-next", fit_from="outputs/data/x")   # an earlier fit

The arrays are those of :data:`data_prep.arrays.ARRAYS` (N events sorted by user then time) and
``LAYOUT``; the folder format is :mod:`data_prep.dataset`. With ``fit_from`` every event is in the
test split (``cuts`` at the log's first timestamp) and ids unseen by that fit map to OOV, so a
model trained on the fitted dataset scores every event of the later log (``mose-eval data_dir=``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from data_prep.dataset import (
    checksum,
    config_hash,
    load_fitted,
    manifest_fields,
    new_temp,
    write_dataset,
    writing,
)
from data_prep.fit import FittedState, fit
from data_prep.npy_writer import OutputArrays
from data_prep.options import PrepOptions
from data_prep.schema import TS, USER, EventSpec, validate
from data_prep.split import N_CODES, SplitOptions, check_splits, label_ranges, split_assignment
from data_prep.transform import log_frame, stream_arrays, transform, user_layout
from data_prep.vocab import unknown_shares


def build_arrays(events: pl.DataFrame, spec: EventSpec, options: PrepOptions, fit_from: str | Path | None = None,
                 split: SplitOptions | None = None, output: OutputArrays | None = None
                 ) -> tuple[dict[str, np.ndarray], FittedState, pl.Series, dict]:
    """Every array of the dataset, its fitted state (fitted here on the train split of ``split``, default by
    time, or read from the prepared folder ``fit_from``), the user id of each ``user_key``, and the manifest
    fields. ``output``: where the arrays are written as they are made; the histories are then gathered into
    their files, and their entries are those files' :class:`data_prep.npy_writer.NpyWriter`, not arrays."""
    validate(events, spec)
    split = split or SplitOptions()
    fitted = load_fitted(fit_from) if fit_from is not None else None
    if fitted is None:
        expr, cuts = split_assignment(split, options.val_frac, options.test_frac, events[TS])
        frame = log_frame(events, expr, options)
        fitted = fit(frame, spec, options, cuts)
    else:
        fitted.check_compatible(spec, options)
        first = int(events[TS].min())
        cuts, frame = (first, first), log_frame(events, None)
    check_splits(label_ranges(frame, spec), spec, split if fit_from is None else None, options.val_frac,
                 options.test_frac)
    arrays = transform(frame, fitted, alloc=output.writer if output else None)
    if output:
        output.save(arrays)
    user_key, offsets, users = user_layout(frame[USER])
    arrays |= {"user_key": user_key, "user_offsets": offsets, **stream_arrays(offsets, fitted)}
    if output:
        output.save(arrays)
    fields = manifest_fields(fitted, n_events=frame.height, split_counts=np.bincount(arrays["split"], minlength=N_CODES),
                             cuts=cuts, n_user_keys=len(users), fit_from=None if fit_from is None else str(fit_from),
                             unknown=unknown_shares(arrays["user"], arrays["item"], arrays["split"]))
    fields["split"] = split.to_dict() if fit_from is None else {"by": "fit_from"}
    return arrays, fitted, users, fields


def prepare(events: pl.DataFrame, spec: EventSpec, out_dir: str | Path, options: PrepOptions | None = None,
            config: dict | None = None, fit_from: str | Path | None = None, split: SplitOptions | None = None) -> Path:
    """Validate, split (``split``: :class:`data_prep.split.SplitOptions`, default by time), encode and write
    ``events`` as a prepared per-event dataset at ``out_dir``.

    ``fit_from`` (a prepared folder): transform with its fitted state instead of fitting one.
    """
    out_dir = Path(out_dir)
    tmp = new_temp(out_dir)
    with writing(out_dir, tmp), OutputArrays(tmp) as output:  # each array written as soon as it is made
        arrays, fitted, users, fields = build_arrays(events, spec, options or PrepOptions(), fit_from, split,
                                                     output)
        manifest = {**fields, "source_checksum": checksum(events), "config": config or {},
                    "config_hash": config_hash(config or {})}
        written = output.finish()
    return write_dataset(out_dir, arrays, manifest, fitted, users, tmp, written)
