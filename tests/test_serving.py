"""Serving: ``mose-predict`` encodes raw candidates like training did; exported models score like the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from conftest import compose_with_output as compose_run
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import open_dict

from data_prep.dataset import read_manifest
from data_prep.schema import TS, USER, SchemaError

TINY = ["data.source.n_events=5000", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1", "model.embed_dim=8"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A 1-epoch MMoE on 5000 synthetic events read from a Parquet log (~5 s)."""
    from mose.train import train

    tmp = tmp_path_factory.mktemp("serving")
    cfg = compose_run("train", [*TINY, f"paths.data_dir={tmp / 'data'}"], tmp / "run")
    raw = tmp / "raw" / "events.parquet"
    raw.parent.mkdir()
    instantiate(cfg.data.source).write_parquet(raw)
    with open_dict(cfg):
        cfg.data.source = {"_target_": "data_prep.sources.events.load", "path": str(raw)}
    train(cfg)
    yield Path(json.loads((tmp / "run" / "metrics.json").read_text())["checkpoint"])
    GlobalHydra.instance().clear()


def raw_split(module, split_start: str = "test_start") -> pl.DataFrame:
    """The raw events of the checkpoint's test split, as candidates, in prepared row order."""
    data = dict(module.hparams.data)
    cuts = read_manifest(data["dir"])["cuts"]
    events = instantiate(data["source"]).with_row_index("_row").sort([USER, TS, "_row"]).drop("_row")
    return events.filter(pl.col(TS) >= cuts[split_start])


def test_candidates_are_encoded_like_training_with_the_raw_log_gone(checkpoint, tmp_path):
    """Raw test events scored as candidates == the prepared test split scored (same vocab, history, features),
    from the prepared folder alone: the raw training log is moved away first."""
    from mose.predict import load_module, score_candidates, score_split

    module = load_module(checkpoint)
    labels_dropped = raw_split(module).drop("click", "like", "watch_time")
    raw = Path(module.hparams.data["source"]["path"])
    moved = raw.rename(tmp_path / "elsewhere.parquet")
    try:
        _, from_prepared = score_split(module, "test")
        from_raw = score_candidates(module, labels_dropped)
    finally:
        moved.rename(raw)
    assert from_raw.shape == from_prepared.shape == (len(labels_dropped), 3)
    torch.testing.assert_close(torch.from_numpy(from_raw), torch.from_numpy(from_prepared))


def test_eval_on_a_later_log_transformed_with_the_training_fit(checkpoint, tmp_path):
    """``mose-prep fit_from=``: a later log (here: the test events, shifted a day) transformed with the
    checkpoint's fit is all test split, and ``mose-eval data_dir=`` scores every event of it."""
    from data_prep.build import ensure_prepared
    from mose.eval import evaluate
    from mose.predict import load_module

    data = dict(load_module(checkpoint).hparams.data)
    later = raw_split(load_module(checkpoint)).with_columns(pl.col(TS) + 86_400_000)
    later.write_parquet(tmp_path / "day2.parquet")
    day2 = {**data, "dir": str(tmp_path / "day2"), "source": {**data["source"], "path": str(tmp_path / "day2.parquet")}}
    with pytest.raises(SchemaError, match="data.dir"):
        ensure_prepared(data, fit_from=data["dir"])  # would overwrite the fitted dataset
    root = ensure_prepared(day2, fit_from=data["dir"])
    m = read_manifest(root)
    assert m["splits"] == {"train": 0, "val": 0, "test": later.height} and m["fit"]["from"] == data["dir"]
    assert m["fingerprint"] == read_manifest(data["dir"])["fingerprint"]
    cfg = compose_run("eval", [f"ckpt_path={checkpoint}", f"data_dir={root}"], tmp_path / "eval")
    metrics = evaluate(cfg)
    assert 0 < metrics["click/auc"] < 1 and m["n_events"] == later.height


