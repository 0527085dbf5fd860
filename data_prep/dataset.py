"""The prepared folder: its manifest, its atomic write and its readers (format :data:`FORMAT_VERSION`).

    <dir>/manifest.json          what the arrays are (see docs/architecture.md, "Prepared folder")
    <dir>/<name>.npy             one array per entry of data_prep.arrays.ARRAYS and LAYOUT
    <dir>/users.parquet          user_id of each user_key (row = key), in user_offsets order
    <dir>/fit/                   the fitted state (data_prep.fit): fit.json + vocabularies as Parquet

Every path writes into a temp folder beside the target and renames it when complete
(:func:`finish_dataset`), so a crash never leaves a half dataset behind.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import polars as pl

from data_prep.fit import FIT_VERSION, FittedState
from data_prep.npy_writer import save
from data_prep.schema import SchemaError, event_columns
from data_prep.sequences import N_PRIOR_BUCKETS
from data_prep.split import SPLITS
from data_prep.errors import WriteError

FORMAT_VERSION = 3  # 3: fit/, users.parquet, ts.npy (2: hist_item int32; 1: int64; both train, neither serves)
FIT_DIR = "fit"
OPTIONAL = ("pcode",)  # absent from datasets prepared before POSO codes existed


def checksum(events: pl.DataFrame) -> str:
    """Content hash of the events (row hashes, in order; the file row bookkeeping left out)."""
    events = events.select(event_columns(events))
    return hashlib.sha256(events.hash_rows(seed=0).to_numpy().tobytes()).hexdigest()[:16]


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def manifest_fields(fitted: FittedState, *, n_events: int, split_counts, cuts: tuple[int, int], n_user_keys: int,
                    fit_from: str | None = None, unknown: dict | None = None) -> dict:
    """The manifest fields that describe a dataset's arrays (every prep path); ``cuts`` are this dataset's;
    ``unknown`` the share of unknown users / items per split (:func:`data_prep.vocab.unknown_shares`)."""
    spec, options = fitted.spec, fitted.options
    return {
        "layout": "per_event",
        "n_events": int(n_events),
        "splits": {name: int(n) for name, n in zip(SPLITS, split_counts)},
        "dropped_train": int(split_counts[len(SPLITS)]) if len(split_counts) > len(SPLITS) else 0,
        "cuts": {"val_start": int(cuts[0]), "test_start": int(cuts[1])},
        "spec": spec.to_dict(),
        "vocab_sizes": fitted.vocab_sizes,
        "n_user_keys": int(n_user_keys),
        "numeric_stats": fitted.numeric_stats,
        "task_stats": fitted.task_stats,
        "min_count": options.min_count,
        "history_len": options.history_len,
        "stream_len": options.stream_len,
        "stream_overlap": options.chunk_overlap,
        "carry_state": options.carry_state,
        "history_labels": spec.binary_tasks,
        "prior_buckets": N_PRIOR_BUCKETS,
        "new_user_max_prior": options.new_user_max_prior,
        "cohorts": fitted.cohorts,
        "pcode": fitted.pcode_info,
        "prep": options.to_dict(),
        "fingerprint": fitted.fingerprint(),
        "fit": {"dir": FIT_DIR, "version": FIT_VERSION, "cuts": list(fitted.cuts), "from": fit_from},
        "unknown": unknown or {},
    }


def new_temp(out_dir: Path) -> Path:
    """An empty temp folder beside ``out_dir`` (``.<name>.tmp-*``), to fill and :func:`finish_dataset`."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))


def finish_dataset(tmp: Path, out_dir: Path, manifest: dict, fitted: FittedState, users: pl.Series) -> Path:
    """Add the fitted state, ``users.parquet`` and the manifest (with each ``.npy``'s shape and dtype) to the
    filled temp folder ``tmp``, then swap it in at ``out_dir``."""
    fitted.to_dir(tmp / FIT_DIR)
    users.to_frame().write_parquet(tmp / "users.parquet")
    meta = {}
    for f in sorted(tmp.glob("*.npy")):
        arr = np.load(f, mmap_mode="r")
        meta[f.stem] = {"shape": list(arr.shape), "dtype": str(arr.dtype)}
        del arr
    manifest = {**manifest, "format": FORMAT_VERSION, "arrays": meta}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    return swap_in(tmp, out_dir)


def open_output(tmp: Path, name: str, shape: tuple, dtype) -> np.memmap:
    """``<tmp>/<name>.npy`` created with its header and its blocks reserved on disk, memory-mapped for writing.

    Reserving (``posix_fallocate``) turns a full disk into an ``OSError`` here instead of a ``SIGBUS`` on the
    first page written."""
    mm = np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
    if mm.nbytes:
        with open(mm.filename, "r+b") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, mm.offset + mm.nbytes)
            except OSError as err:
                if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without it: written as is
                    raise
    return mm


@contextlib.contextmanager
def writing(out_dir: Path, tmp: Path):
    """Remove the temp folder ``tmp`` if the block fails; an ``OSError`` (a full or read-only disk) becomes a
    :class:`WriteError` naming the dataset ``out_dir`` (NumPy's errors do not)."""
    try:
        yield
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            reason = err.strerror or f"{err} (a full disk?)"
            raise WriteError(f"cannot write {out_dir} (prepared dataset): {reason}") from err
        raise


def write_dataset(out_dir: Path, arrays: dict[str, np.ndarray], manifest: dict, fitted: FittedState,
                  users: pl.Series, tmp: Path | None = None, written: set[str] = frozenset()) -> Path:
    """Write arrays, fitted state and manifest to a temp folder beside ``out_dir``, then swap it in.

    Arrays are written around the page cache (:func:`data_prep.npy_writer.save`). ``tmp``: that folder
    (:func:`new_temp`) when the arrays named in ``written`` are in it already
    (:class:`data_prep.npy_writer.OutputArrays`)."""
    out_dir = Path(out_dir)
    tmp = tmp or new_temp(out_dir)
    with writing(out_dir, tmp):
        for name, arr in arrays.items():
            if name not in written:
                save(tmp / f"{name}.npy", arr)
        return finish_dataset(tmp, out_dir, manifest, fitted, users)


def swap_in(tmp: Path, out_dir: Path) -> Path:
    """Rename the finished ``tmp`` folder to ``out_dir``; the previous dataset is put back on failure."""
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        if old.exists():
            os.rename(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return out_dir


def read_manifest(path: str | Path) -> dict:
    return json.loads((Path(path) / "manifest.json").read_text())


def load_arrays(root: str | Path, fields: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Memory-map ``<field>.npy`` for each field; optional fields may be missing.

    Returned as plain ``ndarray`` views of the maps: indexing an ``np.memmap`` builds a memmap
    subclass per result, and ``np.take`` on the plain view gathers a batch ~2x faster.
    """
    root = Path(root)
    return {f: np.asarray(np.load(root / f"{f}.npy", mmap_mode="r")) for f in fields
            if f not in OPTIONAL or (root / f"{f}.npy").exists()}


def load_fitted(root: str | Path) -> FittedState:
    """The fitted state of the prepared folder ``root``; a folder of an older format asks to re-prepare."""
    root = Path(root)
    if not (root / "manifest.json").is_file():
        raise SchemaError(f"no prepared dataset at {root} (no manifest.json)")
    version = read_manifest(root).get("format")
    if version != FORMAT_VERSION:
        raise SchemaError(f"{root} was prepared with format {version}, without a saved fit; this code serves "
                          f"format {FORMAT_VERSION}: re-prepare it (mose-prep ... force=true)")
    return FittedState.from_dir(root / FIT_DIR)
