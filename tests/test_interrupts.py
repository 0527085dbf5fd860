"""Interrupted runs with real subprocesses: a killed ``mose-prep`` leaves the previous dataset usable;
a ``mose-train`` killed mid-epoch (SIGKILL) resumes to the same number of optimizer steps; SIGTERM
saves a checkpoint first; a non-finite loss stops (or skips the batch) with the step and task named."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import prepared_dir
from hydra.core.global_hydra import GlobalHydra

from data_prep.build import ensure_prepared
from data_prep.dataset import read_manifest
from mose.callbacks import NonFiniteLossError, cli_errors, load_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
TINY = ["data.source.n_events=6000", "data.source.n_users=100", "data.source.n_items=100",
        "model.embed_dim=4", "model.expert=[16]", "model.tower=[8]", "data.batch_size=64", "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false", "callbacks.early_stopping.patience=100",
        "callbacks.last_checkpoint.every_n_train_steps=5"]


def command(name: str, module: str) -> list[str]:
    exe = shutil.which(name)
    return [exe] if exe else [sys.executable, "-m", module]


def start(args: list[str], cwd: Path, name: str = "mose-train", module: str = "mose.train") -> subprocess.Popen:
    return subprocess.Popen([*command(name, module), *args], cwd=cwd, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, finish(proc)[1][-3000:]
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.02)


def steps(run: Path) -> int:
    return json.loads((run / "metrics.json").read_text())["global_step"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("interrupts")


@pytest.fixture(scope="module")
def uninterrupted(work) -> int:
    """Optimizer steps of a run that is never interrupted (it also prepares the shared dataset)."""
    run = work / "full"
    rc, log = finish(start([*TINY, f"paths.data_dir={work / 'data'}", f"hydra.run.dir={run}"], work))
    assert rc == 0, log[-3000:]
    return steps(run)


def test_sigkill_mid_epoch_then_resume_auto(work, uninterrupted):
    run = work / "killed"
    args = [*TINY, f"paths.data_dir={work / 'data'}", f"hydra.run.dir={run}"]
    proc = start(args, work)
    wait_for(run / "checkpoints" / "last.ckpt", proc)
    time.sleep(random.uniform(0.0, 0.3))
    proc.send_signal(signal.SIGKILL)
    assert finish(proc)[0] == -signal.SIGKILL
    saved = load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"]
    assert 0 < saved < uninterrupted and not (run / "metrics.json").exists()

    rc, log = finish(start([*args, "resume=auto"], work))  # same run dir: continue from its last.ckpt
    assert rc == 0, log[-3000:]
    assert "Restored all states from the checkpoint" in log
    assert steps(run) == uninterrupted


def test_sigterm_saves_checkpoint_then_resume_from_run_dir(work, uninterrupted):
    run = work / "terminated"
    args = [*TINY, f"paths.data_dir={work / 'data'}", "callbacks.last_checkpoint.every_n_train_steps=7"]
    proc = start([*args, f"hydra.run.dir={run}"], work)
    wait_for(run / "checkpoints" / "last.ckpt", proc)
    proc.send_signal(signal.SIGTERM)
    rc, log = finish(proc)
    assert rc == 143, log[-3000:]
    assert "SIGTERM at step" in log and "interrupted by SIGTERM" in log and "Traceback" not in log
    step = int(log.split("SIGTERM at step ")[1].split(":")[0])
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == step < uninterrupted
    assert not (run / "metrics.json").exists()

    resumed = work / "resumed"  # a new run dir continuing from the interrupted one
    rc, log = finish(start([*args, f"hydra.run.dir={resumed}", f"resume={run}"], work))
    assert rc == 0, log[-3000:]
    assert steps(resumed) == uninterrupted


# ---- mose-prep killed at random moments ---------------------------------------------------------------

PREP = ["data.source.n_events=60000", "data.source.n_users=500", "data.source.n_items=300"]


def dataset_state(root: Path) -> tuple[str, dict]:
    """The manifest checksum, after checking every array loads with the manifest's shape and dtype."""
    manifest = read_manifest(root)
    for name, meta in manifest["arrays"].items():
        arr = np.load(root / f"{name}.npy", mmap_mode="r")
        assert list(arr.shape) == meta["shape"] and str(arr.dtype) == meta["dtype"], name
    return manifest["source_checksum"], manifest["splits"]


