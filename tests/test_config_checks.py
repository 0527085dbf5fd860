"""Config errors are caught before any data is prepared or any step is trained, naming the key."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from data_prep.paths import CONF_DIR
from data_prep.schema import SchemaError
from data_prep.sequences import WINDOWS
from mose.config_checks import ConfigError, check_config
from mose.models.mose import GATES
from mose.models.omoe import MIXTURES
from mose.nn.sequence import CELLS

MODELS = sorted(p.stem for p in (Path(CONF_DIR) / "model").glob("*.yaml"))


def config(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides))


DEPENDENCY = "+data.tasks.convert={kind: binary, after: click}"  # ESMM and AITM need one (test_task_dependencies.py)


@pytest.mark.parametrize("model", MODELS)
def test_every_shipped_model_config_passes(model):
    check_config(config(f"model={model}", *([DEPENDENCY] if model in ("esmm", "aitm") else [])))


@pytest.mark.parametrize("override, key", [
    ("model._target_=mose.models.nope.Nope", "model._target_"),
    ("model._target_=collections.OrderedDict", "model._target_"),
    ("+model.n_expertz=3", "model.n_expertz"),
    ("model.n_experts=0", "model.n_experts"),
    ("model.embed_dim=-4", "model.embed_dim"),
    ("model.expert=[32,0]", "model.expert"),
    ("model.dropout=1.5", "model.dropout"),
    ("model.norm=group", "model.norm"),
    ("data.batch_size=0", "data.batch_size"),
    ("data.layout=per_user", "data.layout"),
    ("data.prep.val_frac=0.95", "data.prep.val_frac"),
    ("data.prep.stream_overlap=40", "data.prep.stream_overlap"),
    ("+data.prep.histroy_len=5", "data.prep.histroy_len"),
    ("data.prep.activity_buckets=[20,5]", "data.prep.activity_buckets"),
    ("optim.lr=-1", "optim.lr"),
    ("trainer.max_epochs=0", "trainer.max_epochs"),
    ("data.tasks={click: {kind: multiclass}}", "kind"),
    ("data.cohorts=user_group", "data.cohorts"),
    ("callbacks.nonfinite.mode=ignore", "callbacks.nonfinite.mode"),
])
def test_bad_config_names_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        check_config(config(override))
    assert key in str(err.value), str(err.value)


@pytest.mark.parametrize("overrides, key, allowed", [
    (("model=mose", "model.gate=global"), "model.gate", GATES),
    (("model=omoe", "model.mixture=soft"), "model.mixture", MIXTURES),
    (("model=stream_mmoe_ff", "model.cell=gru"), "model.cell", CELLS),
    (("data.windows=sliding",), "data.windows", WINDOWS),
])
def test_bad_choice_names_the_key_and_the_allowed_values(overrides, key, allowed):
    with pytest.raises(ConfigError) as err:
        check_config(config(*overrides))
    assert str(err.value).startswith(key) and all(v in str(err.value) for v in allowed), str(err.value)


@pytest.mark.parametrize("tasks, key", [({"click": {"knd": "binary"}}, "data.tasks.click"), ({}, "data.tasks"),
                                        ("click", "data.tasks")])
def test_bad_task_specs(tasks, key):
    with pytest.raises(ConfigError, match=key):
        check_config({"model": {"_target_": "mose.models.mmoe.MMoE"}, "data": {"tasks": tasks}})


def test_top_k_larger_than_n_experts():
    with pytest.raises(ConfigError, match=r"model.top_k=5.*n_experts=4"):
        check_config({"model": {"_target_": "mose.models.mmoe.MMoE", "n_experts": 4, "top_k": 5, "embed_dim": 8},
                      "data": {"tasks": {"click": {}}}})


def test_data_dependent_errors_name_the_config_key(tmp_path, events_parquet):
    """A task or cohort column the events lack stops at validation (before training)."""
    from conftest import compose_with_output
    from test_train_e2e import data_overrides

    from mose.train import train

    base = [o for o in data_overrides(events_parquet, tmp_path / "data", features=False)
            if not o.startswith("data.tasks=")] + ["trainer.max_epochs=1"]
    for extra, key in [("data.tasks={click: {kind: binary}, follow: {kind: binary}}", "data.tasks.follow"),
                       ("data.cohorts=[plan]", "data.cohorts")]:
        extra = [extra] if extra.startswith("data.tasks") else [extra, "data.tasks={click: {kind: binary}}"]
        cfg = compose_with_output("train", base + extra, tmp_path / "run")
        with pytest.raises(SchemaError) as err:
            train(cfg)
        assert key in str(err.value) and "missing column" in str(err.value), str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing was trained
    GlobalHydra.instance().clear()


def test_cli_prints_error_and_exits_2(tmp_path):
    exe = shutil.which("mose-train")
    cmd = [exe] if exe else [sys.executable, "-m", "mose.train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(check=False, args=[*cmd, "model.n_experts=0", f"paths.data_dir={tmp_path / 'data'}",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: model.n_experts=0"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "data").exists()  # stopped before preparing anything


@pytest.mark.parametrize("model", ["mose", "stream_mmoe_ff"])
def test_window_gate_is_refused_over_chunks_and_kept_for_next_step(model):
    """``model.gate=window`` pools a whole window: over chunks a step's gate would see later steps."""
    with pytest.raises(ConfigError) as err:
        check_config(config(f"model={model}", "model.gate=window", "data.windows=chunks"))
    assert "model.gate=window" in str(err.value) and "data.windows=chunks" in str(err.value), str(err.value)
    check_config(config(f"model={model}", "model.gate=window", "data.windows=next_step"))
    check_config(config(f"model={model}", "model.gate=step", "data.windows=chunks"))


def test_mose_train_refuses_the_window_gate_over_chunks(tmp_path):
    """The console script: ``error:`` naming both keys, exit 2, before any data is prepared."""
    from conftest import error_line, run_console

    proc = run_console("mose-train", "mose.train", ["model=mose", "model.gate=window", "data.windows=chunks",
                                                    f"paths.data_dir={tmp_path / 'data'}", "threads=1"], tmp_path)
    line = error_line(proc)
    assert "model.gate=window" in line and "data.windows=chunks" in line, line
    assert not (tmp_path / "data").exists()
