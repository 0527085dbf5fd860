"""``mose-train -m hydra/launcher=ray``: a real Hydra multirun whose runs are Ray tasks on the shared local Ray
instance (the subprocess joins it through ``hydra.launcher.ray.init.address``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="the ray extra is not installed (pip install 'mose[ray]')")

TINY = ["data.source.n_events=3000", "data.source.n_users=60", "data.source.n_items=60", "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false", "data.batch_size=64", "model.embed_dim=4", "threads=1"]


@pytest.mark.slow
def test_two_runs_on_ray(tmp_path, ray_local):
    exe = shutil.which("mose-train")
    cmd = [exe] if exe else [sys.executable, "-m", "mose.train"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    sweep = tmp_path / "multirun"
    # the data once, before the runs (as docs/reproduce.md says): both runs then read the same folder
    prep = shutil.which("mose-prep")
    subprocess.run([*([prep] if prep else [sys.executable, "-m", "data_prep.cli"]), *TINY[:3],
                    f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'prep'}"],
                   cwd=tmp_path, env=env, check=True, capture_output=True, timeout=300)
    proc = subprocess.run([*cmd, "-m", "hydra/launcher=ray", f"hydra.launcher.ray.init.address={ray_local}",
                           "model=shared_bottom", "seed=1,2", *TINY, f"paths.data_dir={tmp_path / 'data'}",
                           f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = sorted(sweep.rglob("metrics.json"))
    assert [m.parent.name for m in metrics] == ["0", "1"], proc.stderr[-2000:]
    runs = [json.loads(m.read_text()) for m in metrics]
    assert [r["seed"] for r in runs] == [1, 2] and all(0.0 <= r["test"]["auc_mean"] <= 1.0 for r in runs)
    assert "Ray Launcher is launching 2 jobs" in proc.stderr + proc.stdout
