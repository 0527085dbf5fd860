"""The hparams_search (Optuna) and hydra/launcher=slurm configs compose with the real config; the sweep objective."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import compose_train


def test_optuna_search_composes():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cfg = compose_train(["+hparams_search=mmoe_optuna"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.direction == "maximize" and sweeper.n_trials == 10
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == 0
    assert set(sweeper.params) >= {"optim.lr", "model.n_experts", "model.embed_dim"}
    # every searched key exists in the composed config (a typo would only fail at the first trial)
    for key in sweeper.params:
        assert OmegaConf.select(cfg, key, throw_on_missing=False) is not None, key
    assert cfg.model._target_ == "mose.models.mmoe.MMoE" and cfg.trainer.max_epochs == 3
    assert cfg.callbacks.model_checkpoint.monitor == "val/auc_mean"  # the value the sweeper maximises


def test_slurm_launcher_sizes_the_job_from_the_trainer():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose_train(["hydra/launcher=slurm", "trainer=slurm_ddp", "trainer.num_nodes=2", "trainer.devices=8",
                         "hydra.launcher.partition=gpu"])
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert launcher["nodes"] == 2 and launcher["tasks_per_node"] == 8 and launcher["gpus_per_node"] == 8
    assert launcher["partition"] == "gpu"
    trainer = cfg.trainer
    assert trainer.strategy == "ddp" and trainer.accelerator == "gpu" and trainer.num_nodes == 2


def test_slurm_launcher_with_search():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cfg = compose_train(["+hparams_search=mmoe_optuna", "hydra/launcher=slurm", "trainer=slurm_ddp",
                         "hydra.sweeper.n_jobs=4"])
    assert cfg.hydra.sweeper.n_jobs == 4 and cfg.hydra.launcher.tasks_per_node == cfg.trainer.devices == 4


@pytest.mark.slow
def test_two_trial_search_maximises_best_val_auc(tmp_path):
    """A real 2-trial Optuna search (~25 s): the value each trial returns is its best val/auc_mean."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    exe = shutil.which("mose-train")
    cmd = [exe] if exe else [sys.executable, "-m", "mose.train"]
    sweep = tmp_path / "sweep"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run([*cmd, "-m", "+hparams_search=mmoe_optuna", "hydra.sweeper.n_trials=2",
                           "trainer.max_epochs=1", "data.source.n_events=5000", f"paths.data_dir={tmp_path / 'data'}",
                           f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) >= {"optim.lr", "model.n_experts"}
    import torch

    scores = []
    for ckpt_dir in sorted(Path(sweep).glob("*/checkpoints")):
        ckpts = [p for p in ckpt_dir.glob("*.ckpt") if p.name != "last.ckpt"]
        state = torch.load(ckpts[0], map_location="cpu", weights_only=True)
        scores += [float(v["best_model_score"]) for k, v in state["callbacks"].items() if "ModelCheckpoint" in k]
    assert len(scores) == 2 and best["best_value"] == pytest.approx(max(scores), abs=1e-6)


def test_slurm_launcher_submits_one_task_per_gpu(tmp_path):
    """The real launcher against stand-in sbatch/srun: the batch script asks for nodes x tasks-per-node = devices."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    import time

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/bash\nfor a in "$@"; do f="$a"; done\ncp "$f" {tmp_path}/submitted.sh\n'
                                    'echo "Submitted batch job 4242"\n')
    for name, body in (("srun", "echo srun"), ("sacct", "exit 0"), ("scancel", "exit 0")):
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    exe = shutil.which("mose-train")
    cmd = [exe] if exe else [sys.executable, "-m", "mose.train"]
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.Popen([*cmd, "-m", "hydra/launcher=slurm", "trainer=slurm_ddp", "trainer.num_nodes=2",
                             "trainer.devices=4", "hydra.launcher.partition=gpu", f"hydra.sweep.dir={tmp_path / 's'}"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not (tmp_path / "submitted.sh").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
    script = (tmp_path / "submitted.sh").read_text()
    for line in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=gpu"):
        assert f"#SBATCH {line}" in script, line
    assert "srun" in script
