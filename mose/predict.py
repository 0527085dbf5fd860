"""``mose-predict``: score candidate events with a trained checkpoint; per-task predictions and a ranking score.

    mose-predict ckpt_path=outputs/runs/<date>/<time>/checkpoints/last.ckpt candidates=candidates.parquet

Candidates are events the model has not seen (``user_id``, ``item_id``, ``ts`` and the context columns
the model was trained with; labels are not needed). They get the training preprocessing: the event
log the checkpoint was prepared from (its ``data.source``) is reloaded, the vocabularies are refitted
on its train split with the same functions (``data_prep.vocab``), so every id gets the index it had
in training (checked against the prepared arrays), and each candidate's history is the user's last
K logged events strictly before its ``ts``. Without ``candidates`` the events of a prepared split
(``split=test``) are scored instead.

Candidates are validated like events (``data_prep.schema.validate_candidates``: columns, nulls, id
kinds against the trained vocabularies, errors naming column and file rows); ids unseen in training
are scored as unknown (the OOV embedding) and counted in the log line ``scored N candidates: U unknown
users, I unknown items``. The checkpoint's vocabulary fingerprint must match the dataset's
(:mod:`mose.compat`).

Output (Parquet, one row per candidate, input order): the candidate file's columns, ``p_<task>`` for
binary tasks (probability), ``pred_<task>`` for regression tasks (original units), and ``score`` =
``prod_t p_t ** w_t`` over ``score_weights`` (default: every binary task, weight 1).
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

from data_prep.build import check_dataset_dir, ensure_prepared, event_spec, load_events
from data_prep.prepare import NEW_USER, read_manifest
from data_prep.schema import ITEM, TS, USER, SchemaError, drop_duplicates, validate_candidates, with_file_rows
from data_prep.sequences import (
    HIST_ITEM_DTYPE,
    gather_history,
    prior_bucket_expr,
    prior_count_expr,
    sort_events,
)
from data_prep.split import SPLITS, TRAIN, split_expr
from data_prep.vocab import OOV, encode, fit_vocab
from mose.callbacks import cli_errors, load_checkpoint
from mose.compat import check_data_matches
from mose.data.datamodule import loader_settings
from mose.data.datasets import FIELDS, STEP_FIELDS, EventSplit, StreamSplit, load_arrays
from mose.module import MultiTaskModule
from mose.paths import CONF_DIR

log = logging.getLogger(__name__)
EPS = 1e-12


def load_module(ckpt_path: str | Path) -> MultiTaskModule:
    """The trained module of a checkpoint, on CPU, in eval mode (plain-data hparams: ``weights_only``)."""
    ckpt = Path(ckpt_path)
    if not ckpt.is_file():
        raise SystemExit(f"error: ckpt_path={ckpt_path} is not a file")
    load_checkpoint(ckpt)  # weights_only: refuses a checkpoint carrying pickled code, with a clear error
    module = MultiTaskModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    return module.eval()


def ranking_score(preds: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """``prod_t preds[t] ** weights[t]`` ``(N,)``, computed in log space (predictions clamped to >= 1e-12)."""
    missing = sorted(set(weights) - set(preds))
    if missing:
        raise SystemExit(f"error: score_weights names task(s) {missing}; the model predicts {sorted(preds)}")
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


class CandidateEncoder:
    """Encodes raw candidate events exactly like the training preparation of a prepared dataset.

    ``data`` is the checkpoint's data config, ``root`` its prepared dataset (built if missing).
    The log is reloaded from ``data["source"]`` (exact duplicates dropped, as ``mose-prep`` does) and
    sorted as in ``data_prep.prepare.build_arrays`` (user, ts, input row), so its row ``i`` is row
    ``i`` of the prepared arrays; vocabularies are
    refitted on its train split (``fit_vocab``, same cuts and ``min_count``) and checked against
    the prepared ``user``/``item`` arrays.
    """

    def __init__(self, data: dict, root: str | Path | None = None) -> None:
        self.data = data
        self.root = Path(root or data["dir"])
        self.manifest = m = read_manifest(self.root)
        self.spec = event_spec({**data, "tasks": m["spec"]["tasks"]})
        start = time.perf_counter()
        events, _ = drop_duplicates(load_events(data["source"]))  # as ensure_prepared read it
        logged = sort_events(events)
        logged = logged.with_columns(split_expr(m["cuts"]["val_start"], m["cuts"]["test_start"]), prior_count_expr())
        train = logged.filter(pl.col("split") == TRAIN)
        self.vocabs = {col: fit_vocab(train, col, m["min_count"] if col in (USER, ITEM) else 1)
                       for col in [USER, ITEM, *self.spec.categorical]}
        for col, vocab in self.vocabs.items():
            if vocab.height + 2 != m["vocab_sizes"][col]:
                raise SchemaError(f"the event log of {data['source'].get('_target_')} changed since {self.root} "
                                  f"was prepared: vocabulary '{col}' has {vocab.height + 2} entries, not "
                                  f"{m['vocab_sizes'][col]}")
        self.arrays = load_arrays(self.root, STEP_FIELDS + ("item",))
        for col, name in ((USER, "user"), (ITEM, "item")):
            if not np.array_equal(encode(logged, self.vocabs[col], col).to_numpy(), self.arrays[name]):
                raise SchemaError(f"the event log changed since {self.root} was prepared ('{col}' indices differ)")
        self.train = train
        self.users = logged.with_row_index("_pos").group_by(USER, maintain_order=True).agg(
            pl.col("_pos").min().cast(pl.Int64).alias("_start"))
        self.log_keys = logged.select(USER, TS)
        self.binary_idx = np.asarray([list(m["spec"]["tasks"]).index(t) for t in m["history_labels"]], np.int64)
        log.info("candidate encoder: %d logged events reloaded and encoded in %.1fs", logged.height,
                 time.perf_counter() - start)

    def _history_index(self, cands: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Per candidate ``(n_prior, last)``: the user's logged events strictly before its ``ts`` and the
        log row of the latest of them (``-1`` if none)."""
        keys = self.log_keys
        both = pl.concat([
            keys.with_columns(pl.lit(0, pl.Int8).alias("_cand_flag"), pl.lit(None, pl.UInt32).alias("_cand")),
            cands.select(pl.col(USER).cast(keys.schema[USER]), pl.col(TS).cast(pl.Int64),
                         pl.lit(1, pl.Int8).alias("_cand_flag"), pl.col("_cand")),
        ])
        # at equal ts, candidates sort first: they see only logged events strictly before them
        both = both.sort([USER, TS, "_cand_flag"], descending=[False, False, True])
        both = both.with_columns((pl.col("_cand_flag") == 0).cast(pl.Int64).cum_sum().over(USER).alias("n_prior"))
        per_cand = both.filter(pl.col("_cand_flag") == 1).join(self.users, on=USER, how="left").sort("_cand")
        n_prior = per_cand["n_prior"].to_numpy()
        last = np.where(n_prior > 0, per_cand["_start"].fill_null(0).to_numpy() + n_prior - 1, -1)
        return n_prior, last

    def encode(self, cands: pl.DataFrame) -> dict[str, np.ndarray]:
        """Per-event arrays (the fields of ``mose.data.datasets.FIELDS``) of canonical candidate events ``(N, ...)``,
        checked by ``data_prep.schema.validate_candidates``."""
        m, spec = self.manifest, self.spec
        cands = cands.with_row_index("_cand")
        n_prior, last = self._history_index(cands)
        df = cands.with_columns(pl.Series("n_prior", n_prior, pl.Int64)).with_columns(prior_bucket_expr())
        cat = [encode(df.with_columns(pl.col(c).cast(self.vocabs[c].schema[c], strict=False)), self.vocabs[c], c)
               .to_numpy() for c in [USER, ITEM, *spec.categorical]]
        num = df.select([((pl.col(c).cast(pl.Float64) - s["mean"]) / s["std"]).fill_null(0.0)
                         for c, s in m["numeric_stats"].items()]).to_numpy().astype(np.float32)
        k = m["history_len"]
        pos = last[:, None] - k + 1 + np.arange(k)[None, :]
        valid = np.arange(k)[None, :] >= k - np.minimum(n_prior, k)[:, None]
        pos = np.where(valid, pos, 0)
        n = df.height
        out = {
            "user": cat[0].astype(np.int64), "item": cat[1].astype(np.int64),
            "user_key": np.zeros(n, np.int64),
            "cat": np.stack(cat[2:], 1).astype(np.int64) if spec.categorical else np.zeros((n, 0), np.int64),
            "num": num.reshape(n, len(m["numeric_stats"])),
            "labels": np.zeros((n, len(spec.task_names)), np.float32),
            "n_prior": n_prior, "prior_bucket": df["prior_bucket"].to_numpy().astype(np.int64),
            "cohorts": self._cohorts(df),
            # gathered from the memory-mapped log: only the rows the candidates' histories need
            "hist_item": gather_history(self.arrays["item"], pos, valid).astype(HIST_ITEM_DTYPE),
            "hist_label": gather_history(self.arrays["labels"], pos, valid)[..., self.binary_idx].astype(np.int8),
            "prev_label": gather_history(self.arrays["labels"], np.maximum(last, 0), last >= 0)[
                ..., self.binary_idx].astype(np.int8),
            "last": last,
        }
        if "pcode" in m:
            out["pcode"] = self._pcode(df)
        return out

    def _cohorts(self, df: pl.DataFrame) -> np.ndarray:
        """Cohort codes ``(N, R)`` with the prepared value names (unknown values -> code 0); metrics only."""
        nmax = self.manifest["new_user_max_prior"]
        if NEW_USER not in df.columns:
            df = df.with_columns(pl.when(pl.col("n_prior") < nmax).then(pl.lit("new")).otherwise(pl.lit("regular"))
                                 .alias(NEW_USER))
        codes = []
        for col, names in self.manifest["cohorts"].items():
            values = df[col].cast(pl.String).fill_null("UNKNOWN") if col in df.columns else pl.Series([""] * df.height)
            codes.append(values.replace_strict(names, list(range(len(names))), default=0, return_dtype=pl.Int64)
                         .to_numpy())
        return np.stack(codes, 1) if codes else np.zeros((df.height, 0), np.int64)

    def _pcode(self, df: pl.DataFrame) -> np.ndarray:
        """POSO personalization codes ``(N, P)``, by ``data_prep.prepare._personalization_codes`` (train vocabularies)."""
        from data_prep.prepare import _personalization_codes

        columns = self.manifest["pcode"]["names"][2:]
        codes, _ = _personalization_codes(df, self.train, self.manifest["new_user_max_prior"], columns)
        return codes

    def event_batches(self, arrays: dict[str, np.ndarray], batch_size: int):
        """Per-event model batches ``{field: (B, ...)}`` of the encoded candidates."""
        fields = [f for f in FIELDS if f in arrays]
        for s in range(0, len(arrays["user"]), batch_size):
            yield {f: torch.from_numpy(np.ascontiguousarray(arrays[f][s:s + batch_size])) for f in fields}

    def stream_batches(self, arrays: dict[str, np.ndarray], batch_size: int, length: int):
        """Per-stream batches ``(B, S, ...)``: the user's last ``S - 1`` logged events then the candidate
        (scored, ``mask``), right-padded like ``StreamSplit(windows="next_step")``."""
        n = len(arrays["user"])
        fields = [f for f in STEP_FIELDS if f in self.arrays]
        for s in range(0, n, batch_size):
            sl = slice(s, min(s + batch_size, n))
            n_hist = np.minimum(arrays["n_prior"][sl], length - 1)  # (B,)
            j = np.arange(length)[None, :]
            rows = arrays["last"][sl, None] - n_hist[:, None] + 1 + j  # logged rows at j < n_hist
            is_log, is_cand = j < n_hist[:, None], j == n_hist[:, None]
            batch = {}
            for f in fields:
                logged = np.asarray(self.arrays[f][np.where(is_log, rows, 0).ravel()]).reshape(*rows.shape, -1)
                cand = np.asarray(arrays[f][sl]).reshape(len(rows), 1, -1).astype(logged.dtype)
                value = np.where(is_cand[..., None], cand, logged)
                shape = self.arrays[f].shape[1:]
                batch[f] = torch.from_numpy(value.reshape(*rows.shape, *shape))
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


