"""The first hour of a new user (issue 18): thread count, config keys, cache folders, unknown-id shares."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_events
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from data_prep.build import ensure_prepared, event_spec
from data_prep.dataset import read_manifest
from data_prep.options import RUN_KEYS, PrepOptions
from data_prep.paths import CONF_DIR, ROOT
from data_prep.schema import SchemaError
from data_prep.vocab import OOV, unknown_shares
from mose.threads import MAX_AUTO, auto_threads, set_threads


def data_config(overrides: list[str], config: str = "train") -> dict:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config, overrides=overrides)
    return OmegaConf.to_container(cfg.data, resolve=True)


@pytest.mark.parametrize(("cores", "load", "procs", "expected"), [
    (2, 1.6, 1, 1),    # loaded 2-core machine: round(0.4) = 0 -> at least 1
    (2, 0.2, 1, 2),    # idle 2 cores
    (16, 2.0, 1, MAX_AUTO),  # many free cores: capped
    (16, 4.0, 4, 3),   # 12 free cores shared by 4 DDP processes
    (2, 9.0, 1, 1),
])
def test_auto_threads_is_the_free_cores_per_process(cores, load, procs, expected):
    assert auto_threads(cores=cores, load=load, procs=procs) == expected


def test_set_threads_sets_torch_and_refuses_zero():
    before = torch.get_num_threads()
    try:
        assert set_threads(3) == 3 and torch.get_num_threads() == 3
        n = set_threads(None)
        assert 1 <= n <= MAX_AUTO and torch.get_num_threads() == n
        with pytest.raises(ValueError, match="threads=0"):
            set_threads(0)
    finally:
        torch.set_num_threads(before)


def test_events_config_lists_every_prep_key_and_the_docs_use_its_names():
    """conf/data/events.yaml has every data.prep option (no '+' needed), and docs/own_events.md names
    only keys that exist, with their full data.prep. prefix."""
    prep = data_config(["data=events", "data.source.path=x.csv", "data.tasks={click: binary}"])["prep"]
    options = PrepOptions.from_config(prep)
    assert set(prep) == set(options.to_dict()) | set(RUN_KEYS)  # what the prep writes, and how it runs
    doc = (ROOT / "docs" / "own_events.md").read_text()
    named = set(re.findall(r"data\.prep\.(\w+)", doc))
    assert {"activity_buckets", "personalization", "new_user_max_prior", "min_count"} <= named
    assert named <= set(prep), named - set(prep)
    assert not re.search(r"(?<!data\.)`prep\.\w+", doc), "a bare prep.<key> in docs/own_events.md"


def test_task_shorthand_is_accepted_and_a_wrong_one_shows_the_right_form():
    spec = event_spec({"tasks": {"like": "binary", "watch": {"kind": "regression", "transform": "log1p"}}})
    assert [(t.name, t.kind) for t in spec.tasks] == [("like", "binary"), ("watch", "regression")]
    with pytest.raises(SchemaError, match=r"data.tasks.like='binray'.*'data.tasks=\{like: binary\}'"):
        event_spec({"tasks": {"like": "binray"}})
    with pytest.raises(SchemaError, match=r"data.tasks=\{like: \{kind: binary\}\}"):
        event_spec({"tasks": {"like": 1}})


def test_prepared_folder_is_keyed_by_the_source(tmp_path):
    """Two logs (or two splits of one) used in turn each keep their folder (none re-prepares the other); how the prep
    runs (the engine) does not change it; data.dir still overrides."""
    logs = []
    for seed in (0, 1):
        path = tmp_path / f"log{seed}.parquet"
        make_events(seed=seed, n_users=60, n_items=20).write_parquet(path)
        logs.append(path)
    base = ["data=events", "data.tasks={click: binary}", "data.prep.min_count=1", f"paths.data_dir={tmp_path / 'd'}"]
    a, b = (data_config([*base, f"data.source.path={p}"]) for p in logs)
    assert a["dir"] != b["dir"] and Path(a["dir"]).name.startswith("events-")
    assert data_config([*base, f"data.source.path={logs[0]}"])["dir"] == a["dir"]
    assert data_config([*base, f"data.source.path={logs[0]}", "data.prep.history_len=3"])["dir"] != a["dir"]
    by_user = data_config([*base, f"data.source.path={logs[0]}", "data.split.by=user"])["dir"]  # other arrays
    assert by_user != a["dir"] and by_user != data_config([*base, f"data.source.path={logs[0]}", "data.split.by=user",
                                                           "data.split.seed=1"])["dir"]
    assert data_config([*base, f"data.source.path={logs[0]}", "data.prep.engine=processes"])["dir"] == a["dir"]
    assert data_config([*base, f"data.source.path={logs[0]}", f"data.dir={tmp_path / 'mine'}"])["dir"] == \
        str(tmp_path / "mine")
    stamps = {}
    for data in (a, b):
        stamps[data["dir"]] = (ensure_prepared(data) / "manifest.json").stat().st_mtime_ns
    for data in (a, b):  # in turn again: both reused as they are
        assert (ensure_prepared(data) / "manifest.json").stat().st_mtime_ns == stamps[data["dir"]]
    GlobalHydra.instance().clear()


def test_unknown_shares_by_hand():
    user = np.array([OOV, 5, 6, OOV, OOV, 7])
    item = np.array([2, OOV, 3, 4, 5, 6])
    split = np.array([0, 0, 1, 1, 2, 2])
    s = unknown_shares(user, item, split)
    assert s["train"] == {"users": 0.5, "items": 0.5, "events": 2}
    assert s["val"] == {"users": 0.5, "items": 0.0, "events": 2}
    assert s["test"] == {"users": 0.5, "items": 0.0, "events": 2}
    assert unknown_shares(user, item)["all"] == {"users": 0.5, "items": 1 / 6, "events": 6}


def test_prep_records_unknown_shares_and_warns_above_the_threshold(tmp_path, events_parquet, caplog):
    """The conftest log has users and items seen only in the last 5% of time: unknown in val/test."""
    base = ["data=events", f"data.source.path={events_parquet}", "data.prep.min_count=1",
            "data.tasks={click: binary}", f"paths.data_dir={tmp_path}"]
    with caplog.at_level(logging.INFO, logger="data_prep.build"):
        root = ensure_prepared(data_config([*base, "data.warn_unknown_share=0.5"]))
    shares = read_manifest(root)["unknown"]
    split = np.load(root / "split.npy")
    user = np.load(root / "user.npy")
    assert shares["test"]["users"] == pytest.approx(float((user[split == 2] == OOV).mean()))
    assert 0 < shares["test"]["users"] < 0.5 and shares["train"]["users"] == 0
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("test: unknown users" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="data_prep.build"):
        ensure_prepared(data_config([*base, "data.warn_unknown_share=0.001"]))  # reused, warned again
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(re.search(r"test: \d+\.\d% of the events have an unknown user", m) for m in warned), warned
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="data_prep.build"):
        ensure_prepared(data_config([*base, "data.warn_unknown_share=0.001"]))  # once per process and dataset
    assert not [r for r in caplog.records if "unknown" in r.getMessage()]
    GlobalHydra.instance().clear()


def test_resume_continues_in_the_run_folder(tmp_path):
    """resume=<run dir> (or a checkpoint in its checkpoints/) sets hydra.run.dir to that folder; no resume or
    resume=auto keeps a new timestamped folder; an explicit hydra.run.dir still wins."""
    run = tmp_path / "runs" / "r1"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    loose = tmp_path / "elsewhere.ckpt"
    loose.write_bytes(b"")

    def run_dir(*overrides: str) -> str:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose("train", overrides=list(overrides), return_hydra_config=True).hydra.run.dir

    assert run_dir(f"resume={run}") == str(run)
    assert run_dir(f"resume={run / 'checkpoints' / 'last.ckpt'}") == str(run)
    for other in ("resume=auto", f"resume={loose}", "resume=null"):
        assert run_dir(other).startswith("outputs/runs/"), other
    assert run_dir(f"resume={run}", f"hydra.run.dir={tmp_path / 'mine'}") == str(tmp_path / "mine")
    GlobalHydra.instance().clear()
