"""The same seed gives identical test metrics on CPU, run twice through the real ``mose-train``."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

ARGS = ["data.source.n_events=5000", "data.source.n_users=100", "data.source.n_items=100", "model.embed_dim=4",
        "model.expert=[16]", "model.tower=[8]", "data.batch_size=64", "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false", "seed=3"]


def test_same_seed_same_metrics(tmp_path):
    exe = shutil.which("mose-train")
    cmd = [exe] if exe else [sys.executable, "-m", "mose.train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    results = []
    for run in ("a", "b"):
        proc = subprocess.run(check=False, args=[*cmd, *ARGS, f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / run}"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results.append(json.loads((tmp_path / run / "metrics.json").read_text()))
    a, b = (r["test"] for r in results)
    assert a.keys() == b.keys() and "click/auc" in a
    differ = {k: (a[k], b[k]) for k in a if not (a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])))}
    assert not differ, differ
    assert results[0]["global_step"] == results[1]["global_step"]
