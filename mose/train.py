"""``mose-train``: prepare data if needed, train a model, test its best checkpoint, write metrics.json."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from data_prep.build import event_spec
from data_prep.paths import CONF_DIR
from mose.callbacks import find_resume_checkpoint
from mose.compat import check_resume
from mose.config_checks import check_config, monitor_without_binary_tasks
from mose.data.datamodule import EventDataModule, loader_settings
from data_prep.errors import cli_errors
from mose.metrics import monitor_mode
from mose.module import MultiTaskModule
from mose.nn.embeddings import InputSpec
from mose.optim import recipe
from mose.quiet import quiet_third_party
from mose.results import PER_USER, summary, write_metrics, write_per_user
from mose.tb_callbacks import tensorboard_overrides
from mose.threads import set_threads

log = logging.getLogger(__name__)


def build_datamodule(data: dict, eval_batch_size: int | None = None) -> EventDataModule:
    """The data module of a data config (:func:`loader_settings`); ``eval_batch_size`` overrides the config's."""
    return EventDataModule(data, **loader_settings(data, eval_batch_size=eval_batch_size))


def callback_configs(callbacks: dict) -> list[dict]:
    """The callback configs of ``cfg.callbacks``, with ``callbacks.monitor`` (one validation key) set as the
    ``monitor`` and ``mode`` of checkpointing and early stopping alike, and in the checkpoint file name."""
    callbacks = dict(callbacks)
    monitor = callbacks.pop("monitor", None)
    if monitor is not None:
        mode = monitor_mode(monitor)
        for name in ("model_checkpoint", "early_stopping"):
            if callbacks.get(name):
                callbacks[name] = {**callbacks[name], "monitor": monitor, "mode": mode}
        if callbacks.get("model_checkpoint"):
            short = monitor.split("/")[-1].removesuffix("_mean")
            callbacks["model_checkpoint"]["filename"] = f"epoch{{epoch:02d}}-{short}{{{monitor}:.4f}}"
    return [c for c in callbacks.values() if c]


def train(cfg: DictConfig) -> dict[str, float]:
    """One run: returns the test metrics (also written to ``<run dir>/metrics.json``)."""
    return run(cfg)[0]


def run(cfg: DictConfig) -> tuple[dict[str, float], float]:
    """One run: the test metrics and the best monitored value (``callbacks.monitor``, default ``val/auc_mean``:
    the score of the tested checkpoint)."""
    monitor_without_binary_tasks(cfg)  # regression tasks only: val/loss stands in for val/auc_mean
    check_config(cfg)  # config errors stop here, naming the key (mose/config_checks.py)
    pl.seed_everything(cfg.seed, workers=True)
    set_threads(cfg.get("threads"))  # null: from the free cores (mose/threads.py)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    datamodule = build_datamodule(data)
    datamodule.prepare_data()
    manifest = datamodule.manifest
    module = MultiTaskModule(
        model=OmegaConf.to_container(cfg.model, resolve=True),
        input_spec=asdict(InputSpec.from_manifest(manifest)),
        tasks=event_spec(data).to_dict()["tasks"], task_stats=manifest["task_stats"], cohorts=manifest["cohorts"],
        lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, data=data,
        weighting=OmegaConf.to_container(cfg.weighting, resolve=True) if cfg.get("weighting") else None,
        fingerprint=manifest.get("fingerprint"),
        id_dropout=OmegaConf.to_container(cfg.id_dropout, resolve=True) if cfg.get("id_dropout") else None,
        **recipe(cfg.optim),
    )
    overrides = tensorboard_overrides(cfg)  # multirun: <sweep>/tensorboard/<model>/seed<k>
    logger = instantiate(cfg.logger, **overrides)
    callbacks = [instantiate(c) for c in callback_configs(OmegaConf.to_container(cfg.callbacks, resolve=True))]
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=logger, callbacks=callbacks, default_root_dir=str(out_dir))
    ckpt_path = find_resume_checkpoint(cfg.resume, out_dir)
    check_resume(ckpt_path, module)  # another model, vocabulary or task set: error naming what differs
    if ckpt_path:
        log.info("resume=%s: continuing from %s; this run writes to %s", cfg.resume, ckpt_path, out_dir)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    best_ckpt = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)  # model_checkpoint
    best_path = best_ckpt.best_model_path if best_ckpt else ""
    trainer.test(module, datamodule=datamodule, ckpt_path=best_path or None, verbose=False, weights_only=True)
    test = module.results["test"]
    best = best_ckpt.best_model_score if best_ckpt else None  # the monitored value of the tested checkpoint
    monitor = (cfg.callbacks.get("monitor") or "val/auc_mean").removeprefix("val/")
    best_val = float(best) if best is not None else float(module.results.get("val", {}).get(monitor, "nan"))
    if trainer.is_global_zero:
        choice = (HydraConfig.get().runtime.get("choices") or {}).get("model")  # model=<name>
        path = write_metrics(out_dir / "metrics.json", test, model=cfg.model._target_, model_name=choice,
                             data=data["name"], seed=cfg.seed, checkpoint=best_path,
                             epochs=trainer.current_epoch, global_step=trainer.global_step)
        write_per_user(out_dir / PER_USER, module.per_user.get("test", {}))
        print(summary(test, list(data["tasks"])))
        print(f"metrics: {path}\nTensorBoard logs: {logger.log_dir}  "  # a sweep's runs share <sweep>/tensorboard
              f"(tensorboard --logdir {logger.save_dir if overrides else logger.log_dir})")
    return test, best_val


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float:
    """Returns the best ``val/auc_mean``: what a sweeper (``hparams_search=...``) maximises, never a test metric."""
    quiet_third_party()  # no litlogger tip, no Lightning-internal deprecation lines (mose/quiet.py)
    with cli_errors():  # in the job too: Hydra would add its own 'Error executing job' line
        return run(cfg)[1]


def main() -> None:
    """``mose-train``: error: ... and exit 2 (config, data, checkpoint, Hydra, disk), 3 (NaN loss), 143 (SIGTERM)."""
    with cli_errors():
        hydra_main()


if __name__ == "__main__":
    main()
