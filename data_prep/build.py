"""From a data config to a prepared dataset on disk, reused while its config is unchanged."""

from __future__ import annotations

import contextlib
import functools
import glob
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from data_prep.dataset import FORMAT_VERSION, config_hash, load_fitted, read_manifest
from data_prep.options import PrepOptions
from data_prep.prepare import prepare
from data_prep.schema import FILE, EventSpec, SchemaError, drop_duplicates, event_columns
from data_prep.split import SPLIT_COLUMN, SPLITS, SplitOptions
from data_prep.vocab import UNKNOWN_WARN, warn_unknown

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no inter-process lock
    fcntl = None

log = logging.getLogger(__name__)


def event_spec(data: dict) -> EventSpec:
    tasks = data.get("tasks")
    if not isinstance(tasks, dict):
        raise SchemaError(f"data.tasks must map each task label column to its spec, e.g. "
                          f"'data.tasks={{click: {{kind: binary}}}}'; got {tasks!r}")
    tasks = {name: task_shorthand(name, t) for name, t in tasks.items()}
    for name, t in tasks.items():
        unknown = sorted(set(dict(t or {})) - {"kind", "weight", "transform", "after"})
        if unknown:
            raise SchemaError(f"data.tasks.{name}: unknown key(s) {unknown}; a task has kind, weight, transform, after")
    for key in ("categorical", "numeric", "cohorts"):
        if not isinstance(data.get(key) or [], (list, tuple)):
            raise SchemaError(f"data.{key} must be a list of column names, got {data.get(key)!r}")
    spec = EventSpec.from_config(tasks, data.get("categorical"), data.get("numeric"), data.get("cohorts"))
    check_labels_not_inputs(data, spec)
    return spec


def task_shorthand(name: str, task) -> dict:
    """``data.tasks.<name>``: a spec mapping as it is, or the shorthand ``binary`` / ``regression`` as
    ``{kind: <it>}``; anything else is refused with the right form."""
    if isinstance(task, str):
        if task in ("binary", "regression"):
            return {"kind": task}
        raise SchemaError(f"data.tasks.{name}={task!r}: a task is binary or regression, written "
                          f"'data.tasks={{{name}: binary}}' or 'data.tasks={{{name}: {{kind: regression, "
                          "transform: log1p}}}}'")
    if task is not None and not isinstance(task, dict):
        raise SchemaError(f"data.tasks.{name}={task!r}: write 'data.tasks={{{name}: {{kind: binary}}}}' "
                          f"(or the shorthand 'data.tasks={{{name}: binary}}')")
    return dict(task or {})


def check_labels_not_inputs(data: dict, spec: EventSpec) -> None:
    """Refuse a task's label column, or the file column it is mapped from (``data.source.columns``),
    listed among ``data.categorical`` / ``numeric`` / ``cohorts`` / ``prep.personalization``: the
    model (or its per-cohort report) would be given the answer. The error names both keys.
    """
    mapped = dict((data.get("source") or {}).get("columns") or {})
    inputs = {f"data.{k}": data.get(k) or [] for k in ("categorical", "numeric", "cohorts")}
    inputs["data.prep.personalization"] = (data.get("prep") or {}).get("personalization") or []
    for task in spec.task_names:
        labels = {task: f"the label column of data.tasks.{task}"}
        if mapped.get(task) not in (None, task):
            labels[mapped[task]] = f"the file column of task '{task}' (data.source.columns.{task}={mapped[task]})"
        for key, cols in inputs.items():
            leak = next((c for c in cols if c in labels), None)
            if leak is not None:
                raise SchemaError(f"{key} lists '{leak}', {labels[leak]}: a label among the inputs leaks the "
                                  f"answer to the model; remove it from {key}")


def prep_config(data: dict, spec: EventSpec, options: PrepOptions) -> dict:
    """The part of a data config that determines the prepared arrays (not batch sizes, loss weights or
    task dependencies: ``after`` changes the training target, not the arrays)."""
    config = {"source": data["source"], "prep": options.to_dict(), "spec": spec.to_dict(weights=False)}
    split = SplitOptions.from_config(data.get("split"))
    return config if split == SplitOptions() else {**config, "split": split.to_dict()}


def source_files_stamp(source: dict) -> list[list]:
    """``[path, size, mtime_ns]`` of every file the source config points at (files, folders or globs).

    Part of the dataset's config hash, so editing or replacing a raw log re-prepares it.
    """
    stamp = []
    for value in source.values():
        if isinstance(value, str) and value and (Path(value).exists() or glob.has_magic(value)):
            root = Path(value)
            files = [root] if root.is_file() else (p for p in root.rglob("*") if p.is_file()) if root.is_dir() \
                else (Path(f) for f in glob.glob(value, recursive=True) if Path(f).is_file())
            for f in sorted(files):
                st = f.stat()
                stamp.append([str(f), st.st_size, st.st_mtime_ns])
    return stamp


@contextlib.contextmanager
def dataset_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``.<name>.lock`` beside the dataset, so one process prepares it at a
    time (DDP ranks started together, parallel runs); the others wait, then reuse it.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "a") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_UN)