def test_predict_warns_when_most_candidates_are_unknown(checkpoint, caplog):
    """Candidates whose items the model never saw: counted, and warned about above warn_unknown_share."""
    import logging

    from mose.predict import load_module, score_candidates

    module = load_module(checkpoint)
    cands = raw_split(module).drop("click", "like", "watch_time").head(200)
    unseen = cands.with_columns(pl.when(pl.int_range(pl.len()) < 150).then(pl.col("item_id") + 10**9)
                                .otherwise(pl.col("item_id")).alias("item_id"))  # 75% unseen items
    known = pl.read_parquet(Path(module.hparams.data["dir"]) / "fit" / "vocab" / "item_id.parquet")["value"]
    share = 100 * (150 + int((~cands["item_id"].tail(50).is_in(known.implode())).sum())) / 200  # by hand
    with caplog.at_level(logging.INFO, logger="mose.predict"):
        score_candidates(module, unseen, warn_unknown_share=0.5)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith(f"candidates: {share:.1f}% of the events have an unknown item") for m in warned), warned
    assert any(f"unknown items {share:.1f}% of 200 events" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mose.predict"):
        score_candidates(module, unseen, warn_unknown_share=1.0)  # a share is never above 1: no warning
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_ranking_score_is_weighted_product():
    from data_prep.errors import ConfigError
    from mose.predict import ranking_score

    p = {"click": np.array([0.5, 0.2]), "like": np.array([0.25, 1.0])}
    np.testing.assert_allclose(ranking_score(p, {"click": 1.0, "like": 0.5}), [0.5 * 0.5, 0.2 * 1.0])
    with pytest.raises(ConfigError, match="nope"):
        ranking_score(p, {"nope": 1.0})


def test_predict_writes_parquet(checkpoint, tmp_path):
    from mose.predict import load_module, predict

    cands = raw_split(load_module(checkpoint)).head(300).rename({"user_id": "uid"}).drop("click", "like")
    cands.write_parquet(tmp_path / "cands.parquet")
    cfg = compose_run("predict", [f"ckpt_path={checkpoint}", f"candidates={tmp_path / 'cands.parquet'}",
                                  "columns={user_id: uid}", "score_weights={click: 1.0, like: 0.5}"],
                      tmp_path / "predict")
    out = pl.read_parquet(predict(cfg))
    assert out.height == 300 and out["uid"].to_list() == cands["uid"].to_list()  # input order kept
    assert {"p_click", "p_like", "pred_watch_time", "score"} <= set(out.columns)
    assert out["p_click"].is_between(0, 1).all() and (out["pred_watch_time"] >= -1e-6).all()
    np.testing.assert_allclose(out["score"], out["p_click"] * out["p_like"] ** 0.5, rtol=1e-5)

    # a history file of events the prepared log already has: all dropped as duplicates, the same scores
    raw_split(load_module(checkpoint), "val_start").rename({"user_id": "uid"}).write_parquet(tmp_path / "recent.parquet")
    cfg = compose_run("predict", [f"ckpt_path={checkpoint}", f"candidates={tmp_path / 'cands.parquet'}",
                                  "columns={user_id: uid}", "score_weights={click: 1.0, like: 0.5}",
                                  f"history={tmp_path / 'recent.parquet'}"], tmp_path / "predict_history")
    np.testing.assert_array_equal(pl.read_parquet(predict(cfg))["score"], out["score"])

    cfg = compose_run("predict", [f"ckpt_path={checkpoint}", "split=val"], tmp_path / "predict_val")
    out = pl.read_parquet(predict(cfg))
    assert {"row", "label_click", "p_click", "score"} <= set(out.columns)
    np.testing.assert_allclose(out["score"], out["p_click"] * out["p_like"], rtol=1e-5)


def test_predict_names_missing_columns(checkpoint):
    from data_prep.schema import SchemaError
    from mose.predict import load_module, score_candidates

    module = load_module(checkpoint)
    with pytest.raises(SchemaError, match="position"):
        score_candidates(module, raw_split(module).drop("position"))


def _checkpoint_predictions(module, batch) -> torch.Tensor:
    with torch.no_grad():
        out = module.model(batch)
        return module.predictions(torch.stack([out[t] for t in module.tasks], -1).float())


def test_torchscript_export_gives_checkpoint_scores(checkpoint, tmp_path):
    from mose.export import example_batch, export, model_fields
    from mose.predict import load_module

    path = export(checkpoint, tmp_path / "model.pt", "torchscript", batch_size=32)
    meta = json.loads(Path(f"{path}.json").read_text())
    module = load_module(checkpoint)
    vocab = pl.read_parquet(tmp_path / "model.pt.vocab" / "vocab" / "item_id.parquet")  # shipped beside the model
    raw = raw_split(module)
    codes = raw.join(vocab, left_on="item_id", right_on="value", how="left", maintain_order="left")["index"]
    codes = codes.fill_null(1).to_numpy()
    root = Path(module.hparams.data["dir"])
    rows = np.flatnonzero(np.load(root / "split.npy") == 2)
    np.testing.assert_array_equal(codes, np.load(root / "item.npy")[rows])  # raw ids -> the graph's indices
    batch = example_batch(module, 100, "val")  # another split and batch size than traced
    assert [i["name"] for i in meta["inputs"]] == model_fields(batch) and meta["tasks"] == module.tasks
    scripted = torch.jit.load(str(path))
    got = scripted(*[batch[f] for f in model_fields(batch)])
    torch.testing.assert_close(got, _checkpoint_predictions(module, batch))
    # the sidecar says each column's scale: watch_time (log1p target) comes out as log1p(seconds)
    assert meta["scales"] == {"click": "probability", "like": "probability", "watch_time": "log1p"}
    from mose.predict import task_outputs

    w = module.tasks.index("watch_time")
    np.testing.assert_allclose(task_outputs(module, got.numpy())["watch_time"], np.expm1(got.numpy()[:, w]))


def test_onnx_export_gives_checkpoint_scores(checkpoint, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from mose.export import example_batch, export, model_fields, onnx_input_names
    from mose.predict import load_module

    path = export(checkpoint, tmp_path / "model.onnx", "onnx", batch_size=32)
    module = load_module(checkpoint)
    batch = example_batch(module, 100, "val")
    session = ort.InferenceSession(str(path))
    fields = model_fields(batch)
    (got,) = session.run(None, {n: batch[f].numpy() for f, n in zip(fields, onnx_input_names(fields))})
    torch.testing.assert_close(torch.from_numpy(got), _checkpoint_predictions(module, batch), rtol=1e-4, atol=1e-5)


def test_tensorboard_has_pr_curves_and_hparams(checkpoint):
    """The run's TensorBoard (callbacks.test_summaries): per-task PR curves and hparams with final metrics."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = {"tensors": set(), "scalars": set()}
    for f in (checkpoint.parent.parent / "tensorboard").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(f), size_guidance={"tensors": 0})
        acc.Reload()
        for kind in tags:
            tags[kind] |= set(acc.Tags()[kind])
    assert {"test/pr/click", "test/pr/like"} <= tags["tensors"]
    assert {"test/click/auc", "test/auc_mean", "test/watch_time/mse"} <= tags["scalars"]


def test_stream_model_candidates_and_export(tmp_path):
    """MoSE (per-stream): candidates scored through windows of the user's logged events match the prepared
    next-step windows (for events without a same-timestamp predecessor), and TorchScript matches too."""
    from data_prep.dataset import read_manifest
    from mose.export import example_batch, export, model_fields
    from mose.predict import load_module, score_candidates, score_split
    from mose.train import train

    cfg = compose_run("train", [*TINY, "model=mose", "model.bottom_hidden=16", "model.expert_hidden=8",
                                f"paths.data_dir={tmp_path / 'data'}"], tmp_path / "run")
    train(cfg)
    ckpt = Path(json.loads((tmp_path / "run" / "metrics.json").read_text())["checkpoint"])
    module = load_module(ckpt)
    info, from_prepared = score_split(module, "test")
    from_raw = score_candidates(module, raw_split(module).drop("click", "like", "watch_time"))
    root = Path(module.hparams.data["dir"])
    rows = info["row"].to_numpy()
    offsets = np.load(root / "user_offsets.npy")
    first = offsets[np.searchsorted(offsets, rows, side="right") - 1]
    no_tie = np.load(root / "n_prior.npy")[rows] == rows - first  # every earlier row is strictly earlier
    assert no_tie.sum() > 100 and read_manifest(root)["layout"] == "per_event"
    torch.testing.assert_close(torch.from_numpy(from_raw[no_tie]), torch.from_numpy(from_prepared[no_tie]))

    path = export(ckpt, tmp_path / "mose.pt", batch_size=16)
    batch = example_batch(module, 40, "val")
    got = torch.jit.load(str(path))(*[batch[f] for f in model_fields(batch)])  # (B, S, T)
    torch.testing.assert_close(got, _checkpoint_predictions(module, batch))


def test_youtube_serves_with_position_missing_and_device_kept(tmp_path):
    """YouTube ranker: the exported graph takes device (in ``cat``) and ignores position; ``mose-predict``
    scores raw candidates the same way (any position gives the same score, another device another)."""
    from mose.export import example_batch, export, model_fields
    from mose.predict import load_module, score_candidates
    from mose.train import train

    cfg = compose_run("train", [*TINY, "model=youtube", "model.shared=[16]", "model.expert=[8]", "model.tower=[8]",
                                f"paths.data_dir={tmp_path / 'data'}"], tmp_path / "run")
    train(cfg)
    ckpt = Path(json.loads((tmp_path / "run" / "metrics.json").read_text())["checkpoint"])
    module = load_module(ckpt)
    names = read_manifest(module.hparams.data["dir"])["spec"]["categorical"]
    pos, dev = names.index("position"), names.index("device")
    path = export(ckpt, tmp_path / "youtube.pt", batch_size=16)
    assert "cat" in [i["name"] for i in json.loads(Path(f"{path}.json").read_text())["inputs"]]
    scripted = torch.jit.load(str(path))
    batch = example_batch(module, 100, "val")
    fields = model_fields(batch)

    def served(cat: torch.Tensor) -> torch.Tensor:
        return scripted(*[cat if f == "cat" else batch[f] for f in fields])

    got = served(batch["cat"])
    torch.testing.assert_close(got, _checkpoint_predictions(module, batch))
    other = batch["cat"].clone()
    other[:, pos] = other[:, pos].roll(1)
    assert torch.equal(served(other), got)  # position: missing at serving
    other = batch["cat"].clone()
    other[:, dev] = other[:, dev].roll(1)
    assert not torch.allclose(served(other), got)  # device: an input of the served model

    cands = raw_split(module).drop("click", "like", "watch_time").head(300)
    base = score_candidates(module, cands)
    moved = score_candidates(module, cands.with_columns((pl.col("position") + 3) % 10))
    np.testing.assert_array_equal(moved, base)
    other_device = score_candidates(module, cands.with_columns((pl.col("device") + 1) % 3))
    assert not np.allclose(other_device, base)
