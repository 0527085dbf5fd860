"""``mose-predict``: score candidate events with a trained checkpoint; per-task predictions and a ranking score.

    mose-predict ckpt_path=outputs/runs/<date>/<time>/checkpoints/last.ckpt candidates=candidates.parquet
    mose-predict ckpt_path=... candidates=c.parquet history=today.parquet   # recent events the log lacks

Candidates are events the model has not seen (``user_id``, ``item_id``, ``ts`` and the context columns
the model was trained with; labels are not needed). They get the training preprocessing from the
checkpoint's prepared folder alone (or ``data_dir=``): its fitted state (``fit/``: vocabularies,
stats) and one transform (``data_prep.transform``) encode them as the prep encoded the log, and each
candidate's history is the user's last K events strictly before its ``ts`` in the prepared arrays
(every split), plus the events of the optional ``history=`` file (same columns as the training log).
The raw training log is never read. Without ``candidates`` the events of a prepared split
(``split=test``) are scored instead.

Candidates are validated like events (``data_prep.schema.validate_candidates``: columns, nulls, id
kinds against the trained vocabularies, errors naming column and file rows); ids unseen in training
are scored as unknown (the OOV embedding) and counted in the log line ``scored N candidates: U unknown
users, I unknown items``. The checkpoint's vocabulary fingerprint must match the prepared folder's
(:mod:`mose.compat`).

Output (Parquet, one row per candidate, input order): the candidate file's columns, ``p_<task>`` for
binary tasks (probability), ``pred_<task>`` for regression tasks (original units), and ``score`` =
``prod_t p_t ** w_t`` over ``score_weights`` (default: every binary task, weight 1). A task declared
``after`` a parent (``data.tasks.convert.after=click``) has ``p_<task>`` = ``P(parent, task)``, the joint.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
import numpy as np
import polars as pl
import torch
from omegaconf import DictConfig, OmegaConf

from data_prep.arrays import EVENT_FIELDS, STEP_FIELDS
from data_prep.dataset import load_fitted, read_manifest
from data_prep.history import HistoryLog
from data_prep.paths import CONF_DIR
from data_prep.schema import (
    TS,
    SchemaError,
    drop_duplicates,
    id_kind,
    validate,
    validate_candidates,
    with_file_rows,
)
from data_prep.split import SPLITS
from data_prep.transform import transform
from data_prep.vocab import OOV, UNKNOWN_WARN, unknown_shares, warn_unknown
from mose.atomic import write_file
from mose.callbacks import load_checkpoint
from mose.compat import check_data_matches
from mose.data.datamodule import loader_settings
from mose.data.datasets import EventSplit, StreamSplit
from data_prep.errors import CheckpointError, ConfigError, cli_errors
from mose.module import MultiTaskModule
from mose.quiet import quiet_third_party
from mose.threads import set_threads

log = logging.getLogger(__name__)
EPS = 1e-12


def load_module(ckpt_path: str | Path) -> MultiTaskModule:
    """The trained module of a checkpoint, on CPU, in eval mode (plain-data hparams: ``weights_only``).

    A missing, unreadable, unsafe or non-``mose-train`` file raises :class:`CheckpointError` naming it.
    """
    ckpt = Path(ckpt_path)
    load_checkpoint(ckpt)  # weights_only: refuses files that are no mose checkpoint or carry pickled code
    try:
        module = MultiTaskModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    except (RuntimeError, KeyError, TypeError, ValueError) as err:  # weights that do not fit the stored config
        raise CheckpointError(f"checkpoint {ckpt} does not load into the model it describes: "
                              f"{str(err).strip().splitlines()[0]}") from None
    return module.eval()


def ranking_score(preds: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """``prod_t preds[t] ** weights[t]`` ``(N,)``, computed in log space (predictions clamped to >= 1e-12)."""
    missing = sorted(set(weights) - set(preds))
    if missing:
        raise ConfigError(f"score_weights names task(s) {missing}; the model predicts {sorted(preds)}")
    n = len(next(iter(preds.values())))
    log_score = np.zeros(n, dtype=np.float64)
    for task, w in weights.items():
        log_score += float(w) * np.log(np.clip(preds[task].astype(np.float64), EPS, None))
    return np.exp(log_score)


@torch.inference_mode()
def score_arrays(module: MultiTaskModule, batches) -> np.ndarray:
    """Predictions ``(N, T)`` (probabilities / target-scale values) over an iterable of batch dicts.

    Per-stream batches ``(B, S, ...)`` are reduced to their scored steps (``mask``).
    """
    out = [module.predict_step(batch).numpy() for batch in batches]
    return np.concatenate(out) if out else np.zeros((0, len(module.tasks)), np.float32)


def task_outputs(module: MultiTaskModule, preds: np.ndarray) -> dict[str, np.ndarray]:
    """``{task: (N,)}``: probabilities for binary tasks, original units for regression (``expm1`` after log1p)."""
    out = {}
    for i, task in enumerate(module.tasks):
        p = preds[:, i]
        if module.hparams.tasks[task].get("transform", "none") == "log1p" and not bool(module.binary[i]):
            p = np.expm1(p)
        out[task] = p
    return out


def output_frame(module: MultiTaskModule, preds: np.ndarray, weights: dict[str, float] | None) -> pl.DataFrame:
    """Columns ``p_<task>`` / ``pred_<task>`` and ``score`` for predictions ``(N, T)``."""
    per_task = task_outputs(module, preds)
    if weights is None:
        weights = {t: 1.0 for i, t in enumerate(module.tasks) if bool(module.binary[i])}
    cols = {(f"p_{t}" if bool(module.binary[i]) else f"pred_{t}"): per_task[t].astype(np.float32)
            for i, t in enumerate(module.tasks)}
    return pl.DataFrame({**cols, "score": ranking_score(per_task, dict(weights))})


def prepared_root(module: MultiTaskModule, data_dir: str | Path | None = None) -> Path:
    """The checkpoint's prepared folder (or ``data_dir``), as it is (serving never rebuilds it from the raw
    log), checked to have the vocabularies and tasks the model was trained on."""
    root = Path(data_dir or module.hparams.data["dir"])
    if not (root / "manifest.json").is_file():
        raise SchemaError(f"no prepared dataset at {root} (no manifest.json): prepare it with mose-prep, "
                          "or point data_dir= at one")
    check_data_matches(module.hparams, read_manifest(root), "the checkpoint", root)
    return root


def event_batches(arrays: dict[str, np.ndarray], batch_size: int):
    """Per-event model batches ``{field: (B, ...)}`` of transformed candidates."""
    fields = [f for f in EVENT_FIELDS if f in arrays]
    for s in range(0, len(arrays["user"]), batch_size):
        yield {f: torch.from_numpy(np.ascontiguousarray(arrays[f][s:s + batch_size])) for f in fields}


def stream_batches(arrays: dict[str, np.ndarray], log: HistoryLog, batch_size: int, length: int):
    """Per-stream batches ``(B, S, ...)``: the user's last ``S - 1`` logged events then the candidate
    (scored, ``mask``), right-padded like ``StreamSplit(windows="next_step")``."""
    n, j = len(arrays["user"]), np.arange(length)[None, :]
    fields = [f for f in STEP_FIELDS if f in log.fields and f in arrays]
    for s in range(0, n, batch_size):
        sl = slice(s, min(s + batch_size, n))
        n_hist = np.minimum(arrays["n_prior"][sl], length - 1)[:, None]  # (B, 1)
        rows = arrays["last"][sl, None] - n_hist + 1 + j  # logged rows at j < n_hist
        is_log, is_cand = j < n_hist, j == n_hist
        batch = {}
        for f in fields:
            value = log.gather(f, rows, is_log)  # (B, S, ...)
            value[is_cand] = arrays[f][sl]  # one candidate step per row, in row order
            batch[f] = torch.from_numpy(value)
        batch["valid"], batch["mask"] = torch.from_numpy(is_log | is_cand), torch.from_numpy(is_cand)
        yield batch


def read_candidates(path: str | Path, columns: dict | None = None, ts_unit: str = "ms"
                    ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A CSV/Parquet of candidates as read, and in input order with canonical column names and ``ts`` in ms."""
    from data_prep.sources.events import _ids_fit_int64, read, to_ms

    df = raw = read(path)
    columns = dict(columns or {})
    absent = [src for src in columns.values() if src not in df.columns]
    if absent:
        raise SchemaError(f"{path}: mapped column(s) {absent} not found; the file has {df.columns}")
    df = with_file_rows(_ids_fit_int64(df.rename({src: canon for canon, src in columns.items()})), path)
    if TS not in df.columns:
        raise SchemaError(f"{path}: no '{TS}' column; the file has {df.columns}")
    return raw, df.with_columns(to_ms(df[TS], ts_unit))


