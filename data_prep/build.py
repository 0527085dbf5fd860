"""From a data config to a prepared dataset on disk, reused while its config is unchanged."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from hydra.utils import instantiate

from data_prep.prepare import config_hash, prepare, read_manifest
from data_prep.schema import EventSpec

log = logging.getLogger(__name__)


def event_spec(data: dict) -> EventSpec:
    return EventSpec.from_config(data["tasks"], data.get("categorical"), data.get("numeric"), data.get("cohorts"))


def prep_config(data: dict) -> dict:
    """The part of a data config that determines the prepared arrays (not batch sizes or loss weights)."""
    spec = event_spec(data).to_dict()
    spec["tasks"] = {t: {k: v for k, v in s.items() if k != "weight"} for t, s in spec["tasks"].items()}
    return {"source": data["source"], "prep": data.get("prep", {}), "spec": spec}


def source_files_stamp(source: dict) -> list[list]:
    """``[path, size, mtime_ns]`` of every file the source config points at (files or folders).

    Part of the dataset's config hash, so editing or replacing a raw log re-prepares it.
    """
    stamp = []
    for value in source.values():
        if isinstance(value, str) and value and Path(value).exists():
            root = Path(value)
            for f in sorted([root] if root.is_file() else (p for p in root.rglob("*") if p.is_file())):
                st = f.stat()
                stamp.append([str(f), st.st_size, st.st_mtime_ns])
    return stamp


def ensure_prepared(data: dict, force: bool = False) -> Path:
    """Prepare ``data["dir"]`` from ``data["source"]`` unless a dataset with the same config is there."""
    out = Path(data["dir"])
    config = {**prep_config(data), "source_files": source_files_stamp(data["source"])}
    if not force and (out / "manifest.json").exists() and read_manifest(out).get("config_hash") == config_hash(config):
        return out
    start = time.perf_counter()
    events = instantiate(data["source"])
    log.info("loaded %d events from %s in %.1fs", events.height, data["source"].get("_target_"),
             time.perf_counter() - start)
    prepare(events, event_spec(data), out, **data.get("prep", {}), config=config)
    log.info("prepared %s in %.1fs", out, time.perf_counter() - start)
    return out
