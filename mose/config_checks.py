"""Config checks that run before any data is prepared or any step is trained; errors name the key.

    check_config(cfg)   # mose-train calls this first; raises ConfigError("model.top_k=5: ...")

Data-dependent checks (a task or cohort column the events lack) run when the events are
validated (``data_prep.schema.validate``), before training, and name ``data.tasks.<name>`` /
``data.cohorts``.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Mapping
from typing import Any

import torch
from hydra._internal.utils import _locate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from data_prep.build import event_spec
from data_prep.options import PrepOptions, check_number
from data_prep.schema import SchemaError
from data_prep.sequences import LAYOUTS, WINDOWS
from data_prep.split import SplitOptions
from mose.callbacks import NONFINITE_MODES
from data_prep.errors import ConfigError
from mose.metrics import MultiTaskMetrics
from mose.models.linear_combination import MIXES
from mose.models.mose import GATES
from mose.models.omoe import MIXTURES
from mose.models.poso import CODES
from mose.nn.embeddings import ID_DROPOUT
from mose.nn.norm import NORMS
from mose.nn.sequence import CELLS
from mose.nn.task_chain import needs_dependency
from mose.optim import SCALE_RULES

log = logging.getLogger(__name__)

SUPPLIED = ("input_spec", "tasks", "after")  # model constructor arguments that MultiTaskModule passes itself
# model keys with a fixed set of values (the same in every model that takes the key)
MODEL_CHOICES = {"norm": (*NORMS, None), "cell": CELLS, "gate": GATES, "mixture": MIXTURES, "mix": MIXES,
                 "code": CODES}


def _section(cfg: DictConfig | Mapping, key: str) -> dict:
    """``cfg[key]`` as plain resolved data (only that section is resolved)."""
    value = cfg.get(key) if isinstance(cfg, (DictConfig, Mapping)) else None
    if isinstance(value, DictConfig):
        return OmegaConf.to_container(value, resolve=True)
    return dict(value or {})


def _is_size_key(key: str) -> bool:
    """Keys that hold a count or width, which must be >= 1."""
    return key.startswith(("n_", "num_")) or any(w in key for w in ("dim", "hidden", "heads", "top_k", "layers"))


def _target(section: str, target: Any, hint: str) -> Any:
    """The object ``<section>._target_`` names (imported), or :class:`ConfigError` naming the key."""
    if not target:
        raise ConfigError(f"{section}._target_ is missing: {hint}")
    try:
        return _locate(str(target))
    except (ImportError, AttributeError, ValueError) as err:  # from Hydra's locate
        raise ConfigError(f"{section}._target_={target}: cannot be imported ({str(err).splitlines()[0]}); "
                          f"{hint}") from None


def check_model(model: Mapping) -> None:
    """``model._target_`` imports to an ``nn.Module`` whose constructor takes every other key;
    sizes are positive, ``dropout`` in [0, 1), ``top_k <= n_experts``.
    """
    target = model.get("_target_")
    cls = _target("model", target, "pick a model with model=<name> (conf/model/*.yaml)")
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise ConfigError(f"model._target_={target}: not a torch.nn.Module class")
    params = inspect.signature(cls).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    for key, value in model.items():
        if key.startswith("_"):
            continue
        if key in SUPPLIED:
            raise ConfigError(f"model.{key}: set by the training module from the data; remove it from the config")
        if not takes_any and key not in params:
            known = [p for p in params if p not in SUPPLIED and p != "self"]
            raise ConfigError(f"model.{key}: not a parameter of {target} (it takes {known})")
        _check_value(f"model.{key}", key, value)
    top_k, n_experts = model.get("top_k"), model.get("n_experts")
    if isinstance(top_k, int) and isinstance(n_experts, int) and top_k > n_experts:
        raise ConfigError(f"model.top_k={top_k}: more than model.n_experts={n_experts}")


def _one_of(path: str, value: Any, allowed: tuple) -> None:
    """``value`` must be one of ``allowed`` (``None`` in it: null is allowed too)."""
    if value not in allowed:
        names = ", ".join("null" if a is None else str(a) for a in allowed)
        raise ConfigError(f"{path}={value}: must be one of {names}")


def _check_value(path: str, key: str, value: Any) -> None:
    if key in MODEL_CHOICES:
        _one_of(path, value, MODEL_CHOICES[key])
        return
    if key == "dropout" or key.endswith("_dropout"):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
            raise ConfigError(f"{path}={value}: a dropout probability must be in [0, 1)")
        return
    ints = value if isinstance(value, (list, tuple)) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints):
        return
    if isinstance(value, (list, tuple)) or _is_size_key(key):
        bad = [v for v in ints if v < 1]
        if bad:
            raise ConfigError(f"{path}={value}: sizes must be positive integers (got {bad[0]})")


_positive = functools.partial(check_number, error=ConfigError)  # (path, value, integer=True, allow_zero=False)


def check_source(source: Mapping) -> None:
    """``data.source._target_`` imports to a loader that takes every other ``data.source`` key."""
    target = source.get("_target_")
    fn = _target("data.source", target, "pick a source with data=<name> (conf/data/*.yaml)")
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a callable without a signature: nothing to check
        return
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    for key in source:
        if not str(key).startswith("_") and key not in params:
            raise ConfigError(f"data.source.{key}: not a parameter of {target} (it takes {list(params)})")


def check_data(data: Mapping) -> None:
    """Tasks, features, layout, batch sizes and prep options (``PrepOptions``) of a data config, before any data is read."""
    try:
        event_spec(dict(data))
        PrepOptions.from_config(data.get("prep"))
        SplitOptions.from_config(data.get("split"))
    except SchemaError as err:
        raise ConfigError(str(err)) from None
    if isinstance(data.get("source"), Mapping):
        check_source(data["source"])
    for key, allowed in (("layout", LAYOUTS), ("windows", WINDOWS)):
        if data.get(key) is not None:
            _one_of(f"data.{key}", data[key], allowed)
    for key in ("batch_size", "eval_batch_size"):
        if data.get(key) is not None:
            _positive(f"data.{key}", data[key])
    if data.get("num_workers") is not None:
        _positive("data.num_workers", data["num_workers"], allow_zero=True)
    windows = data.get("windows") or WINDOWS[0]
    if (data.get("prep") or {}).get("carry_state") and windows != "chunks":
        raise ConfigError(f"data.prep.carry_state=true with data.windows={windows}: carried states continue a "
                          "user's chunks from one batch to the next; use data.windows=chunks")


def check_weighting(weighting: Mapping, model: Mapping) -> None:
    """A weighting that reads the model's last shared layer (GradNorm) needs a model that names one."""
    target = weighting.get("_target_")
    method = _target("weighting", target, "pick one with weighting=<name> (conf/weighting/*.yaml)") if target else None
    if getattr(method, "needs_shared", False) and not hasattr(_locate(model["_target_"]), "shared_parameters"):
        raise ConfigError(f"weighting._target_={target}: needs the model's last shared layer, and "
                          f"{model['_target_']} shares no layer between tasks (no shared_parameters()); use "
                          "weighting=fixed, uncertainty or pcgrad")