def score_candidates(module: MultiTaskModule, candidates: pl.DataFrame, batch_size: int = 8192,
                     data_dir: str | None = None, history: pl.DataFrame | None = None,
                     warn_unknown_share: float | None = None) -> np.ndarray:
    """Predictions ``(N, T)`` for canonical candidate events, encoded with the prepared folder's fitted state.

    ``history``: canonical events after (or beside) the prepared log, added to the users' histories.
    ``warn_unknown_share``: warn when a larger share of candidates has an unknown user / item (None: the
    checkpoint's ``data.warn_unknown_share``).
    """
    root = prepared_root(module, data_dir)
    fitted = load_fitted(root)
    spec = fitted.spec
    validate_candidates(candidates, list(spec.categorical), list(spec.numeric),
                        {c: id_kind(v.schema[c]) for c, v in fitted.vocabs.items()}, others=list(fitted.pcode))
    logged = HistoryLog.from_prepared(root)
    if history is not None and history.height:
        history, _ = drop_duplicates(history)
        validate(history, fitted.spec)
        logged = logged.with_recent(history, fitted)
    arrays = transform(candidates, fitted, logged)
    arrays["user_key"] = np.zeros(candidates.height, dtype=np.int64)  # per-user metrics only
    log.info("scored %d candidates: %d unknown users, %d unknown items (not in the training vocabularies: "
             "scored with the learned unknown-id embedding)", len(arrays["user"]),
             int((arrays["user"] == OOV).sum()), int((arrays["item"] == OOV).sum()))
    if warn_unknown_share is None:
        warn_unknown_share = module.hparams.data.get("warn_unknown_share", UNKNOWN_WARN)
    warn_unknown(unknown_shares(arrays["user"], arrays["item"]), warn_unknown_share, log, what="candidates",
                 splits=("all",))
    if loader_settings(module.hparams.data)["layout"] == "per_stream":
        batches = stream_batches(arrays, logged, batch_size, fitted.options.stream_len)
    else:
        batches = event_batches(arrays, batch_size)
    return score_arrays(module, batches)