def prepared_dataset(module: MultiTaskModule, data_dir: str | None = None) -> Path:
    """The checkpoint's prepared dataset (``data_dir``: in that folder, never overwriting another dataset
    there), built if needed, and checked to have the vocabularies and tasks the model was trained on."""
    data = dict(module.hparams.data)
    if data_dir:
        data["dir"] = data_dir
        check_dataset_dir(data, "data_dir")
    root = ensure_prepared(data)
    check_data_matches(module.hparams, read_manifest(root), "the checkpoint", root)
    return root


def score_candidates(module: MultiTaskModule, candidates: pl.DataFrame, batch_size: int = 8192,
                     data_dir: str | None = None) -> np.ndarray:
    """Predictions ``(N, T)`` for canonical candidate events, encoded like the checkpoint's training data."""
    root = prepared_dataset(module, data_dir)
    manifest = read_manifest(root)
    fp = (manifest.get("fingerprint") or {}).get("vocab", {})
    validate_candidates(candidates, manifest["spec"]["categorical"], manifest["spec"]["numeric"],
                        {c: v["dtype"] for c, v in fp.items()})
    data = {**module.hparams.data, "dir": str(root)}
    encoder = CandidateEncoder(data)
    arrays = encoder.encode(candidates)
    log.info("scored %d candidates: %d unknown users, %d unknown items (not in the training vocabularies: "
             "scored with the learned unknown-id embedding)", len(arrays["user"]),
             int((arrays["user"] == OOV).sum()), int((arrays["item"] == OOV).sum()))
    if loader_settings(data)["layout"] == "per_stream":
        batches = encoder.stream_batches(arrays, batch_size, int(encoder.manifest["stream_len"]))
    else:
        batches = encoder.event_batches(arrays, batch_size)
    return score_arrays(module, batches)


