"""Data that changed under a checkpoint, and candidates for ``mose-predict`` (issue 13): ``mose-eval``,
``mose-predict`` and ``resume=`` refuse a dataset whose vocabularies differ from the checkpoint's
(ids permuted among users, here), naming what differs; ``mose-eval data_dir=`` never overwrites a
folder it did not prepare; candidates are validated like events and unseen ids are counted. A task
without positives in val is reported, and training still ends with a tested checkpoint.

Real console scripts (subprocesses) over one tiny model trained once for the module.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import error_line, make_events

from data_prep.fingerprint import differences, fingerprint
from data_prep.fit import fit
from data_prep.options import PrepOptions
from data_prep.schema import EventSpec
from data_prep.transform import log_frame

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "POLARS_MAX_THREADS": "1"}
DATA = ["data=events", "data.tasks={click: {kind: binary}, rare: {kind: binary}}", "data.categorical=[device]",
        "data.numeric=[duration]", "data.prep.min_count=1", "data.prep.history_len=4", "data.batch_size=128"]
MODEL = ["model=mmoe", "model.embed_dim=4", "model.expert=[16]", "model.tower=[8]", "trainer.max_epochs=1",
         "trainer.enable_progress_bar=false", "threads=1"]
SCRIPTS = {"mose-train": "mose.train", "mose-eval": "mose.eval", "mose-predict": "mose.predict"}


def run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = shutil.which(script)
    cmd = [exe] if exe else [sys.executable, "-m", SCRIPTS[script]]
    return subprocess.run([*cmd, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300, check=False)


def the_log() -> pl.DataFrame:
    """conftest events plus ``rare``: positives only before the val cut, so val and test have none."""
    events = make_events(seed=0, n_users=120)
    cut = events["ts"].quantile(0.8, "lower")
    return events.with_columns(((pl.col("ts") < cut) & (pl.col("like") == 1)).cast(pl.Int64).alias("rare"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A 1-epoch MMoE trained by ``mose-train`` on a CSV log: paths and the run's output."""
    tmp = tmp_path_factory.mktemp("changes")
    log = tmp / "log.csv"
    the_log().write_csv(log)
    args = [*DATA, f"data.source.path={log}", *MODEL, f"paths.data_dir={tmp / 'data'}"]
    proc = run("mose-train", *args, f"hydra.run.dir={tmp / 'run'}", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp / "run" / "metrics.json").read_text())
    return {"tmp": tmp, "log": log, "args": args, "run": tmp / "run", "ckpt": metrics["checkpoint"],
            "metrics": metrics, "proc": proc}


def test_task_without_val_positives_is_reported_not_a_crash(trained):
    err = trained["proc"].stderr
    assert "task 'rare' has no positive labels in the val split" in err  # at prep
    assert "task 'rare': AUC and GAUC are undefined on the val split" in err  # by the metrics
    test = trained["metrics"]["test"]
    assert math.isnan(test["rare/auc"]) and test["auc_mean"] == test["click/auc"] and not math.isnan(test["auc_mean"])
    assert Path(trained["ckpt"]).is_file()


def candidates(n: int = 6) -> pl.DataFrame:
    """``n`` early (train-time) events of known users and items, labels dropped: 2 users, 1 item made unseen."""
    early = the_log().sort("ts").head(n).drop("click", "like", "watch_time", "rare")
    return early.with_columns(
        pl.when(pl.int_range(pl.len()) < 2).then(pl.lit(999_999)).otherwise(pl.col("user_id")).alias("user_id"),
        pl.when(pl.int_range(pl.len()) == 5).then(pl.lit("item_new")).otherwise(pl.col("item_id")).alias("item_id"))


