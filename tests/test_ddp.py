"""Distributed: metrics are synced over the whole validation set across ranks (AUC under a 2-process
gloo group equals the single-process AUC), every evaluation event is scored exactly once (the test
metrics of a ``trainer=ddp_sim`` run equal a single-process ``mose-eval``); ``trainer=ddp_sim`` trains
every model in conf/model/; only rank 0 prepares the data and writes metrics.json."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import CHAINED_MODELS, prepared_dir

from data_prep.paths import CONF_DIR
from mose.metrics import MultiTaskMetrics

TASKS = {"click": "binary", "like": "binary", "watch": "regression"}
COHORTS = {"new_user": ["new", "regular"], "group": ["a", "b", "c"]}


def fake_predictions(n: int = 997, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    preds = torch.rand(n, 3, generator=g)
    targets = torch.cat([(torch.rand(n, 2, generator=g) < preds[:, :2]).float(), torch.rand(n, 1, generator=g)], 1)
    users = torch.randint(0, 40, (n,), generator=g)
    cohorts = torch.stack([torch.randint(0, 2, (n,), generator=g), torch.randint(0, 3, (n,), generator=g)], 1)
    return preds, targets, users, cohorts


def _rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        data = fake_predictions()
        metric = MultiTaskMetrics(TASKS, COHORTS)
        shard = torch.arange(len(data[0]))[rank::world]  # uneven shards (997 rows), several batches each
        for batch in shard.split(100):
            metric.update(*(x[batch] for x in data))
        values = metric.compute()
        if rank == 0:
            Path(out).write_text(json.dumps(values))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metrics_sync_across_ranks_equals_single_process(tmp_path):
    out = tmp_path / "ddp.json"
    mp.spawn(_rank, args=(2, free_port(), str(out)), nprocs=2, join=True)
    ddp = json.loads(out.read_text())
    single = MultiTaskMetrics(TASKS, COHORTS)
    single.update(*fake_predictions())
    expected = single.compute()
    assert ddp.keys() == expected.keys() and "cohort/group=c/like/gauc" in ddp
    for key, value in expected.items():
        assert math.isclose(ddp[key], value, rel_tol=1e-9, abs_tol=1e-12) or (math.isnan(value) and math.isnan(ddp[key])), key
    assert ddp["cohort/new_user=new/n_events"] + ddp["cohort/new_user=regular/n_events"] == 997


MODELS = sorted(p.stem for p in (Path(CONF_DIR) / "model").glob("*.yaml"))
TINY = ["data.source.n_events=3000", "data.source.n_users=60", "data.source.n_items=60", "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false", "data.batch_size=32", "data.prep.stream_len=8",
        "data.prep.stream_overlap=2", "data.prep.history_len=5"]


def train_ddp(model: str, tmp_path: Path, data_dir: Path, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    exe = shutil.which("mose-train")
    cmd = [exe] if exe else [sys.executable, "-m", "mose.train"]
    run = tmp_path / f"run-{model}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(check=False, args=[*cmd, "trainer=ddp_sim", f"model={model}", *TINY, f"paths.data_dir={data_dir}",
                           f"hydra.run.dir={run}", *extra], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=400)
    return proc, run


def check_ddp_run(proc: subprocess.CompletedProcess, run: Path) -> dict:
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("metrics.json")) == ["metrics.json"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert math.isfinite(metrics["test"]["auc_mean"])
    return metrics


def test_ddp_sim_trains_and_rank0_writes(tmp_path):
    """Fresh data dir: one process prepares (under a lock), one metrics.json. Evaluation shards hold every
    event exactly once (no padding duplicates), so on a test split of odd size the 2-process test metrics
    equal a single-process ``mose-eval`` of the same checkpoint exactly."""
    data_dir = tmp_path / "data"
    proc, run = train_ddp("mmoe", tmp_path, data_dir, "data.source.n_events=3001")  # a test split of 303 events
    metrics = check_ddp_run(proc, run)
    logs = {p.name: p.read_text() for p in run.glob("*.log")}  # one per process: train.log, train_ddp_process_1.log
    assert len(logs) == 2 and sum(t.count("loaded 3001 events") for t in logs.values()) == 1, logs
    assert not list(data_dir.glob(".synthetic*.tmp-*"))
    manifest = json.loads((prepared_dir(data_dir, "synthetic") / "manifest.json").read_text())
    test = metrics["test"]
    n_test = manifest["splits"]["test"]
    assert n_test % 2 == 1, f"pick n_events for an odd test split (got {n_test})"  # a padding sampler would repeat one
    assert test["cohort/new_user=new/n_events"] + test["cohort/new_user=regular/n_events"] == n_test
    exe = shutil.which("mose-eval")
    cmd = [exe] if exe else [sys.executable, "-m", "mose.eval"]
    single = subprocess.run(check=False, args=[*cmd, f"ckpt_path={metrics['checkpoint']}", f"hydra.run.dir={tmp_path / 'eval'}"],
                            cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    expected = json.loads((tmp_path / "eval" / "metrics.json").read_text())["test"]
    assert test.keys() == expected.keys()
    exact = [k for k in expected if k.rsplit("/", 1)[-1] in ("auc", "gauc", "auc_mean", "gauc_mean", "n_events")]
    assert "click/auc" in exact and "cohort/new_user=new/like/gauc" in exact
    assert {k: test[k] for k in exact} == {k: expected[k] for k in exact}
    for key, value in expected.items():  # sums (logloss, mse, gate usage) differ by the order of addition only
        assert math.isclose(test[key], value, rel_tol=1e-9, abs_tol=1e-12) or (math.isnan(value) and math.isnan(test[key])), key


def test_ddp_sim_counts_the_whole_train_split(tmp_path):
    """model=popularity (and MMoE's item prior) count the train split before training: under DDP every rank
    counts the whole split (the datamodule's loader, not the rank's shard), so the counts are the same on
    every rank and hold each train event once."""
    data_dir = tmp_path / "data"
    proc, run = train_ddp("popularity", tmp_path, data_dir)
    metrics = check_ddp_run(proc, run)
    manifest = json.loads((prepared_dir(data_dir, "synthetic") / "manifest.json").read_text())
    counts = torch.load(metrics["checkpoint"], map_location="cpu", weights_only=False)["state_dict"]["model.counts"]
    n_train = manifest["splits"]["train"]
    assert counts.sum().item() == n_train


@pytest.mark.slow
@pytest.mark.parametrize("model", [m for m in MODELS if m != "mmoe"])
def test_ddp_sim_trains_every_model(model, tmp_path_factory):
    chained = model in CHAINED_MODELS  # ESMM / AITM model a declared task dependency: the synthetic conversion after click
    data_dir = tmp_path_factory.getbasetemp() / ("ddp-data-convert" if chained else "ddp-data")  # shared by the models
    extra = ["+data.tasks.convert={kind: binary, after: click}"] if chained else []
    proc, run = train_ddp(model, tmp_path_factory.mktemp(model), data_dir, *extra)
    check_ddp_run(proc, run)