def _binary(tasks: Mapping) -> list[str]:
    return [t for t, spec in tasks.items() if dict(spec or {}).get("kind", "binary") == "binary"]


def monitored_metrics(tasks: Mapping) -> list[str]:
    """The metrics a run over ``tasks`` (``{name: {kind, ...}}``) logs that a callback can ``monitor``:
    ``train/loss``, ``train/<task>/loss``, ``val/loss`` and ``val/<name>`` for every metric of
    :class:`MultiTaskMetrics` (computed on two dummy events, so the names are its own). Cohort and gate
    metrics (``val/cohort/...``, ``val/gates/...``) depend on the data and are accepted by prefix."""
    kinds = {t: dict(spec or {}).get("kind", "binary") for t, spec in tasks.items()}
    metrics = MultiTaskMetrics(kinds, {})
    metrics.update(torch.full((2, len(kinds)), 0.5), torch.tensor([[0.0], [1.0]]).expand(2, len(kinds)),
                   torch.zeros(2, dtype=torch.long), torch.zeros(2, 0, dtype=torch.long))
    return ["train/loss", *(f"train/{t}/loss" for t in kinds), "val/loss", *(f"val/{k}" for k in metrics.compute())]


MONITOR_PREFIXES = ("val/cohort/", "val/gates/")


def check_monitors(cfg: DictConfig | Mapping, tasks: Mapping) -> None:
    """Every ``callbacks.<name>.monitor`` is a metric the run logs (before training starts, not after its
    first epoch)."""
    names = monitored_metrics(tasks)
    for name, cb in (cfg.get("callbacks") or {}).items():
        # callbacks.monitor (one key for checkpointing and early stopping, mose.train.callback_configs)
        monitor, key = (cb, "callbacks.monitor") if name == "monitor" else \
            ((cb or {}).get("monitor"), f"callbacks.{name}.monitor")
        if monitor is None or monitor in names or str(monitor).startswith(MONITOR_PREFIXES):
            continue
        raise ConfigError(f"{key}={monitor}: not a metric this run logs; it logs "
                          f"{', '.join(names)} and {'... / '.join(MONITOR_PREFIXES)}...")