def clean_stale(out: Path) -> None:
    """Tidy what a killed ``prepare`` left beside ``out`` (call under :func:`dataset_lock`).

    A kill between the two renames of the swap leaves no ``out`` but ``.<name>.old-<pid>``: that
    previous dataset is put back. Temp folders ``.<name>.tmp-*`` (and the partitioned prep's
    ``.<name>.parts-*``) of killed runs are deleted.
    """
    olds = sorted(out.parent.glob(f".{out.name}.old-*"), key=lambda p: p.stat().st_mtime_ns)
    if not out.exists() and olds and (olds[-1] / "manifest.json").is_file():
        os.rename(olds.pop(), out)
        log.warning("restored %s from an interrupted dataset swap", out)
    for stale in [*out.parent.glob(f".{out.name}.tmp-*"), *out.parent.glob(f".{out.name}.parts-*"), *olds]:
        log.info("removing %s left by an interrupted prepare", stale)
        shutil.rmtree(stale, ignore_errors=True)


def dataset_config(data: dict, spec: EventSpec | None = None, options: PrepOptions | None = None) -> dict:
    """What a prepared dataset's ``config_hash`` covers: :func:`prep_config` and the source files' stamps."""
    spec = spec or event_spec(data)
    options = options or PrepOptions.from_config(data.get("prep"))
    files = (SplitOptions.from_config(data.get("split")).files or {})
    return {**prep_config(data, spec, options), "source_files": source_files_stamp({**data["source"], **files})}


def holds_dataset(out: Path, config: dict) -> bool:
    """Whether ``out`` holds the dataset prepared from ``config`` (:func:`dataset_config`), up to date (and in
    this code's ``FORMAT_VERSION``)."""
    if not (out / "manifest.json").is_file():
        return False
    manifest = read_manifest(out)
    return manifest.get("format") == FORMAT_VERSION and manifest.get("config_hash") == config_hash(config)


def transformed_with(out: Path) -> str | None:
    """The prepared folder whose fit transformed the dataset at ``out`` (``mose-prep fit_from=``), if any."""
    return (read_manifest(out).get("fit") or {}).get("from") if (out / "manifest.json").is_file() else None


def check_dataset_dir(data: dict, key: str) -> None:
    """For a ``<key>=<dir>`` override (``mose-eval`` ``data_dir``): ``dir`` must be new, empty, hold this very
    dataset, or a later log transformed with an earlier fit (``fit_from``, used as it is); anything else
    there (another dataset, other files) is never overwritten.
    """
    out = Path(data["dir"])
    if not out.exists() or (out.is_dir() and not any(out.iterdir())) or holds_dataset(out, dataset_config(data)) \
            or transformed_with(out):
        return
    what = ("a dataset prepared from another config or other source files" if (out / "manifest.json").is_file()
            else "files that are not a prepared dataset" if out.is_dir() else "a file, not a folder")
    raise SchemaError(f"{key}={out} holds {what}; it is not overwritten with the checkpoint's data "
                      f"({data['source'].get('_target_')}). Pass a new folder, or the folder of the "
                      "checkpoint's own dataset")


def load_split_files(source: dict, split: SplitOptions) -> pl.DataFrame:
    """``data.split.by=file``: the source read once per part, its ``split.path_key`` set to that part's file, the
    events concatenated with their part in :data:`data_prep.split.SPLIT_COLUMN` (0 train, 1 val, 2 test)."""
    parts = []
    for code, name in enumerate(SPLITS):
        events = load_events({**source, split.path_key: split.files[name]})
        if FILE in events.columns:  # each part's file Enum is its own: unify as strings, then one Enum
            events = events.with_columns(pl.col(FILE).cast(pl.String))
        parts.append(events.with_columns(pl.lit(code, dtype=pl.Int8).alias(SPLIT_COLUMN)))
    events = pl.concat(parts, how="diagonal_relaxed")
    if FILE in events.columns:
        events = events.with_columns(pl.col(FILE).cast(pl.Enum(events[FILE].unique(maintain_order=True).drop_nulls())))
    return events


def load_events(source: dict):
    """Instantiate the source config; its :class:`SchemaError` comes out as itself, not wrapped by Hydra."""
    missing = [k for k, v in source.items() if v == "???"]
    if missing:
        raise SchemaError(f"data.source.{missing[0]} is required (e.g. data.source.{missing[0]}=...)")
    try:
        return instantiate(source)
    except InstantiationException as err:
        if isinstance(err.__cause__, SchemaError):
            raise err.__cause__ from None
        raise


EVENTS_LOAD = "data_prep.sources.events.load"


