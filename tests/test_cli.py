"""``mose-cli`` (LightningCLI) and ``mose-train`` (Hydra) give the same run from the same settings."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

TINY = ["data.source.n_events=5000", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1", "model.embed_dim=8", "seed=3"]


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


def test_hydra_and_cli_give_the_same_run(tmp_path):
    from mose.cli import cli, cli_config, hydra_config
    from mose.train import run

    overrides = [*TINY, f"paths.data_dir={tmp_path / 'data'}"]
    cfg = hydra_config(overrides)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path / "hydra")
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    (tmp_path / "hydra").mkdir()
    test_hydra, val_hydra = run(cfg)

    defaults = cli_config(hydra_config(overrides), tmp_path / "cli")
    assert defaults["seed_everything"] == 3 and defaults["trainer"]["max_epochs"] == 1
    fit = cli(["fit"], defaults=defaults)
    assert float(fit.trainer.checkpoint_callback.best_model_score) == pytest.approx(val_hydra, abs=1e-6)
    best = fit.trainer.checkpoint_callback.best_model_path
    assert Path(best).parent == tmp_path / "cli" / "checkpoints"
    written = json.loads((tmp_path / "cli" / "metrics.json").read_text())  # fit tests the best checkpoint
    assert written["checkpoint"] == best and written["seed"] == 3
    assert written["test"]["click/auc"] == pytest.approx(test_hydra["click/auc"], abs=1e-6)

    # the config LightningCLI saved re-runs: test the best checkpoint from it, as mose-train does
    saved = tmp_path / "run.yaml"  # a copy: the test run below writes its own config.yaml into the log dir
    saved.write_text((tmp_path / "cli" / "tensorboard" / "config.yaml").read_text())
    assert yaml.safe_load(saved.read_text())["trainer"]["max_epochs"] == 1
    tested = cli(["test", "--config", str(saved), "--ckpt_path", best], defaults=defaults)
    test_cli = tested.model.results["test"]
    for key in ("click/auc", "like/gauc", "watch_time/mse", "auc_mean", "cohort/new_user=new/click/auc"):
        assert test_cli[key] == pytest.approx(test_hydra[key], abs=1e-6), key

    predicted = cli(["predict", "--config", str(saved), "--ckpt_path", best], defaults=defaults)
    scores = pl.read_parquet(Path(predicted.trainer.log_dir) / "predictions-rank0.parquet")
    assert scores.height == len(predicted.datamodule.splits["test"]) and scores["p_click"].is_between(0, 1).all()


def test_cli_options_and_from_hydra(tmp_path, capsys):
    from mose.cli import cli, cli_config, hydra_config, main
    from data_prep.errors import ConfigError

    defaults = cli_config(hydra_config([*TINY, f"paths.data_dir={tmp_path / 'data'}"]), tmp_path / "cli")
    parsed = cli(["--trainer.max_epochs=7", "--model.lr=0.02", "--data.batch_size=256"], run=False,
                 defaults=defaults)
    assert parsed.trainer.max_epochs == 7 and parsed.model.hparams.lr == 0.02
    assert parsed.datamodule.batch_size == 256
    assert parsed.model.hparams.input_spec["n_items"] > 2  # linked from the prepared dataset
    assert [type(c).__name__ for c in parsed.trainer.callbacks if "Checkpoint" in type(c).__name__]

    typed = cli(["--model.model.n_experts=8"], run=False, defaults=defaults)
    assert typed.model.hparams.model["n_experts"] == 8 != defaults["model"]["model"]["n_experts"]
    assert sum(p.numel() for p in typed.model.parameters()) > sum(p.numel() for p in parsed.model.parameters())
    assert cli(["--model.model.expert=[16,8]"], run=False, defaults=defaults).model.hparams.model["expert"] == [16, 8]
    with pytest.raises(ConfigError, match=r"--model.model.n_experts=many: MMoE takes int"):
        cli(["--model.model.n_experts=many"], run=False, defaults=defaults)
    with pytest.raises(ConfigError, match=r"model.n_expert: not a parameter"):
        cli(["--model.model.n_expert=3"], run=False, defaults=defaults)

    with pytest.raises(SystemExit):
        main(["fit", "--print_config"])
    printed = capsys.readouterr().out
    assert "default_root_dir: outputs/cli/<now>" in printed and "threads: null" in printed
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "from-hydra" in capsys.readouterr().out

    main(["from-hydra", "model=shared_bottom", "trainer.max_epochs=4"])
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["model"]["_target_"] == "mose.models.shared_bottom.SharedBottom"
    assert config["trainer"]["max_epochs"] == 4
    assert config["trainer"]["logger"]["class_path"] == "mose.tb_logger.TensorBoardLogger"


def test_help_names_the_program_and_only_its_groups(tmp_path):
    """mose-eval --help lists the trainer group only (not data, model ... of the shared config folder);
    mose-prep and mose-predict name themselves."""
    from data_prep.paths import CONF_DIR

    exe = shutil.which("mose-eval")
    cmd = [exe] if exe else [sys.executable, "-m", "mose.eval"]
    out = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=120, cwd=tmp_path, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}).stdout
    assert out.startswith("mose-eval is powered by Hydra")
    trainers = ", ".join(sorted(p.stem for p in (Path(CONF_DIR) / "trainer").glob("*.yaml")))
    assert f"trainer: {trainers} (conf/trainer)" in out  # the listed options are the real ones
    assert "model:" not in out.split("== Config ==")[0] and "hparams_search" not in out
    for name, app in (("prep", "mose-prep"), ("predict", "mose-predict"), ("train", "mose-train")):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(name, return_hydra_config=True, overrides=["ckpt_path=x"] if name == "predict" else [])
        assert cfg.hydra.help.app_name == app
        if name == "predict":  # no config group at all: none listed
            assert "$APP_CONFIG_GROUPS" not in cfg.hydra.help.template
