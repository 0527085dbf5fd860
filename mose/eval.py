"""``mose-eval ckpt_path=...``: re-score a checkpoint on its test split and write metrics.json.

The dataset must have the vocabularies and tasks the checkpoint was trained on (its fingerprint,
:mod:`mose.compat`); ``data_dir=X`` prepares the checkpoint's data into ``X`` when ``X`` is new or
empty, reuses it when it holds that very dataset, and never overwrites anything else.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from data_prep.build import check_dataset_dir
from data_prep.paths import CONF_DIR
from mose.compat import check_data_matches
from data_prep.errors import cli_errors
from mose.predict import load_module
from mose.quiet import quiet_third_party
from mose.results import summary, write_metrics
from mose.threads import set_threads
from mose.train import build_datamodule


def evaluate(cfg: DictConfig) -> dict[str, float]:
    set_threads(cfg.get("threads"))
    ckpt = Path(cfg.ckpt_path)
    module = load_module(ckpt)
    data = dict(module.hparams.data)
    if cfg.data_dir:
        data["dir"] = cfg.data_dir
        check_dataset_dir(data, "data_dir")
    datamodule = build_datamodule(data, eval_batch_size=cfg.batch_size)
    datamodule.prepare_data()
    check_data_matches(module.hparams, datamodule.manifest, f"checkpoint {ckpt}", datamodule.root)
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    trainer.test(module, datamodule=datamodule, verbose=False)
    test = module.results["test"]
    if trainer.is_global_zero:
        out = Path(HydraConfig.get().runtime.output_dir) / "metrics.json"
        write_metrics(out, test, model=module.hparams.model["_target_"], data=data["name"], checkpoint=str(ckpt))
        print(summary(test, list(data["tasks"])))
        print(f"metrics: {out}")
    return test


@hydra.main(config_path=CONF_DIR, config_name="eval", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    quiet_third_party()  # no litlogger tip, no Lightning-internal deprecation lines (mose/quiet.py)
    with cli_errors():
        evaluate(cfg)


def main() -> None:
    """``mose-eval``: errors as ``error: ...`` and exit 2 (:func:`data_prep.errors.cli_errors`)."""
    with cli_errors():
        hydra_main()


if __name__ == "__main__":
    main()
