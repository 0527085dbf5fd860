"""``mose-cli``: the Lightning trainer CLI (LightningCLI) over the same MultiTaskModule and EventDataModule.

    mose-cli fit                                   # the defaults of `mose-train` (conf/train.yaml)
    mose-cli fit --trainer.max_epochs=3 --model.lr=0.01 --seed_everything=1   # then tests: metrics.json
    mose-cli fit --model.model.n_experts=8 --threads 2   # model args typed from the model's constructor
    mose-cli fit --print_config > run.yaml         # a config file to edit, save and re-run:
    mose-cli fit --config run.yaml
    mose-cli test --config run.yaml --ckpt_path outputs/cli/<date>/<time>/checkpoints/last.ckpt
    mose-cli predict --config run.yaml --ckpt_path ...   # <log dir>/predictions-rank0.parquet (test split)
    mose-cli from-hydra model=mose data.source.n_events=5000 > run.yaml   # any Hydra composition, as a CLI config

Hydra stays the main interface (composition, sweeps); this front end drives the same classes with
plain-typed constructors. The defaults are the composed Hydra ``train`` config, converted by
:func:`cli_config` (``_target_`` -> ``class_path``), so the same settings give the same run (same
seed, same metrics) through either. The data config ``data.data`` is the Hydra ``data`` node; the
model's ``input_spec``, ``tasks``, ``task_stats``, ``cohorts``, ``data`` and ``fingerprint`` come from
the prepared dataset (linked, not set by hand).
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import numpy as np
import yaml
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from data_prep.build import event_spec
from data_prep.paths import CONF_DIR
from mose.atomic import write_file
from mose.compat import check_resume
from mose.config_checks import check_model, monitor_without_binary_tasks
from mose.data.datamodule import EventDataModule, loader_settings
from data_prep.errors import ConfigError, cli_errors
from mose.module import MultiTaskModule
from mose.nn.embeddings import InputSpec
from mose.quiet import quiet_third_party
from mose.results import summary, write_metrics
from mose.threads import set_threads
from mose.train import callback_configs


class ParquetPredictionWriter(BasePredictionWriter):
    """Writes ``predictions.parquet`` (``p_<task>`` / ``pred_<task>`` per scored event) into the log dir."""

    def __init__(self) -> None:
        super().__init__(write_interval="epoch")

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        from mose.predict import output_frame

        preds = np.concatenate([p.cpu().numpy() for p in predictions])  # MultiTaskModule.predict_step's
        frame = output_frame(pl_module, preds, None)
        out = Path(trainer.log_dir or trainer.default_root_dir) / f"predictions-rank{trainer.global_rank}.parquet"
        write_file(out, "predictions", frame.write_parquet)
        print(f"predictions: {out} ({frame.height:,} events)")


@functools.cache
def _prepared(dm: EventDataModule) -> dict:
    """The data module's manifest, its dataset prepared first: once per module for the three links below."""
    dm.prepare_data()
    return dm.manifest


def _input_spec(dm: EventDataModule) -> dict:
    return asdict(InputSpec.from_manifest(_prepared(dm)))


def _task_stats(dm: EventDataModule) -> dict:
    return _prepared(dm)["task_stats"]


def _cohorts(dm: EventDataModule) -> dict:
    return _prepared(dm)["cohorts"]


def _fingerprint(dm: EventDataModule) -> dict | None:
    return _prepared(dm).get("fingerprint")


def _tasks(data: dict) -> dict:
    return event_spec(data).to_dict()["tasks"]


NOW = "<now>"  # in a default path: the run's start time, filled in when the run starts (not when printed)


def fill_now(node, stamp: str):
    """``node`` (a jsonargparse Namespace, dict, list or str) with every :data:`NOW` replaced by ``stamp``."""
    if isinstance(node, str):
        return node.replace(NOW, stamp)
    if isinstance(node, list):
        return [fill_now(v, stamp) for v in node]
    if isinstance(node, dict):
        return {k: fill_now(v, stamp) for k, v in node.items()}
    if hasattr(node, "__dict__") and not isinstance(node, type):  # Namespace
        for k, v in vars(node).items():
            setattr(node, k, fill_now(v, stamp))
    return node


def typed_model(model: dict) -> dict:
    """The model config with each command-line string converted to its constructor argument's type
    (``--model.model.n_experts=8`` -> ``8``, ``--model.model.expert=[32,16]`` -> a list), then checked as
    ``mose-train`` checks it (:func:`mose.config_checks.check_model`: unknown keys, sizes)."""
    model = dict(model)
    try:
        cls = get_class(str(model.get("_target_")))
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - check_model names what is wrong with _target_
        hints = {}
    for key, value in model.items():
        hint = hints.get(key)
        if isinstance(value, str) and hint is not None and not _takes_str(hint):
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                parsed = value
            if not _fits(parsed, hint):
                raise ConfigError(f"--model.model.{key}={value}: {cls.__name__} takes {_name(hint)}")
            model[key] = parsed
    check_model(model)
    return model


