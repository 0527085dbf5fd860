"""Checkpoints load with ``weights_only=True``: plain data only; one carrying pickled code is refused."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from mose.callbacks import CheckpointError, find_resume_checkpoint, load_checkpoint


class WritesAFile:
    """Unpickling this calls ``open(path, "w")``: stands for any code a crafted checkpoint could run."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture()
def evil_ckpt(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": {"x": WritesAFile(marker)}}, path)
    assert not marker.exists()
    return path, marker


def test_crafted_checkpoint_is_refused(evil_ckpt, tmp_path):
    path, marker = evil_ckpt
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert f"refusing to load checkpoint {path}" in msg and "arbitrary code" in msg and len(msg) < 600, msg
    with pytest.raises(CheckpointError, match="refusing"):
        find_resume_checkpoint(str(path), tmp_path)
    run = tmp_path / "run" / "checkpoints"
    run.mkdir(parents=True)
    shutil.copy(path, run / "last.ckpt")
    with pytest.raises(CheckpointError, match="refusing"):
        find_resume_checkpoint(str(tmp_path / "run"), tmp_path)  # resume=<run dir>
    assert not marker.exists()


def test_truncated_or_missing_checkpoint(tmp_path):
    path = tmp_path / "cut.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        find_resume_checkpoint(str(tmp_path / "nope.ckpt"), tmp_path)
    with pytest.raises(CheckpointError, match="checkpoints/last.ckpt"):
        find_resume_checkpoint(str(tmp_path), tmp_path)
    noise = tmp_path / "noise.ckpt"
    noise.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(CheckpointError, match="cannot be read") as err:  # unreadable, not "unsafe pickled objects"
        load_checkpoint(noise)
    assert "refusing" not in str(err.value)
    torch.save({"w": torch.zeros(2)}, tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match="is not a mose-train checkpoint"):
        load_checkpoint(tmp_path / "weights.pt")
    assert find_resume_checkpoint("auto", tmp_path) is None  # nothing to resume yet: a fresh start
    assert find_resume_checkpoint(None, tmp_path) is None


def test_mose_eval_refuses_crafted_checkpoint(evil_ckpt, tmp_path):
    path, marker = evil_ckpt
    exe = shutil.which("mose-eval")
    cmd = [exe] if exe else [sys.executable, "-m", "mose.eval"]
    proc = subprocess.run(check=False, args=[*cmd, f"ckpt_path={path}", f"hydra.run.dir={tmp_path / 'eval'}"], cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: refusing to load checkpoint {path}")
    assert "Traceback" not in proc.stderr
    assert not marker.exists()


def plain(value, path="") -> list[str]:
    """Paths inside ``value`` that are not plain data (dict / list / str / number / bool / None)."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in plain(v, f"{path}.{k}")] + \
            [f"{path} key {k!r}" for k in value if not isinstance(k, (str, int))]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in plain(v, f"{path}[{i}]")]
    return [] if value is None or isinstance(value, (str, int, float, bool)) else [f"{path}: {type(value).__name__}"]


def test_trained_checkpoints_are_plain_data(events_parquet, tmp_path):
    from conftest import compose_with_output
    from test_train_e2e import data_overrides

    from mose.train import train

    run = tmp_path / "run"
    cfg = compose_with_output("train", data_overrides(events_parquet, tmp_path / "data", features=False) + [
        "model=single_task", "model.embed_dim=4", "model.hidden=[8]", "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false", "callbacks.last_checkpoint.every_n_train_steps=10"], run)
    train(cfg)
    GlobalHydra.instance().clear()
    ckpts = sorted((run / "checkpoints").glob("*.ckpt"))
    assert {p.name for p in ckpts} >= {"last.ckpt"} and len(ckpts) == 2, ckpts
    for ckpt in ckpts:
        state = load_checkpoint(ckpt)  # weights_only=True
        assert not plain(state["hyper_parameters"]), plain(state["hyper_parameters"])
        assert state["hyper_parameters"]["model"]["_target_"] == "mose.models.single_task.SingleTask"
