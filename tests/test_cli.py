"""``mose-cli`` (LightningCLI) and ``mose-train`` (Hydra) give the same run from the same settings."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import yaml
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

    defaults = cli_config(hydra_config([*TINY, f"paths.data_dir={tmp_path / 'data'}"]), tmp_path / "cli")
    parsed = cli(["--trainer.max_epochs=7", "--model.lr=0.02", "--data.batch_size=256"], run=False,
                 defaults=defaults)
    assert parsed.trainer.max_epochs == 7 and parsed.model.hparams.lr == 0.02
    assert parsed.datamodule.batch_size == 256
    assert parsed.model.hparams.input_spec["n_items"] > 2  # linked from the prepared dataset
    assert [type(c).__name__ for c in parsed.trainer.callbacks if "Checkpoint" in type(c).__name__]

    main(["from-hydra", "model=shared_bottom", "trainer.max_epochs=4"])
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["model"]["_target_"] == "mose.models.shared_bottom.SharedBottom"
    assert config["trainer"]["max_epochs"] == 4
    assert config["trainer"]["logger"]["class_path"] == "pytorch_lightning.loggers.TensorBoardLogger"