def _takes_str(hint) -> bool:
    return hint is str or hint is typing.Any or str in typing.get_args(hint)


def _fits(value, hint) -> bool:
    """Whether a parsed command-line value fits a constructor annotation (unions, None, sequences, numbers)."""
    origin = typing.get_origin(hint) or hint
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin in (list, tuple, Sequence):
        return isinstance(value, (list, tuple))
    if origin is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin) if inspect.isclass(origin) else True


def _name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


class MoseCLI(LightningCLI):
    """LightningCLI whose model arguments that depend on the prepared data are linked from the DataModule."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--threads", type=int | None, default=None,
                            help="torch CPU threads; null: the free cores, 1-4 (mose/threads.py), as mose-train")
        parser.add_argument("--test_after_fit", type=bool, default=True,
                            help="fit: then test the best checkpoint and write <default_root_dir>/metrics.json, "
                                 "as mose-train")
        parser.link_arguments("data.data", "model.data")
        parser.link_arguments("data.data", "model.tasks", compute_fn=_tasks)
        parser.link_arguments("data", "model.input_spec", compute_fn=_input_spec, apply_on="instantiate")
        parser.link_arguments("data", "model.task_stats", compute_fn=_task_stats, apply_on="instantiate")
        parser.link_arguments("data", "model.cohorts", compute_fn=_cohorts, apply_on="instantiate")
        parser.link_arguments("data", "model.fingerprint", compute_fn=_fingerprint, apply_on="instantiate")

    def _check_checkpoint(self) -> None:
        """``--ckpt_path``: the checkpoint must fit this model and its data (:func:`mose.compat.check_resume`:
        model config, input sizes, tasks, vocabulary fingerprint, parameter shapes) before Lightning loads it."""
        check_resume(self.config[self.subcommand].get("ckpt_path"), self.model, key="--ckpt_path")

    before_fit = before_validate = before_test = before_predict = _check_checkpoint

    def after_fit(self) -> None:
        """``--test_after_fit`` (default): test the best checkpoint (the last weights without one) and write
        ``metrics.json`` into ``default_root_dir``, with the summary table ``mose-train`` prints."""
        if not self.config[self.subcommand].get("test_after_fit", True):
            return
        trainer, module = self.trainer, self.model
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(module, datamodule=self.datamodule, ckpt_path="best" if best else None, verbose=False,
                     weights_only=True)
        if trainer.is_global_zero:
            data = module.hparams.data
            path = write_metrics(Path(trainer.default_root_dir) / "metrics.json", module.results["test"],
                                 model=module.hparams.model["_target_"], data=data["name"],
                                 seed=self.config[self.subcommand].get("seed_everything"), checkpoint=best,
                                 epochs=trainer.current_epoch, global_step=trainer.global_step)
            print(summary(module.results["test"], list(data["tasks"])))
            print(f"metrics: {path}")

    def before_instantiate_classes(self) -> None:
        """``--threads`` (null: chosen from the free cores, :mod:`mose.threads`) is set first.
        ``--trainer.enable_progress_bar=false`` also drops the default progress bar callback (Lightning
        refuses both)."""
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        set_threads(cfg.get("threads"))
        fill_now(cfg, f"{datetime.now():%Y-%m-%d}/{datetime.now():%H-%M-%S}-{os.getpid()}")
        cfg.model.model = typed_model(cfg.model.model)
        callbacks = cfg.trainer.get("callbacks") or []
        if cfg.trainer.get("enable_progress_bar") is False and callbacks:
            cfg.trainer.callbacks = [c for c in callbacks if not str(getattr(c, "class_path", "")).endswith("ProgressBar")]


def _to_class_path(node):
    """Hydra ``{_target_: X, **kw}`` -> LightningCLI ``{class_path: X, init_args: kw}`` (recursively)."""
    if isinstance(node, dict):
        if "_target_" in node:
            return {"class_path": node["_target_"],
                    "init_args": {k: _to_class_path(v) for k, v in node.items() if k != "_target_"}}
        return {k: _to_class_path(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_to_class_path(v) for v in node]
    return node


def _callback_class(cb: dict) -> dict | None:
    """A callback config whose ``_target_`` is a class (LightningCLI needs one): the progress bar factory
    ``mose.progress.progress_bar`` becomes ``TaskProgressBar``, or nothing when disabled."""
    if cb.get("_target_") == "mose.progress.progress_bar":
        return {"_target_": "mose.progress.TaskProgressBar"} if cb.get("enabled", True) else None
    return cb


def cli_config(cfg: DictConfig, output_dir: str | Path) -> dict:
    """A LightningCLI config (``fit`` level: seed_everything, trainer, model, data) equal to a Hydra ``train`` config.

    ``output_dir`` replaces the Hydra run folder (``${hydra:runtime.output_dir}``): logs and checkpoints go there.
    """
    from hydra.core.hydra_config import HydraConfig

    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
    monitor_without_binary_tasks(cfg)  # as mose-train: regression tasks only monitor val/loss
    HydraConfig.instance().set_config(cfg)
    c = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
         for k in cfg if k != "hydra"}
    data = c["data"]
    trainer = {k: v for k, v in c["trainer"].items() if k != "_target_"}
    strategy = trainer.get("strategy")
    if isinstance(strategy, dict):
        trainer["strategy"] = _to_class_path(strategy)
    trainer["default_root_dir"] = str(output_dir)
    trainer["logger"] = _to_class_path(c["logger"]) if c.get("logger") else False
    trainer["callbacks"] = [_to_class_path(_callback_class(cb)) for cb in callback_configs(c.get("callbacks") or {})
                            if _callback_class(cb) is not None]  # callbacks.monitor applied as in mose-train
    return {
        "seed_everything": c["seed"],
        "threads": c.get("threads"),
        "trainer": trainer,
        "model": {"model": c["model"], "lr": c["optim"]["lr"], "weight_decay": c["optim"]["weight_decay"],
                  **({"weighting": c["weighting"]} if c.get("weighting") else {})},
        "data": {"data": data, **loader_settings(data)},
    }


def hydra_config(overrides: list[str] | None = None) -> DictConfig:
    """The composed Hydra ``train`` config (with ``overrides``), hydra node included."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides or []), return_hydra_config=True)


