"""One task (issue 13.1): every model in conf/model/ trains, tests, predicts and exports with a single binary or
a single regression task; the README's one-task example runs through the real console scripts."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from conftest import CHAINED_MODELS, compose_with_output, run_console
from hydra.core.global_hydra import GlobalHydra

from data_prep.paths import CONF_DIR

MODELS = sorted(p.stem for p in (Path(CONF_DIR) / "model").glob("*.yaml"))
# ~ first: a dict override merges into the synthetic data's three tasks
ONE_TASK = {"binary": ("click", ["~data.tasks", "+data.tasks={click: {kind: binary}}"]),
            "regression": ("watch_time", ["~data.tasks", "+data.tasks={watch_time: {kind: regression, transform: log1p}}"])}
TINY = ["data.source.n_events=1500", "data.source.n_users=40", "data.source.n_items=40", "data.batch_size=32",
        "data.prep.history_len=4", "data.prep.stream_len=8", "data.prep.stream_overlap=2", "data.prep.min_count=1",
        "trainer.max_epochs=1", "+trainer.limit_train_batches=3", "+trainer.limit_val_batches=2",
        "+trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1"]


@pytest.fixture()
def one_thread():
    """``threads=1`` for an in-process run (2 threads on 2 busy cores are slower), restored after it."""
    threads = torch.get_num_threads()
    yield "threads=1"
    torch.set_num_threads(threads)


@pytest.mark.parametrize("kind", list(ONE_TASK))
@pytest.mark.parametrize("model", MODELS)
def test_every_model_with_one_task(model, kind, one_thread, tmp_path, tmp_path_factory):
    """Train (gate diagnostics and TensorBoard heatmaps included), test the best checkpoint, score the
    test split as mose-predict does, export TorchScript and check it scores like the checkpoint."""
    from mose.export import example_batch, export, model_fields
    from mose.module import stacked_logits, to_predictions
    from mose.predict import load_module, score_split
    from mose.train import train

    task, tasks = ONE_TASK[kind]
    data_dir = tmp_path_factory.getbasetemp() / f"one-task-{kind}"  # prepared by the first model, then reused
    cfg = compose_with_output("train", [f"model={model}", *tasks, *TINY, one_thread,
                                           f"paths.data_dir={data_dir}"], tmp_path / "run")
    if model in CHAINED_MODELS:  # a dependency needs two tasks: refused with the form to declare one, nothing written
        from data_prep.errors import ConfigError

        with pytest.raises(ConfigError, match=r"needs a task dependency: declare data\.tasks\.<task>\.after"):
            train(cfg)
        GlobalHydra.instance().clear()
        assert not list((tmp_path / "run").rglob("*.ckpt"))
        return
    test = train(cfg)
    GlobalHydra.instance().clear()
    assert math.isfinite(test[f"{task}/auc" if kind == "binary" else f"{task}/mse"]), test
    assert ("auc_mean" in test) == (kind == "binary")
    usage = [v for k, v in test.items() if re.fullmatch(f"gates/{task}/e[0-9]+", k)]
    if usage:  # a gated model: its one gate's expert utilization sums to 1
        assert sum(usage) == pytest.approx(1.0, abs=1e-4) and math.isfinite(test[f"gates/{task}/entropy"])

    ckpt = json.loads((tmp_path / "run" / "metrics.json").read_text())["checkpoint"]
    assert Path(ckpt).is_file() and ("loss" in Path(ckpt).name) == (kind == "regression")  # monitored val/loss
    module = load_module(ckpt)
    info, preds = score_split(module, "test", batch_size=256)
    assert preds.shape == (info.height, 1) and np.isfinite(preds).all()

    path = export(ckpt, tmp_path / "model.pt", batch_size=16)
    batch = example_batch(module, 24, "val")
    torch.manual_seed(0)  # model.code=shuffled permutes codes at random: both calls draw the same permutation
    got = torch.jit.load(str(path))(*[batch[f] for f in model_fields(batch)])
    torch.manual_seed(0)
    with torch.no_grad():
        want = to_predictions(stacked_logits(module.model(batch), module.tasks, module.binary).float(),
                              module.binary, module.mean, module.std)
    assert got.shape[-1] == 1
    torch.testing.assert_close(got, want)


def test_readme_one_task_example_through_every_console_script(one_task_run):
    """mose-train (the fixture) -> mose-eval -> mose-predict on raw candidates -> mose-export."""
    work, _ = one_task_run
    metrics = json.loads((work / "run" / "metrics.json").read_text())
    assert metrics["test"]["click/auc"] > 0.6 and "gates/click/e0" in metrics["test"], metrics["test"]
    ckpt = metrics["checkpoint"]

    proc = run_console("mose-eval", "mose.eval", [f"ckpt_path={ckpt}", "trainer.enable_progress_bar=false",
                                                  f"hydra.run.dir={work / 'eval'}"], work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((work / "eval" / "metrics.json").read_text())["test"]
    assert again["click/auc"] == pytest.approx(metrics["test"]["click/auc"], abs=1e-6)

    cands = pl.read_parquet(work / "my_log.parquet").drop("clicked").head(50)
    cands.write_parquet(work / "cands.parquet")
    proc = run_console("mose-predict", "mose.predict", [
        f"ckpt_path={ckpt}", "candidates=cands.parquet", "columns={user_id: uid, item_id: iid, ts: time}",
        "ts_unit=s", f"hydra.run.dir={work / 'predict'}"], work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = pl.read_parquet(work / "predict" / "predictions.parquet")
    assert out.height == 50 and out["uid"].to_list() == cands["uid"].to_list()
    assert out["p_click"].is_between(0, 1).all() and np.allclose(out["score"], out["p_click"], rtol=1e-6)

    proc = run_console("mose-export", "mose.export", [ckpt, "--out", str(work / "model.pt")], work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((work / "model.pt.json").read_text())
    assert meta["tasks"] == ["click"] and meta["kinds"] == {"click": "binary"}
    inputs = [torch.zeros([2, *i["shape"][1:]], dtype=getattr(torch, i["dtype"])) for i in meta["inputs"]]
    scores = torch.jit.load(str(work / "model.pt"))(*inputs)
    assert scores.shape == (2, 1) and ((scores >= 0) & (scores <= 1)).all()