def test_killed_prep_leaves_previous_dataset_intact(tmp_path):
    data = tmp_path / "data"
    # one data.dir: the new dataset (another source seed, another source key) overwrites the previous one
    base = [*PREP, f"paths.data_dir={data}", f"data.dir={data / 'synthetic'}",
            f"hydra.run.dir={tmp_path / 'run'}"]
    t0 = time.monotonic()
    rc, log = finish(start(base, tmp_path, "mose-prep", "data_prep.cli"))
    took = time.monotonic() - t0
    assert rc == 0, log[-3000:]
    before = dataset_state(data / "synthetic")
    rng = random.Random(0)
    for delay in sorted(rng.uniform(0.3, 1.0) * took for _ in range(3)):
        # a different source seed: a new dataset is being written when the kill lands
        proc = start([*base, "data.source.seed=1", "force=true"], tmp_path, "mose-prep", "data_prep.cli")
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        rc, _ = finish(proc)
        state = dataset_state(data / "synthetic")  # always a complete dataset: the old one, or the new one
        assert rc == -signal.SIGKILL or state != before
        if state != before:  # the new dataset was swapped in whole before the process ended
            break
    (data / ".synthetic.tmp-stale").mkdir()  # as a kill during the write leaves it
    rc, log = finish(start(base, tmp_path, "mose-prep", "data_prep.cli"))
    assert rc == 0, log[-3000:]
    assert dataset_state(data / "synthetic") == before
    assert not list(data.glob(".synthetic.tmp-*")) and not list(data.glob(".synthetic.old-*"))


def test_kill_between_the_swap_renames_is_recovered(tmp_path):
    """The one window where the dataset folder is missing: the next run puts the previous one back."""
    from data_prep.sources.synthetic import generate  # noqa: F401  (the source the config points at)

    data = {"name": "synthetic", "dir": str(tmp_path / "synthetic"),
            "source": {"_target_": "data_prep.sources.synthetic.generate", "n_events": 3000, "n_users": 50,
                       "n_items": 50, "seed": 0},
            "tasks": {"click": {"kind": "binary"}}, "prep": {"history_len": 3, "min_count": 1}}
    out = ensure_prepared(data)
    mtime = (out / "manifest.json").stat().st_mtime_ns
    os.rename(out, tmp_path / ".synthetic.old-4242")
    (tmp_path / ".synthetic.tmp-x").mkdir()
    assert ensure_prepared(data) == out
    assert (out / "manifest.json").stat().st_mtime_ns == mtime  # restored, not rebuilt
    assert not list(tmp_path.glob(".synthetic.*-*"))


# ---- non-finite loss ------------------------------------------------------------------------------------

BAD_STEP = 3


@pytest.fixture()
def nan_at_step(monkeypatch):
    """The ``like`` loss becomes NaN at optimizer step :data:`BAD_STEP` (first time only)."""
    from mose.module import MultiTaskModule

    original, fired = MultiTaskModule._step, []

    def step(self, batch):
        losses, logits, rows, aux = original(self, batch)
        if self.training and self.global_step == BAD_STEP and not fired:
            fired.append(True)
            losses = losses.clone()
            losses[self.tasks.index("like")] = math.nan
        return losses, logits, rows, aux

    monkeypatch.setattr(MultiTaskModule, "_step", step)
    return fired


def nonfinite_config(events_parquet, tmp_path, mode: str):
    from conftest import compose_with_output
    from test_train_e2e import data_overrides

    return compose_with_output("train", data_overrides(events_parquet, tmp_path / "data", features=False) + [
        "model=single_task", "model.embed_dim=4", "model.hidden=[8]", "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false", f"callbacks.nonfinite.mode={mode}"], tmp_path / "run")


def test_nonfinite_loss_stops_naming_step_and_task(nan_at_step, events_parquet, tmp_path):
    from mose.train import train

    with pytest.raises(NonFiniteLossError) as err:
        train(nonfinite_config(events_parquet, tmp_path, "stop"))
    GlobalHydra.instance().clear()
    msg = str(err.value)
    assert f"step {BAD_STEP}" in msg and "['like']" in msg and "like=nan" in msg, msg
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert state["global_step"] == BAD_STEP  # the last good state, before the bad step
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    with pytest.raises(SystemExit) as exit_, cli_errors():
        raise err.value
    assert exit_.value.code == 3


def test_nonfinite_loss_skip_mode_drops_the_batch(nan_at_step, events_parquet, tmp_path):
    from mose.train import train

    train(nonfinite_config(events_parquet, tmp_path, "skip"))
    GlobalHydra.instance().clear()
    assert nan_at_step
    manifest = read_manifest(prepared_dir(tmp_path / "data", "events"))
    batches = math.ceil(manifest["splits"]["train"] / 64)
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    # the skipped batch has no backward: its optimizer step finds no gradients and changes nothing,
    # Lightning still counts it; training went on to the end with finite parameters
    assert state["global_step"] == batches
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