def default_output_dir() -> str:
    """``outputs/cli/<now>``: :data:`NOW` becomes ``<date>/<time>-<pid>`` (the shape of mose-train's run folders) when the run starts (``--print_config``
    and ``from-hydra`` show the placeholder, so a saved config starts a new folder each time)."""
    return f"outputs/cli/{NOW}"


EPILOG = ("also: 'mose-cli from-hydra [OVERRIDES]' prints a mose-cli config from a Hydra composition (mose-train's "
          "overrides), e.g. 'mose-cli from-hydra model=ple > run.yaml', then 'mose-cli fit --config run.yaml'. "
          "'fit' then tests the best checkpoint and writes metrics.json, as mose-train (--test_after_fit=false: no test).")


def cli(args: list[str] | dict | None = None, run: bool = True, defaults: dict | None = None) -> MoseCLI:
    """Build (and with ``run`` execute) the CLI; ``defaults`` (a :func:`cli_config`) default to ``mose-train``'s."""
    if defaults is None:
        defaults = cli_config(hydra_config(), default_output_dir())
    trainer, model, data = defaults["trainer"], defaults["model"], defaults["data"]

    class DefaultsCLI(MoseCLI):
        def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
            super().add_arguments_to_parser(parser)
            parser.set_defaults({f"trainer.{k}": v for k, v in trainer.items()})
            parser.set_defaults({f"model.{k}": v for k, v in model.items()})
            parser.set_defaults({f"data.{k}": v for k, v in data.items()})
            parser.set_defaults({"threads": defaults.get("threads")})

    return DefaultsCLI(MultiTaskModule, EventDataModule, args=args, run=run, parser_kwargs={"epilog": EPILOG},
                       seed_everything_default=defaults["seed_everything"],
                       trainer_defaults={"callbacks": [ParquetPredictionWriter()]},
                       save_config_kwargs={"overwrite": True})


def main(argv: list[str] | None = None) -> None:
    """``mose-cli``: errors as ``error: ...`` and exit 2 (:func:`data_prep.errors.cli_errors`); LightningCLI's own
    argument errors exit 2 as well."""
    quiet_third_party()  # no litlogger tip, no Lightning-internal deprecation lines (mose/quiet.py)
    args = list(sys.argv[1:] if argv is None else argv)
    with cli_errors():
        if args and args[0] == "from-hydra":
            import yaml

            print(yaml.safe_dump(cli_config(hydra_config(args[1:]), default_output_dir()), sort_keys=False), end="")
            return
        cli(argv)  # None: LightningCLI reads sys.argv itself


if __name__ == "__main__":
    main()
