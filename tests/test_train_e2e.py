"""End to end through the real Hydra config: train -> metrics.json, checkpoint, TensorBoard -> eval."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import compose_with_output, prepared_dir
from hydra.core.global_hydra import GlobalHydra

from mose.metrics import METRICS

TASKS = ("{click: {kind: binary}, like: {kind: binary, weight: 0.5}, "
         "watch_time: {kind: regression, transform: log1p}}")


def data_overrides(parquet: Path, data_dir: Path, features: bool = True) -> list[str]:
    """``data=events`` over the conftest parquet, read with ``polars.read_parquet(source=..., columns=None)``.

    (Hydra cannot delete a key whose value is missing (``???``) or null, so ``path`` is set before it
    is deleted and ``columns: null`` stays: ``read_parquet`` accepts it.)
    """
    source = [
        "data=events",
        "data.source._target_=polars.read_parquet",
        f"data.source.path={parquet}",
        "~data.source.path",
        "~data.source.ts_unit",
        f"+data.source.source={parquet}",
        "data.prep.min_count=1",
        f"paths.data_dir={data_dir}",
    ]
    if not features:
        return source + ["data.tasks={click: {kind: binary}, like: {kind: binary}}", "data.batch_size=64"]
    return source + [
        f"data.tasks={TASKS}",
        "data.categorical=[device]",
        "data.numeric=[duration]",
        "data.cohorts=[user_group]",
        "data.prep.history_len=5",
        "data.prep.new_user_max_prior=5",
        "data.batch_size=64",
    ]


@pytest.fixture(scope="module")
def trained(events_parquet, tmp_path_factory):
    from mose.train import train

    tmp = tmp_path_factory.mktemp("e2e")
    run_dir = tmp / "run"
    cfg = compose_with_output("train", data_overrides(events_parquet, tmp / "data") + [
        "model=mmoe", "model.embed_dim=8", "model.expert=[32]", "model.tower=[16]",
        "trainer.max_epochs=3", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=10",
        "optim.lr=0.01", "seed=0",
    ], run_dir)
    test = train(cfg)
    yield run_dir, test, tmp
    GlobalHydra.instance().clear()


def test_train_writes_metrics_checkpoint_and_tensorboard(trained):
    run_dir, test, _ = trained
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"] == pytest.approx(test)
    assert metrics["model"] == "mose.models.mmoe.MMoE" and metrics["data"] == "events"
    t = metrics["test"]
    assert t["click/auc"] > 0.7, t["click/auc"]  # ~0.83 with seeds 0-2
    assert 0.5 < t["click/gauc"] <= 1.0
    assert t["auc_mean"] == pytest.approx((t["click/auc"] + t["like/auc"]) / 2)
    assert t["watch_time/mse"] >= 0 and "watch_time/auc" not in t
    for key in ("cohort/new_user=new/click/auc", "cohort/new_user=regular/click/auc",
                "cohort/user_group=a/click/auc", "cohort/user_group=b/like/gauc",
                "cohort/user_group=a/n_events"):
        assert key in t, key
    assert t["cohort/user_group=a/n_events"] + t["cohort/user_group=b/n_events"] > 0
    for m in METRICS:  # every metric of the table, for the tasks of its kinds only, overall and per cohort
        for task, kind in (("click", "binary"), ("like", "binary"), ("watch_time", "regression")):
            assert (f"{task}/{m.name}" in t) == (kind in m.kinds) == (f"cohort/user_group=a/{task}/{m.name}" in t)
    assert any(k.startswith("gates/click/e") for k in t)  # MMoE gate utilisation

    ckpt = Path(metrics["checkpoint"])
    assert ckpt.is_file() and ckpt.parent == run_dir / "checkpoints"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    # the checkpoint holds plain data only: it loads with weights_only=True
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["hyper_parameters"]["data"]["name"] == "events"


def test_eval_reproduces_test_metrics(trained):
    from mose.eval import evaluate

    run_dir, test, tmp = trained
    ckpt = json.loads((run_dir / "metrics.json").read_text())["checkpoint"]
    eval_dir = tmp / "eval"
    cfg = compose_with_output("eval", [f"ckpt_path={ckpt}", "trainer.enable_progress_bar=false"], eval_dir)
    mtime = os.stat(prepared_dir(tmp / "data", "events") / "manifest.json").st_mtime_ns
    again = evaluate(cfg)
    assert again["click/auc"] == pytest.approx(test["click/auc"], abs=1e-6)
    assert again["like/gauc"] == pytest.approx(test["like/gauc"], abs=1e-6)
    assert again["watch_time/mse"] == pytest.approx(test["watch_time/mse"], rel=1e-5)
    assert json.loads((eval_dir / "metrics.json").read_text())["test"]["click/auc"] == again["click/auc"]
    assert os.stat(prepared_dir(tmp / "data", "events") / "manifest.json").st_mtime_ns == mtime  # dataset reused


def test_eval_rejects_missing_checkpoint(tmp_path):
    from data_prep.errors import CheckpointError
    from mose.eval import evaluate

    cfg = compose_with_output("eval", [f"ckpt_path={tmp_path / 'nope.ckpt'}"], tmp_path / "eval")
    with pytest.raises(CheckpointError, match="not a file"):
        evaluate(cfg)


def test_multirun_subprocess(events_parquet, tmp_path):
    exe = shutil.which("mose-train")
    cmd = [exe] if exe else [sys.executable, "-m", "mose.train"]
    sweep = tmp_path / "sweep"
    # few overrides: the sweep subdir name joins them all (see the report on override_dirname length)
    overrides = data_overrides(events_parquet, tmp_path / "data", features=False) + [
        "model=single_task,shared_bottom", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
        "model.embed_dim=4", f"hydra.sweep.dir={sweep}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run([*cmd, "-m", *overrides], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = sorted(sweep.rglob("metrics.json"))
    assert len(metrics) == 2, [str(p) for p in metrics]
    models = sorted(json.loads(p.read_text())["model"] for p in metrics)
    assert models == ["mose.models.shared_bottom.SharedBottom", "mose.models.single_task.SingleTask"]
    for p in metrics:
        test = json.loads(p.read_text())["test"]
        assert test["click/auc"] > 0.6 and "like/gauc" in test, (p, test["click/auc"])
        assert list((p.parent / "checkpoints").glob("*.ckpt"))
    assert (prepared_dir(tmp_path / "data", "events") / "manifest.json").is_file()  # prepared once, outside the repo
    assert (sweep / "multirun.yaml").is_file()
    # TensorBoard runs named <model config>/seed<k> under the sweep's tensorboard/ (not 0/tensorboard)
    runs = sorted({str(p.parent.relative_to(sweep / "tensorboard")) for p in sweep.rglob("events.out.tfevents.*")})
    assert runs == ["shared_bottom/seed0", "single_task/seed0"], runs
