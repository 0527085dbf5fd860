"""Config checks that run before any data is prepared or any step is trained; errors name the key.

    check_config(cfg)   # mose-train calls this first; raises ConfigError("model.top_k=5: ...")

Data-dependent checks (a task or cohort column the events lack) run when the events are
validated (``data_prep.schema.validate``), before training, and name ``data.tasks.<name>`` /
``data.cohorts``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from typing import Any

from hydra._internal.utils import _locate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from data_prep.build import event_spec
from data_prep.options import PrepOptions, check_number
from data_prep.schema import SchemaError
from data_prep.sequences import LAYOUTS, WINDOWS
from mose.callbacks import NONFINITE_MODES
from mose.models.linear_combination import MIXES
from mose.models.mose import GATES
from mose.models.omoe import MIXTURES
from mose.nn.norm import NORMS
from mose.nn.sequence import CELLS

SUPPLIED = ("input_spec", "tasks")  # model constructor arguments that MultiTaskModule passes itself
# model keys with a fixed set of values (the same in every model that takes the key)
MODEL_CHOICES = {"norm": (*NORMS, None), "cell": CELLS, "gate": GATES, "mixture": MIXTURES, "mix": MIXES}


class ConfigError(ValueError):
    """A config value that cannot work; the message starts with the offending key."""


def _section(cfg: DictConfig | Mapping, key: str) -> dict:
    """``cfg[key]`` as plain resolved data (only that section is resolved)."""
    value = cfg.get(key) if isinstance(cfg, (DictConfig, Mapping)) else None
    if isinstance(value, DictConfig):
        return OmegaConf.to_container(value, resolve=True)
    return dict(value or {})


def _is_size_key(key: str) -> bool:
    """Keys that hold a count or width, which must be >= 1."""
    return key.startswith(("n_", "num_")) or any(w in key for w in ("dim", "hidden", "heads", "top_k", "layers"))


def check_model(model: Mapping) -> None:
    """``model._target_`` imports to an ``nn.Module`` whose constructor takes every other key;
    sizes are positive, ``dropout`` in [0, 1), ``top_k <= n_experts``.
    """
    target = model.get("_target_")
    if not target:
        raise ConfigError("model._target_ is missing: pick a model with model=<name> (conf/model/*.yaml)")
    try:
        cls = _locate(str(target))
    except (ImportError, AttributeError, ValueError) as err:  # from Hydra's locate
        raise ConfigError(f"model._target_={target}: cannot be imported ({str(err).splitlines()[0]}); "
                          "the models are in conf/model/*.yaml") from None
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


def check_data(data: Mapping) -> None:
    """Tasks, features, layout, batch sizes and prep options (``PrepOptions``) of a data config, before any data is read."""
    try:
        event_spec(dict(data))
        PrepOptions.from_config(data.get("prep"))
    except SchemaError as err:
        raise ConfigError(str(err)) from None
    for key, allowed in (("layout", LAYOUTS), ("windows", WINDOWS)):
        if data.get(key) is not None:
            _one_of(f"data.{key}", data[key], allowed)
    for key in ("batch_size", "eval_batch_size"):
        if data.get(key) is not None:
            _positive(f"data.{key}", data[key])
    if data.get("num_workers") is not None:
        _positive("data.num_workers", data["num_workers"], allow_zero=True)


def check_weighting(weighting: Mapping, model: Mapping) -> None:
    """A weighting that reads the model's last shared layer (GradNorm) needs a model that names one."""
    target = weighting.get("_target_")
    try:
        method = _locate(str(target)) if target else None
    except (ImportError, AttributeError, ValueError) as err:  # from Hydra's locate
        raise ConfigError(f"weighting._target_={target}: cannot be imported ({str(err).splitlines()[0]})") from None
    if getattr(method, "needs_shared", False) and not hasattr(_locate(model["_target_"]), "shared_parameters"):
        raise ConfigError(f"weighting._target_={target}: needs the model's last shared layer, and "
                          f"{model['_target_']} shares no layer between tasks (no shared_parameters()); use "
                          "weighting=fixed, uncertainty or pcgrad")


def check_config(cfg: DictConfig | Mapping) -> None:
    """All static checks of a ``mose-train`` config; raises :class:`ConfigError` naming the key."""
    check_model(_section(cfg, "model"))
    check_data(_section(cfg, "data"))
    check_weighting(_section(cfg, "weighting"), _section(cfg, "model"))
    optim = _section(cfg, "optim")
    if "lr" in optim:
        _positive("optim.lr", optim["lr"], integer=False)
    if "weight_decay" in optim:
        _positive("optim.weight_decay", optim["weight_decay"], integer=False, allow_zero=True)
    trainer = cfg.get("trainer") or {}  # not resolved: it may use ${hydra:...}
    max_epochs = trainer.get("max_epochs")
    if max_epochs is not None and (not isinstance(max_epochs, int) or max_epochs == 0 or max_epochs < -1):
        raise ConfigError(f"trainer.max_epochs={max_epochs}: must be a positive integer (or -1 for no limit)")
    nonfinite = (cfg.get("callbacks") or {}).get("nonfinite") or {}
    if nonfinite.get("mode") is not None:
        _one_of("callbacks.nonfinite.mode", nonfinite["mode"], NONFINITE_MODES)