def prepare_at_scale(source: dict, spec: EventSpec, out: Path, options: PrepOptions, config: dict,
                     fit_from: str | Path | None, split: SplitOptions | None = None) -> None:
    """The partitioned prep on ``options.engine`` with the split ``split``: an events source of Parquet (file,
    folder, glob) is scanned lazily in slices (the log is never held whole, nor deduplicated: drop duplicate rows
    upstream); any other source, and ``data.split.by=file`` (:func:`load_split_files`, each event's part in
    :data:`data_prep.split.SPLIT_COLUMN`), is loaded, deduplicated and written to one Parquet file beside ``out``
    first."""
    from data_prep.partitioned import prepare_partitioned
    from data_prep.sources import events as events_source

    split = split or SplitOptions()
    by_file = split.by == "file" and fit_from is None
    path = source.get("path")
    if not by_file and source.get("_target_") == EVENTS_LOAD and isinstance(path, str) and (
            events_source.is_url(path) or events_source.is_parquet_dataset(path)
            or path.lower().endswith(events_source.PARQUET_SUFFIXES)):
        events_source.scan(path, source.get("columns"), source.get("ts_unit", "ms"))  # bad paths / columns: now
        raw = functools.partial(events_source.scan, path, source.get("columns"), source.get("ts_unit", "ms"))
        prepare_partitioned(raw, spec, out, options, config=config, fit_from=fit_from, split=split)
        return
    events, n_dup = drop_duplicates(load_split_files(source, split) if by_file else load_events(source))
    if n_dup:
        log.warning("dropped %d exact duplicate event row(s) (same value in every column); %d left",
                    n_dup, events.height)
    raw = out.parent / f".{out.name}.tmp-raw-{os.getpid()}"  # a killed run's is tidied by clean_stale
    try:
        raw.mkdir(parents=True)
        events.select(event_columns(events)).write_parquet(raw / "events.parquet")
        del events
        prepare_partitioned([raw / "events.parquet"], spec, out, options, config=config, fit_from=fit_from,
                            split=split)
    finally:
        shutil.rmtree(raw, ignore_errors=True)


def ensure_prepared(data: dict, force: bool = False, fit_from: str | Path | None = None) -> Path:
    """Prepare ``data["dir"]`` from ``data["source"]`` unless a dataset with the same config is there.

    ``fit_from`` (a prepared folder): transform the events with its fitted state, every event in
    the test split (``mose-prep fit_from=``). A dataset made that way is used as it is by a call
    without ``fit_from`` (``mose-eval data_dir=<it>``), never rebuilt from the checkpoint's source.
    Exact duplicate events are dropped (their count is logged). Runs under :func:`dataset_lock`,
    after :func:`clean_stale`; the dataset itself is swapped in atomically by ``write_dataset``.
    """
    out = Path(data["dir"])
    spec = event_spec(data)
    options = PrepOptions.from_config(data.get("prep"))
    split = SplitOptions.from_config(data.get("split"))
    config = dataset_config(data, spec, options)
    if fit_from is not None:
        if Path(fit_from).resolve() == out.resolve():
            raise SchemaError(f"fit_from={fit_from} is the output folder data.dir: set data.dir to another folder")
        fitted = load_fitted(fit_from)
        fitted.check_compatible(spec, options)  # before reading a large log
        config["fit_from"] = {"dir": str(fit_from), "fingerprint": fitted.fingerprint()}
    with dataset_lock(out):
        clean_stale(out)
        if not force and fit_from is None and transformed_with(out):
            log.info("using %s as it is: transformed with the fit of %s", out, transformed_with(out))
            return out
        if not force and holds_dataset(out, config):
            report_unknown(out, data)
            return out
        start = time.perf_counter()
        if options.partitioned:
            prepare_at_scale(data["source"], spec, out, options, config, fit_from, split)
            log.info("prepared %s (engine %s) in %.1fs", out, options.engine, time.perf_counter() - start)
            report_unknown(out, data)
            return out
        events = load_split_files(data["source"], split) if split.by == "file" and fit_from is None \
            else load_events(data["source"])
        log.info("loaded %d events from %s in %.1fs", events.height, data["source"].get("_target_"),
                 time.perf_counter() - start)
        events, n_dup = drop_duplicates(events)
        if n_dup:
            log.warning("dropped %d exact duplicate event row(s) (same value in every column); %d left",
                        n_dup, events.height)
        prepare(events, spec, out, options, config=config, fit_from=fit_from, split=split)
        log.info("prepared %s in %.1fs", out, time.perf_counter() - start)
        report_unknown(out, data)
    return out


_REPORTED: set[tuple[str, str | None, float | None]] = set()  # (dataset, config hash, threshold) logged here


def report_unknown(out: Path, data: dict) -> list[str]:
    """Log the prepared dataset's share of unknown users / items in val and test (its manifest's
    ``unknown``), warning above ``data.warn_unknown_share`` (:data:`data_prep.vocab.UNKNOWN_WARN`); once
    per process and dataset (a run calls :func:`ensure_prepared` more than once)."""
    manifest = read_manifest(out)
    threshold = data.get("warn_unknown_share", UNKNOWN_WARN)
    key = (str(Path(out).resolve()), manifest.get("config_hash"), threshold)
    if key in _REPORTED:
        return []
    _REPORTED.add(key)
    return warn_unknown(manifest.get("unknown") or {}, threshold, log, what=f"{out.name} ")
