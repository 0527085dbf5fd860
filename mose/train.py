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

from data_prep.build import event_spec
from mose.data.datamodule import EventDataModule
from mose.module import MultiTaskModule
from mose.nn.embeddings import InputSpec
from mose.paths import CONF_DIR
from mose.results import summary, write_metrics

log = logging.getLogger(__name__)


def build_datamodule(data: dict, eval_batch_size: int | None = None) -> EventDataModule:
    return EventDataModule(data, batch_size=data.get("batch_size", 1024), num_workers=data.get("num_workers", 0),
                           layout=data.get("layout", "per_event"), windows=data.get("windows", "chunks"),
                           eval_batch_size=eval_batch_size or data.get("eval_batch_size", 8192))


def train(cfg: DictConfig) -> dict[str, float]:
    """One run: returns the test metrics (also written to ``<run dir>/metrics.json``)."""
    pl.seed_everything(cfg.seed, workers=True)
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
    )
    logger = instantiate(cfg.logger)
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=logger, callbacks=callbacks, default_root_dir=str(out_dir))
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.resume)
    trainer.test(module, datamodule=datamodule, ckpt_path="best", verbose=False)
    test = module.results["test"]
    if trainer.is_global_zero:
        path = write_metrics(out_dir / "metrics.json", test, model=cfg.model._target_, data=data["name"],
                             seed=cfg.seed, checkpoint=trainer.checkpoint_callback.best_model_path,
                             epochs=trainer.current_epoch)
        print(summary(test, list(data["tasks"])))
        print(f"metrics: {path}\nTensorBoard logs: {logger.log_dir}  (tensorboard --logdir outputs)")
    return test


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    return train(cfg)["auc_mean"]


if __name__ == "__main__":
    main()
