"""What users bring (issue 13.2, 13.8, 13.9), through the real console scripts: runs that meet each other or
themselves, bad checkpoint files, and one error convention (``error: ...``, exit 2, nothing half-written)."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import console, error_line, run_console

from data_prep.paths import ROOT
from mose.callbacks import load_checkpoint

TINY = ["data.source.n_events=1500", "data.source.n_users=40", "data.source.n_items=40", "model.embed_dim=4",
        "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "threads=1"]


def leftovers(root: Path) -> list[str]:
    """Temp files of atomic writes (``.<name>.tmp-<pid>-<hex>``) still under ``root``."""
    return [str(p) for p in root.rglob("*.tmp*")]


# ---- 13.2 runs that meet each other or themselves ------------------------------------------------------------

def test_two_runs_started_together_get_their_own_run_dirs(tmp_path):
    """Two ``mose-train`` started at the same moment with the default run dir (outputs/runs/<date>/<time>-<pid>)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [*console("mose-train", "mose.train"), *TINY, f"paths.data_dir={tmp_path / 'data'}"]
    procs = [subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    runs = sorted(p.parent for p in (tmp_path / "outputs" / "runs").glob("*/*/metrics.json"))
    assert len(runs) == 2 and all(re.fullmatch(r"\d\d-\d\d-\d\d-\d+", r.name) for r in runs), runs  # <time>-<pid>
    for run in runs:
        assert (run / "checkpoints" / "last.ckpt").is_file() and len(list(run.glob("checkpoints/epoch*.ckpt"))) == 1
        assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == json.loads(
            (run / "metrics.json").read_text())["global_step"]
    assert not leftovers(tmp_path / "outputs")


def test_resume_auto_on_a_finished_run_tests_without_training(one_task_run):
    """A requeued job: the run finished training (and was killed while testing, so no metrics.json);
    ``resume=auto`` tests the best checkpoint and writes metrics.json, with no new optimizer step."""
    work, args = one_task_run
    run = work / "run"
    before = json.loads((run / "metrics.json").read_text())
    ckpts = {p.name: p.stat().st_mtime_ns for p in (run / "checkpoints").glob("*.ckpt")}
    (run / "metrics.json").unlink()
    proc = run_console("mose-train", "mose.train", [*args, "resume=auto"], work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = json.loads((run / "metrics.json").read_text())
    assert after["global_step"] == before["global_step"] and after["checkpoint"] == before["checkpoint"]
    assert after["test"]["click/auc"] == pytest.approx(before["test"]["click/auc"], abs=1e-6)
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == before["global_step"]
    assert {p.name for p in (run / "checkpoints").glob("*.ckpt")} == set(ckpts)  # no new best checkpoint
    assert (run / "checkpoints" / before["checkpoint"].rsplit("/", 1)[1]).stat().st_mtime_ns == \
        ckpts[before["checkpoint"].rsplit("/", 1)[1]]


# ---- 13.8 checkpoints that are not ------------------------------------------------------------------------------

def bad_checkpoint(kind: str, path: Path) -> Path:
    if kind == "truncated":
        torch.save({"state_dict": {"w": torch.zeros(1000)}, "hyper_parameters": {}}, path)
        path.write_bytes(path.read_bytes()[:400])
    elif kind == "random bytes":
        path.write_bytes(os.urandom(4096))
    else:  # a torch file, but not a Lightning checkpoint of MultiTaskModule
        torch.save({"w": torch.zeros(3)}, path)
    return path


@pytest.mark.parametrize("script, kind, words", [
    ("mose-predict", "truncated", "cannot be read"), ("mose-predict", "random bytes", "cannot be read"),
    ("mose-export", "random bytes", "cannot be read"), ("mose-export", "not lightning", "is not a mose-train checkpoint"),
])  # every kind through load_checkpoint, as mose-eval (tests/test_checkpoints.py); each script at least twice
def test_predict_and_export_refuse_bad_checkpoints_like_eval(script, kind, words, tmp_path):
    ckpt = bad_checkpoint(kind, tmp_path / "model.ckpt")
    if script == "mose-predict":
        proc = run_console(script, "mose.predict", [f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'out'}"], tmp_path)
    else:
        proc = run_console(script, "mose.export", [str(ckpt), "--out", str(tmp_path / "out" / "model.pt")], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = error_line(proc)
    assert line.startswith(f"error: checkpoint {ckpt} ") and words in line and "refusing" not in line, line
    assert not list((tmp_path / "out").glob("*.parquet")) and not (tmp_path / "out" / "model.pt").exists()


# ---- 13.9 one error convention -------------------------------------------------------------------------------------

REGRESSION = ["~data.tasks", "+data.tasks={watch_time: {kind: regression}}"]


@pytest.mark.parametrize("script, module, args, words", [
    ("mose-train", "mose.train", ["data.source.foo=1"], ["Could not override 'data.source.foo'", "+data.source.foo=1",
                                                          "not in struct"]),
    ("mose-train", "mose.train", ["+data.source.foo=1"],
     ["data.source.foo: not a parameter of data_prep.sources.synthetic.generate", "n_events"]),
    ("mose-train", "mose.train", [*REGRESSION, "callbacks.early_stopping.monitor=val/watch_time/mes"],
     ["callbacks.early_stopping.monitor=val/watch_time/mes: not a metric", "val/loss, val/watch_time/mse"]),
    ("mose-prep", "data_prep.cli", ["data=nope"], ["Could not find 'data/nope'", "kuairand", "synthetic"]),
    ("mose-eval", "mose.eval", [], ["Missing mandatory value: ckpt_path", "ckpt_path=..."]),
    ("mose-cli", "mose.cli", ["from-hydra", "model=nope"], ["Could not find 'model/nope'", "mmoe"]),
], ids=["not-in-struct", "unexpected-keyword", "monitor", "prep-group", "eval-missing", "cli"])
def test_config_errors_stop_before_anything_is_written(script, module, args, words, tmp_path):
    """Hydra's own composition errors, data.source keys the loader does not take and a misspelled monitor
    metric: error: ..., exit 2, before any data is prepared or any checkpoint written."""
    if script in ("mose-train", "mose-prep"):
        args = [*args, f"paths.data_dir={tmp_path / 'data'}"]
    if script != "mose-cli":
        args = [*args, f"hydra.run.dir={tmp_path / 'run'}"]
    proc = run_console(script, module, args, tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = error_line(proc)
    assert all(w in line for w in words), line
    assert not (tmp_path / "data").exists() and not list(tmp_path.rglob("*.ckpt")) and not (tmp_path / "outputs").exists()


def test_run_dir_under_a_file_names_the_path(tmp_path):
    """An output folder that cannot be created (here: its parent is a file; as root, permissions do not stop us)."""
    (tmp_path / "file").write_text("x")
    proc = run_console("mose-train", "mose.train", [*TINY, f"paths.data_dir={tmp_path / 'data'}",
                                                    f"hydra.run.dir={tmp_path / 'file' / 'run'}"], tmp_path)
    assert proc.returncode == 2
    assert error_line(proc) == f"error: {tmp_path / 'file' / 'run'}: Not a directory"
    assert not (tmp_path / "data").exists()


def full_disk(limit: int):
    """A ``preexec_fn``: files of this process cannot grow past ``limit`` bytes (EFBIG, as a full disk's ENOSPC)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_full_disk_keeps_the_previous_predictions(one_task_run):
    """mose-predict on a disk that fills up while writing: error naming the file and what it holds, the
    previous predictions untouched, no temp file left; an output folder under a file: the same convention."""
    work, _ = one_task_run
    ckpt = json.loads((work / "run" / "metrics.json").read_text())["checkpoint"]
    out = work / "full" / "predictions.parquet"
    args = [f"ckpt_path={ckpt}", "hydra.output_subdir=null", f"hydra.run.dir={work / 'full'}"]
    proc = run_console("mose-predict", "mose.predict", [*args, f"out={out}"], work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    previous = out.read_bytes()
    proc = run_console("mose-predict", "mose.predict", [*args, f"out={out}", "split=val"], work,
                       preexec_fn=full_disk(len(previous) // 2))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert error_line(proc) == f"error: cannot write {out} (predictions): File too large"
    assert out.read_bytes() == previous and not leftovers(work / "full")

    (work / "file").write_text("x")
    proc = run_console("mose-predict", "mose.predict", [*args, f"out={work / 'file' / 'p.parquet'}"], work)
    assert proc.returncode == 2
    assert error_line(proc) == f"error: cannot write {work / 'file' / 'p.parquet'} (predictions): " \
                               f"{work / 'file'} is a file, not a folder"


def test_full_disk_while_preparing_leaves_no_dataset(tmp_path):
    proc = run_console("mose-prep", "data_prep.cli", ["data.source.n_events=3000", f"paths.data_dir={tmp_path / 'data'}",
                                                      "hydra.output_subdir=null", f"hydra.run.dir={tmp_path / 'run'}"],
                       tmp_path, preexec_fn=full_disk(8000))
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = error_line(proc)  # the dataset folder is synthetic-<source key>
    assert re.match(rf"error: cannot write {re.escape(str(tmp_path / 'data' / 'synthetic'))}-[0-9a-f]{{8}} "
                    r"\(prepared dataset\): ", line), line
    assert not [p for p in (tmp_path / "data").iterdir() if p.is_dir()]  # no dataset, no temp folder


def test_report_names_a_corrupt_metrics_json(tmp_path):
    good, bad = tmp_path / "sweep" / "0", tmp_path / "sweep" / "1"
    good.mkdir(parents=True)
    bad.mkdir()
    (good / "metrics.json").write_text(json.dumps({"model": "m", "data": "d", "test": {"click/auc": 0.7}}))
    (bad / "metrics.json").write_text('{"model": "m", "test": {"click/au')  # cut short by a kill or a full disk
    (tmp_path / "sweep" / "report.md").write_text("previous report\n")
    proc = run_console("mose-report", "mose.report", [str(tmp_path / "sweep")], tmp_path)
    assert proc.returncode == 2
    line = error_line(proc)
    assert line.startswith(f"error: {bad / 'metrics.json'}: not valid JSON"), line
    assert (tmp_path / "sweep" / "report.md").read_text() == "previous report\n"
    assert not list((tmp_path / "sweep").glob("*.png")) and not leftovers(tmp_path)


def test_truncated_kuairand_file_is_named(tmp_path):
    sample = ROOT.parent / "shared" / "data" / "kuairand"
    if not sample.is_dir():
        pytest.skip(f"no KuaiRand sample at {sample}")
    folder = tmp_path / "kuairand"
    folder.mkdir()
    log = sample / "log_likehate_kcore15.tsv.gz"
    (folder / log.name).write_bytes(log.read_bytes()[: log.stat().st_size // 3])  # a download cut short
    shutil.copy(sample / "user_features.csv.gz", folder)
    proc = run_console("mose-prep", "data_prep.cli", ["data=kuairand", f"data.source.path={folder}",
                                                      f"paths.data_dir={tmp_path / 'data'}",
                                                      f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = error_line(proc)
    assert line.startswith(f"error: KuaiRand file {folder / log.name} cannot be read (truncated"), line
    assert not list((tmp_path / "data").glob("kuairand*"))  # no dataset folder, whatever its source key