def test_predict_scores_unseen_ids_and_counts_them(trained, tmp_path):
    cands = candidates()
    cands.write_csv(tmp_path / "cands.csv")
    out = tmp_path / "predict" / "predictions.parquet"
    proc = run("mose-predict", f"ckpt_path={trained['ckpt']}", f"candidates={tmp_path / 'cands.csv'}",
               f"hydra.run.dir={tmp_path / 'predict'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "scored 6 candidates: 2 unknown users, 1 unknown items" in proc.stderr, proc.stderr[-2000:]
    scored = pl.read_parquet(out)
    assert scored["user_id"].to_list() == cands["user_id"].to_list()
    assert scored["p_click"].is_between(0, 1).all() and scored.height == 6


BAD_CANDIDATES = {  # case -> (change, words of the error line)
    "null user": (lambda df: df.with_columns(pl.when(pl.int_range(pl.len()) == 2).then(None)
                                              .otherwise(pl.col("user_id")).alias("user_id")),
                  ["column 'user_id' has 1 null(s): row 3: None (1-based data rows of ", "cands.csv"]),
    "string user ids": (lambda df: df.with_columns(pl.format("u{}", pl.col("user_id")).alias("user_id")),
                        ["candidate column 'user_id' holds string values", "row 1: 'u999999'",
                         "vocabulary holds integer ids"]),
    "missing column": (lambda df: df.drop("device"), ["candidates lack column(s) ['device']"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CANDIDATES))
def test_predict_refuses_bad_candidates(trained, case, tmp_path):
    change, words = BAD_CANDIDATES[case]
    change(candidates()).write_csv(tmp_path / "cands.csv")
    line = error_line(run("mose-predict", f"ckpt_path={trained['ckpt']}", f"candidates={tmp_path / 'cands.csv'}",
                          f"hydra.run.dir={tmp_path / 'predict'}", cwd=tmp_path))
    assert all(w in line for w in words), line
    assert not (tmp_path / "predict" / "predictions.parquet").exists()


def test_eval_data_dir_prepares_a_new_folder_and_never_overwrites_others(trained, tmp_path):
    fresh = tmp_path / "fresh"
    proc = run("mose-eval", f"ckpt_path={trained['ckpt']}", f"data_dir={fresh}", f"hydra.run.dir={tmp_path / 'e1'}",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (fresh / "manifest.json").is_file() and (tmp_path / "e1" / "metrics.json").is_file()
    scores = json.loads((tmp_path / "e1" / "metrics.json").read_text())["test"]
    assert scores["click/auc"] == pytest.approx(trained["metrics"]["test"]["click/auc"], abs=1e-6)

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a dataset")
    line = error_line(run("mose-eval", f"ckpt_path={trained['ckpt']}", f"data_dir={foreign}",
                          f"hydra.run.dir={tmp_path / 'e2'}", cwd=tmp_path))
    assert f"data_dir={foreign} holds files that are not a prepared dataset" in line, line
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"] and not (tmp_path / "e2" / "metrics.json").exists()


def test_fingerprint_names_what_differs():
    """In-process: renamed ids, permuted ids, another categorical set, another task set."""
    events = the_log()
    spec = EventSpec.from_config({"click": {"kind": "binary"}}, ["device"])

    def fp(df: pl.DataFrame, s: EventSpec = spec) -> dict:  # the fitted state of the events, all of them train
        cuts = (int(df["ts"].max()) + 1,) * 2
        return fit(log_frame(df, cuts), s, PrepOptions(val_frac=0.0, test_frac=0.0), cuts).fingerprint()

    base = fp(events)
    assert differences(base, fp(events)) == []
    renamed = differences(base, fp(events.with_columns(pl.col("user_id") * 3 + 1)))
    assert renamed == ["user ids (user_id): other ids (130 vocabulary entries in the checkpoint, 130 in the dataset)"]
    users = events["user_id"].unique().sort()
    permuted = differences(base, fp(events.with_columns(pl.col("user_id").replace_strict(users, users.shuffle(seed=1)))))
    assert permuted[:2] == [  # (the items are first seen in another order: other indices, as for the devices)
        ("user ids (user_id): the same ids and indices, but other train event counts per id (ids permuted among "
         "users or items, or other train events)"),
        ("item ids (item_id): the same ids at other indices (the training events changed order, e.g. ids permuted "
         "among users)")], permuted
    other = EventSpec.from_config({"click": {"kind": "binary"}, "like": {"kind": "binary"}}, [])
    diffs = differences(base, fp(events, other))
    assert diffs == ["categorical 'device': only the checkpoint has this vocabulary",
                     "task set: click (binary) in the checkpoint, click (binary), like (binary) in the dataset"], diffs


def test_checkpoints_from_before_fingerprints_warn_not_refuse(caplog):
    from mose.callbacks import CheckpointError
    from mose.compat import check_data_matches

    spec = EventSpec.from_config({"click": {"kind": "binary"}})
    manifest = {"fingerprint": fingerprint({}, spec)}
    with caplog.at_level(logging.WARNING, logger="mose.compat"):
        check_data_matches({"fingerprint": None}, manifest, "checkpoint old.ckpt", "data/x")
    assert "checkpoint old.ckpt cannot be checked against the dataset data/x" in caplog.text
    other = fingerprint({}, EventSpec.from_config({"click": {"kind": "regression"}}))
    with pytest.raises(CheckpointError, match=r"task set: click \(binary\) in the checkpoint, click \(regression\)"):
        check_data_matches({"fingerprint": other | {"tasks": manifest["fingerprint"]["tasks"]}}, {"fingerprint": other},
                           "checkpoint new.ckpt", "data/x")


def test_permuted_users_are_refused_by_eval_resume_and_predict(trained, tmp_path):
    """The log re-written with user ids permuted among users: every script refuses, naming user ids."""
    log, original = trained["log"], trained["log"].read_bytes()
    users = the_log()["user_id"].unique().sort()
    the_log().with_columns(pl.col("user_id").replace_strict(users, np.roll(users.to_numpy(), 1))).write_csv(log)
    try:
        line = error_line(run("mose-eval", f"ckpt_path={trained['ckpt']}", f"hydra.run.dir={tmp_path / 'eval'}",
                              cwd=tmp_path))
        assert f"checkpoint {trained['ckpt']} was trained on other data" in line, line
        assert "user ids (user_id): other ids" in line and "item ids (item_id): the same ids at other indices" in line
        assert not (tmp_path / "eval" / "metrics.json").exists()

        resumed = tmp_path / "resumed"
        line = error_line(run("mose-train", *trained["args"], "model.expert=[32]", f"resume={trained['run']}",
                              f"hydra.run.dir={resumed}", cwd=tmp_path))
        assert f"resume={trained['run']}/checkpoints/last.ckpt: the checkpoint does not fit this run" in line, line
        assert "user ids (user_id)" in line and "model.expert: [16] in the checkpoint, [32] now" in line, line
        assert not (resumed / "checkpoints").exists() and not (resumed / "metrics.json").exists()

        line = error_line(run("mose-predict", f"ckpt_path={trained['ckpt']}", "split=test",
                              f"hydra.run.dir={tmp_path / 'predict'}", cwd=tmp_path))
        assert "the checkpoint was trained on other data" in line and "user ids (user_id)" in line, line
        assert not (tmp_path / "predict" / "predictions.parquet").exists()
    finally:
        log.write_bytes(original)