def score_split(module: MultiTaskModule, split: str, batch_size: int = 8192,
                data_dir: str | None = None) -> tuple[pl.DataFrame, np.ndarray]:
    """Predictions ``(N, T)`` for the events of a prepared split, and their ``row``/``user_key``/labels."""
    if split not in SPLITS:
        raise ConfigError(f"split={split}: not one of {SPLITS}")
    root = prepared_root(module, data_dir)
    manifest = read_manifest(root)
    if loader_settings(module.hparams.data)["layout"] == "per_stream":
        ds = StreamSplit(root, split, "next_step")
        rows = ds.ends
    else:
        ds = EventSplit(root, split)
        rows = ds.index
    batches = (ds.__getitems__(list(range(s, min(s + batch_size, len(ds))))) for s in range(0, len(ds), batch_size))
    preds = score_arrays(module, batches)
    labels = np.load(Path(root) / "labels.npy", mmap_mode="r")[rows]
    names = list(manifest["spec"]["tasks"])
    info = pl.DataFrame({"row": rows, "user_key": np.load(Path(root) / "user_key.npy", mmap_mode="r")[rows],
                         **{f"label_{t}": labels[:, i] for i, t in enumerate(names)}})
    return info, preds


def predict(cfg: DictConfig) -> Path:
    """Score ``cfg.candidates`` (or the prepared ``cfg.split``) and write ``cfg.out`` (Parquet)."""
    torch.set_grad_enabled(False)
    set_threads(cfg.get("threads"))
    module = load_module(cfg.ckpt_path)
    weights = OmegaConf.to_container(cfg.score_weights) if cfg.score_weights is not None else None
    start = time.perf_counter()
    if cfg.candidates:
        cols = OmegaConf.to_container(cfg.columns) if cfg.columns is not None else None
        raw, cands = read_candidates(cfg.candidates, cols, cfg.ts_unit)
        history = read_candidates(cfg.history, cols, cfg.ts_unit)[1] if cfg.get("history") else None
        preds = score_candidates(module, cands, cfg.batch_size, cfg.data_dir, history, cfg.get("warn_unknown_share"))
        frame = pl.concat([raw, output_frame(module, preds, weights)], how="horizontal")
    else:
        info, preds = score_split(module, cfg.split, cfg.batch_size, cfg.data_dir)
        frame = pl.concat([info, output_frame(module, preds, weights)], how="horizontal")
    out = Path(cfg.out)
    write_file(out, "predictions", frame.write_parquet)
    print(f"scored {frame.height:,} events in {time.perf_counter() - start:.1f}s -> {out}")
    print(frame.head(5))
    return out


@hydra.main(config_path=CONF_DIR, config_name="predict", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    quiet_third_party()  # no litlogger tip, no Lightning-internal deprecation lines (mose/quiet.py)
    with cli_errors():
        predict(cfg)


def main() -> None:
    """``mose-predict``: errors as ``error: ...`` and exit 2 (:func:`data_prep.errors.cli_errors`)."""
    with cli_errors():
        hydra_main()


if __name__ == "__main__":
    main()