def monitor_without_binary_tasks(cfg: DictConfig) -> None:
    """With regression tasks only there is no ``val/auc_mean``: callbacks that monitor it (the default)
    monitor ``val/loss`` with ``mode=min`` instead (and the best checkpoint's name shows the loss)."""
    tasks = _section(cfg, "data").get("tasks")
    if not isinstance(tasks, Mapping) or not tasks or _binary(tasks):
        return
    callbacks = cfg.get("callbacks") or {}
    if callbacks.get("monitor") == "val/auc_mean":  # the one key of mose.train.callback_configs
        with open_dict(callbacks):
            callbacks.monitor = "val/loss"
        log.warning("no binary task (no val/auc_mean): callbacks.monitor is val/loss (mode=min)")
    for name, cb in callbacks.items():
        if isinstance(cb, DictConfig) and cb.get("monitor") == "val/auc_mean":
            with open_dict(cb):
                cb.monitor, cb.mode = "val/loss", "min"
                if isinstance(cb.get("filename"), str):
                    cb.filename = cb.filename.replace("auc{val/auc_mean", "loss{val/loss")
            log.warning("no binary task (no val/auc_mean): callbacks.%s monitors val/loss (mode=min)", name)


def check_dependencies(model: Mapping, data: Mapping) -> None:
    """A model that takes ``after`` (ESMM, AITM) needs a task declared ``after`` another in the data."""
    if "after" in inspect.signature(_locate(str(model["_target_"]))).parameters:
        try:
            needs_dependency(event_spec(dict(data)).after, f"model._target_={model['_target_']}")
        except ValueError as err:
            raise ConfigError(str(err)) from None


CAUSAL_WINDOWS = {"window": ("next_step",)}  # model.gate -> the data.windows it is causal with (others: all)


def check_gate_windows(model: Mapping, data: Mapping) -> None:
    """``model.gate=window`` pools every step of a window, so it is causal only where each window scores
    its last step alone (``data.windows=next_step``); with ``data.windows=chunks`` a step's gate would
    see later steps and, through their ``prev_label``, the labels of earlier events."""
    gate, windows = model.get("gate"), data.get("windows") or WINDOWS[0]
    allowed = CAUSAL_WINDOWS.get(gate)
    if allowed is not None and windows not in allowed:
        raise ConfigError(f"model.gate={gate} with data.windows={windows}: the window gate pools every step of "
                          f"a window, so a step's gate would see later steps (and the labels of earlier events "
                          f"they carry); use model.gate=step, or data.windows={' or '.join(allowed)}")


def check_config(cfg: DictConfig | Mapping) -> None:
    """All static checks of a ``mose-train`` config; raises :class:`ConfigError` naming the key."""
    check_model(_section(cfg, "model"))
    data = _section(cfg, "data")
    check_data(data)
    check_gate_windows(_section(cfg, "model"), data)
    check_weighting(_section(cfg, "weighting"), _section(cfg, "model"))
    check_monitors(cfg, data["tasks"])
    seed = cfg.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise ConfigError(f"seed={seed}: must be an integer")
    if cfg.get("threads") is not None:
        _positive("threads", cfg.get("threads"))
    check_dependencies(_section(cfg, "model"), data)
    optim = _section(cfg, "optim")
    if "lr" in optim:
        _positive("optim.lr", optim["lr"], integer=False)
    if "weight_decay" in optim:
        _positive("optim.weight_decay", optim["weight_decay"], integer=False, allow_zero=True)
    if optim.get("scale_lr", "none") not in SCALE_RULES:
        raise ConfigError(f"optim.scale_lr={optim['scale_lr']}: must be one of {', '.join(SCALE_RULES)}")
    if "ref_batch" in optim:
        _positive("optim.ref_batch", optim["ref_batch"])
    if "warmup_steps" in optim:
        _positive("optim.warmup_steps", optim["warmup_steps"], allow_zero=True)
    if "embed_lr_scale" in optim:
        _positive("optim.embed_lr_scale", optim["embed_lr_scale"], integer=False)
    trainer = cfg.get("trainer") or {}  # not resolved: it may use ${hydra:...}
    max_epochs = trainer.get("max_epochs")
    if max_epochs is not None and (not isinstance(max_epochs, int) or max_epochs == 0 or max_epochs < -1):
        raise ConfigError(f"trainer.max_epochs={max_epochs}: must be a positive integer (or -1 for no limit)")
    for key, value in _section(cfg, "id_dropout").items():
        if key not in ID_DROPOUT:
            raise ConfigError(f"id_dropout.{key}: unknown key (id_dropout has {', '.join(ID_DROPOUT)})")
        _check_value(f"id_dropout.{key}", "id_dropout", value)
        if key == "history" and value and data.get("layout") == "per_stream":
            raise ConfigError("id_dropout.history: the per-stream models (data.layout=per_stream) read the stream "
                              "itself, not history tokens; set it only for per-event models")
    nonfinite = (cfg.get("callbacks") or {}).get("nonfinite") or {}
    if nonfinite.get("mode") is not None:
        _one_of("callbacks.nonfinite.mode", nonfinite["mode"], NONFINITE_MODES)