def score_split(module: MultiTaskModule, split: str, batch_size: int = 8192,
                data_dir: str | None = None) -> tuple[pl.DataFrame, np.ndarray]:
    """Predictions ``(N, T)`` for the events of a prepared split, and their ``row``/``user_key``/labels."""
    if split not in SPLITS:
        raise SystemExit(f"error: split={split} is not one of {SPLITS}")
    data = dict(module.hparams.data)
    root = prepared_dataset(module, data_dir)
    manifest = read_manifest(root)
    if loader_settings(data)["layout"] == "per_stream":
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
    module = load_module(cfg.ckpt_path)
    weights = OmegaConf.to_container(cfg.score_weights) if cfg.score_weights is not None else None
    start = time.perf_counter()
    if cfg.candidates:
        cols = OmegaConf.to_container(cfg.columns) if cfg.columns is not None else None
        raw, cands = read_candidates(cfg.candidates, cols, cfg.ts_unit)
        preds = score_candidates(module, cands, cfg.batch_size, cfg.data_dir)
        frame = pl.concat([raw, output_frame(module, preds, weights)], how="horizontal")
    else:
        info, preds = score_split(module, cfg.split, cfg.batch_size, cfg.data_dir)
        frame = pl.concat([info, output_frame(module, preds, weights)], how="horizontal")
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(out)
    print(f"scored {frame.height:,} events in {time.perf_counter() - start:.1f}s -> {out}")
    print(frame.head(5))
    return out


@hydra.main(config_path=CONF_DIR, config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with cli_errors():  # error: ... and exit 2 (bad candidates, config, checkpoint or data)
        predict(cfg)


if __name__ == "__main__":
    main()
