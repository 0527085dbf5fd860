"""Does a checkpoint fit the data (and the run) it is about to be used with? Errors name what differs.

    check_data_matches(module.hparams, manifest, "checkpoint X", root)   # mose-eval, mose-predict
    check_resume(ckpt_path, module)                                      # mose-train resume=..., mose-cli

Data: the checkpoint's ``fingerprint`` (:mod:`data_prep.fingerprint`) against the dataset's manifest,
so renamed or re-assigned ids, other categorical columns or another task set are refused instead of
scored with the wrong embeddings. Resume: the same, plus the model config, input sizes, tasks and
every parameter shape, checked before Lightning loads the state dict.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from data_prep.fingerprint import differences
from mose.callbacks import CheckpointError, load_checkpoint

log = logging.getLogger(__name__)
MAX_LISTED = 6


def check_data_matches(hparams: Mapping, manifest: dict, what: str, root: str | Path) -> None:
    """Refuse (:class:`CheckpointError`) when the dataset at ``root`` has other vocabularies or tasks than
    the checkpoint ``what`` was trained on; warn when either side predates fingerprints."""
    trained, current = hparams.get("fingerprint"), manifest.get("fingerprint")
    if trained is None or current is None:
        log.warning("%s cannot be checked against the dataset %s: %s has no vocabulary fingerprint (made "
                    "before mose stored one); make sure it is the data the model was trained on", what, root,
                    "the checkpoint" if trained is None else "the dataset")
        return
    diffs = differences(trained, current)
    if diffs:
        raise CheckpointError(f"{what} was trained on other data than the dataset {root}: {'; '.join(diffs)}. "
                              "Its embeddings would score these ids as other users / items; use the data it "
                              "was trained on, or train a new model")


def _plain(value):
    """Tuples as lists (hparams come back from a checkpoint with either)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def config_differences(prefix: str, old, new) -> list[str]:
    """``"model.n_experts: 4 in the checkpoint, 8 now"`` for each leaf where two nested configs differ."""
    old, new = _plain(old), _plain(new)
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in dict.fromkeys([*old, *new])
                for d in config_differences(f"{prefix}.{k}", old.get(k), new.get(k))]
    return [] if old == new else [f"{prefix}: {old!r} in the checkpoint, {new!r} now"]


def _task_view(tasks: Mapping) -> dict:
    return {t: (s.get("kind", "binary"), s.get("transform", "none")) for t, s in (tasks or {}).items()}


def _shape_differences(saved: Mapping, current: Mapping) -> list[str]:
    """Parameters and buffers the checkpoint's state dict lacks, has extra, or has with another shape."""
    out = [f"{k}: shape {list(v.shape)} in the checkpoint, {list(current[k].shape)} now"
           for k, v in saved.items() if k in current and isinstance(v, torch.Tensor) and v.shape != current[k].shape]
    missing, extra = [k for k in current if k not in saved], [k for k in saved if k not in current]
    if missing:
        out.append(f"parameters only in this run's model: {missing[:MAX_LISTED]}")
    if extra:
        out.append(f"parameters only in the checkpoint: {extra[:MAX_LISTED]}")
    return out


def check_resume(ckpt_path: str | Path | None, module: torch.nn.Module, key: str = "resume") -> None:
    """Before ``trainer.fit(ckpt_path=...)`` (or ``test`` / ``predict``): refuse a checkpoint of another model,
    input sizes, vocabulary or task set than ``module``'s, naming what differs (not a state-dict size
    traceback); ``key`` is the option that named the checkpoint. Config changes that still fit every
    parameter (a dropout rate, say) only warn."""
    if ckpt_path is None:
        return
    ckpt = load_checkpoint(ckpt_path)
    old, new = ckpt.get("hyper_parameters") or {}, module.hparams
    configs = [*config_differences("model", old.get("model"), new.get("model")),
               *config_differences("input_spec", old.get("input_spec"), new.get("input_spec"))]
    shapes = _shape_differences(ckpt.get("state_dict") or {}, module.state_dict())
    data = []
    if _task_view(old.get("tasks")) != _task_view(new.get("tasks")):
        data.append(f"tasks: {sorted(_task_view(old.get('tasks')).items())} in the checkpoint, "
                    f"{sorted(_task_view(new.get('tasks')).items())} now")
    if old.get("fingerprint") is None or new.get("fingerprint") is None:
        log.warning("%s=%s: no vocabulary fingerprint in the %s; cannot check the ids mean the same", key, ckpt_path,
                    "checkpoint (made before mose stored one)" if old.get("fingerprint") is None else "dataset")
    else:
        data += [d for d in differences(old["fingerprint"], new["fingerprint"]) if not d.startswith("task set")]
    if shapes or data:
        listed = [*data, *configs, *shapes]
        more = f"; and {len(listed) - MAX_LISTED} more" if len(listed) > MAX_LISTED else ""
        raise CheckpointError(f"{key}={ckpt_path}: the checkpoint does not fit this run: "
                              f"{'; '.join(listed[:MAX_LISTED])}{more}. Resume with the model and data config "
                              "it was trained with, or start a new run")
    for d in configs:
        log.warning("%s=%s: %s (the parameters still fit; going on)", key, ckpt_path, d)
