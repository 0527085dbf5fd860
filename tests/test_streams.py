"""Per-stream layout and MoSE: chunking, leakage, next-step windows, causality, grouped LSTMs, training."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from data_prep.dataset import read_manifest
from data_prep.errors import ConfigError
from data_prep.paths import CONF_DIR
from data_prep.options import PrepOptions
from data_prep.prepare import prepare
from data_prep.schema import EventSpec, TaskSpec
from data_prep.sources import sequential
from data_prep.sequences import WINDOWS
from data_prep.split import SPLITS
from mose.config_checks import check_gate_windows
from mose.data.datasets import StreamSplit
from mose.models.mose import GATES, MoSE
from mose.nn.embeddings import InputSpec
from mose.nn.grouped_lstm import GroupedLSTM, LSTMList
from mose.nn.sequence import GroupedSequence

STREAM_LEN, OVERLAP = 6, 2
BINARY = ["click", "like"]
SPEC = EventSpec(tasks=(TaskSpec("click"), TaskSpec("like"), TaskSpec("dwell", "regression")), numeric=("eid",))


def hand_made_events(seed: int = 0) -> pl.DataFrame:
    """Users of 1 to 29 events, timestamps drawn from few values (many ties), rows shuffled.

    User 99 has three events sharing a timestamp whose labels differ from every earlier one, so
    a ``shift`` over the user (which leaks same-timestamp labels) would be caught.
    ``eid`` (a numeric feature) is the event's row in this frame, so prepared rows and batch
    steps can be traced back to their event.
    """
    rng = np.random.default_rng(seed)
    sizes = [29, 1, 17, 3, 12, 24]
    user = np.repeat(np.arange(len(sizes)) * 7 + 3, sizes)
    n = len(user)
    ts = 1_000 * rng.integers(0, 12, n)  # ~2 events per timestamp per user
    labels = rng.integers(0, 2, (n, 2))
    random_users = pl.DataFrame({
        "user_id": user, "item_id": rng.integers(0, 9, n), "ts": ts, "click": labels[:, 0], "like": labels[:, 1],
        "dwell": rng.random(n) * 10,
    })
    ties = pl.DataFrame({
        "user_id": [99] * 5, "item_id": [1, 2, 3, 4, 5], "ts": [0, 5_000, 5_000, 5_000, 11_000],
        "click": [0, 1, 1, 0, 1], "like": [0, 1, 0, 1, 1], "dwell": [1.0, 2.0, 3.0, 4.0, 5.0],
    })
    df = pl.concat([random_users, ties]).sample(fraction=1.0, shuffle=True, seed=seed)
    return df.with_row_index("eid").with_columns(pl.col("eid").cast(pl.Float64))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[pl.DataFrame, object, np.ndarray]:
    """Events, prepared folder and the event id of every prepared row."""
    events = hand_made_events()
    root = prepare(events, SPEC, tmp_path_factory.mktemp("streams") / "data", PrepOptions(history_len=4, val_frac=0.2,
                   test_frac=0.2, stream_len=STREAM_LEN, stream_overlap=OVERLAP, min_count=1))
    return events, root, event_ids(np.load(root / "num.npy"), read_manifest(root))


def event_ids(num: np.ndarray, manifest: dict) -> np.ndarray:
    """Undo the standardisation of the ``eid`` feature: ``num[..., 0] -> event row``."""
    stats = manifest["numeric_stats"]["eid"]
    return np.rint(num[..., 0].astype(np.float64) * stats["std"] + stats["mean"]).astype(np.int64)


def expected_prev_labels(events: pl.DataFrame) -> dict[int, set[tuple[int, ...]]]:
    """For each event: the label tuples of the user's events at the latest strictly earlier timestamp."""
    out = {}
    for (_,), g in events.group_by(["user_id"]):
        for eid, ts in g.select(pl.col("eid").cast(pl.Int64), "ts").iter_rows():
            before = g.filter(pl.col("ts") < ts)
            if before.height == 0:
                out[eid] = {(0,) * len(BINARY)}
            else:
                last = before.filter(pl.col("ts") == before["ts"].max())
                out[eid] = set(last.select(BINARY).iter_rows())
    return out


def test_every_event_scored_in_exactly_one_chunk(prepared):
    events, root, _ = prepared
    rows, scored = np.load(root / "stream_rows.npy"), np.load(root / "stream_scored.npy")
    assert rows.shape[1] == STREAM_LEN
    assert (rows[scored] >= 0).all()
    np.testing.assert_array_equal(np.bincount(rows[scored], minlength=events.height), 1)
    assert len(rows) > 10  # several users longer than several chunks


def test_chunks_are_one_users_events_in_time_order(prepared):
    events, root, eid = prepared
    rows = np.load(root / "stream_rows.npy")
    ts, user = events["ts"].to_numpy()[eid], events["user_id"].to_numpy()[eid]
    for chunk in rows:
        r = chunk[chunk >= 0]
        assert (chunk[: len(r)] >= 0).all(), "padding is on the right"
        np.testing.assert_array_equal(np.diff(r), 1)  # consecutive rows of the user-sorted events
        assert len(set(user[r])) == 1
        assert (np.diff(ts[r]) >= 0).all()


def test_prev_label_is_latest_strictly_earlier_event(prepared):
    events, root, eid = prepared
    prev = np.load(root / "prev_label.npy")
    expected = expected_prev_labels(events)
    for row, e in enumerate(eid):
        assert tuple(int(v) for v in prev[row]) in expected[e], f"event {e}"


def _split_of(events: pl.DataFrame, root) -> np.ndarray:
    cuts = read_manifest(root)["cuts"]
    ts = events["ts"].to_numpy()
    return np.where(ts < cuts["val_start"], 0, np.where(ts < cuts["test_start"], 1, 2))


@pytest.mark.parametrize("windows", ["chunks", "next_step"])
@pytest.mark.parametrize("split", SPLITS)
def test_stream_batches_never_see_own_or_later_labels(prepared, split, windows):
    """Every valid step's prev_label comes from an event with a strictly smaller timestamp."""
    events, root, _ = prepared
    manifest = read_manifest(root)
    ds = StreamSplit(root, split, windows)
    batch = ds.__getitems__(list(range(len(ds))))
    eid = event_ids(batch["num"].numpy(), manifest)
    valid, mask = batch["valid"].numpy(), batch["mask"].numpy()
    labels = events.select(BINARY).to_numpy()
    expected = expected_prev_labels(events)
    prev = batch["prev_label"].numpy()
    for b, t in zip(*np.nonzero(valid)):
        assert tuple(int(v) for v in prev[b, t]) in expected[eid[b, t]], f"{split}/{windows} step {b},{t}"
    # the labels served as targets are the scored events' own
    np.testing.assert_allclose(batch["labels"].numpy()[mask][:, :2], labels[eid[mask]])
    # only this split's events are scored, each exactly once
    in_split = _split_of(events, root) == SPLITS.index(split)
    np.testing.assert_array_equal(np.bincount(eid[mask], minlength=events.height), in_split.astype(int))
    assert (valid | ~mask).all()


def test_next_step_windows(prepared):
    events, root, _ = prepared
    manifest = read_manifest(root)
    ts, user = events["ts"].to_numpy(), events["user_id"].to_numpy()
    order = {u: g["eid"].cast(pl.Int64).to_list()
             for (u,), g in events.sort("user_id", "ts", "eid").group_by(["user_id"], maintain_order=True)}
    for split in SPLITS:
        ds = StreamSplit(root, split, "next_step")
        batch = ds.__getitems__(list(range(len(ds))))
        valid, mask = batch["valid"].numpy(), batch["mask"].numpy()
        eid = event_ids(batch["num"].numpy(), manifest)
        assert valid.shape[1] <= STREAM_LEN
        n_valid = valid.sum(1)
        np.testing.assert_array_equal(valid, np.arange(valid.shape[1])[None, :] < n_valid[:, None])  # right-padded
        np.testing.assert_array_equal(mask.sum(1), 1)
        np.testing.assert_array_equal(np.argmax(mask, 1), n_valid - 1)  # the last real step is scored
        for b in range(len(valid)):
            steps = eid[b, : n_valid[b]]
            assert len(set(user[steps])) == 1
            assert (np.diff(ts[steps]) >= 0).all()
            # the user's last (up to) STREAM_LEN events up to the scored one, ties in input order
            history = order[user[steps[-1]]]
            end = history.index(steps[-1]) + 1
            assert steps.tolist() == history[max(0, end - STREAM_LEN): end]


def test_sequential_source():
    df = sequential.generate(n_users=50, n_steps=40, n_items=30, seed=3)
    assert df.schema == pl.Schema({
        "user_id": pl.Int64, "item_id": pl.Int64, "ts": pl.Int64, "f0": pl.Float64, "f1": pl.Float64,
        "f2": pl.Float64, "f3": pl.Float64, "click": pl.Int8, "convert": pl.Int8, "dwell": pl.Float64,
    })
    assert df.height == 50 * 40 and df["ts"].is_sorted()
    per_user = df.sort("user_id", "ts").group_by("user_id").agg(pl.col("ts").diff().min().alias("gap"), pl.len())
    assert (per_user["gap"] > 0).all() and (per_user["len"] == 40).all()  # strictly increasing within user
    assert df["dwell"].min() >= 0 and set(df["click"].unique()) == {0, 1}
    assert df.equals(sequential.generate(n_users=50, n_steps=40, n_items=30, seed=3))
    assert not df.equals(sequential.generate(n_users=50, n_steps=40, n_items=30, seed=4))
    state = sequential.generate(n_users=50, n_steps=40, seed=3, return_state=True).sort("user_id", "ts")
    regime, age = state["regime"].to_numpy().reshape(50, 40), state["age"].to_numpy().reshape(50, 40)
    switched = regime[:, 1:] != regime[:, :-1]
    np.testing.assert_array_equal(age[:, 1:][switched], 0)
    np.testing.assert_array_equal(age[:, 1:][~switched], age[:, :-1][~switched] + 1)


def tiny_spec() -> InputSpec:
    return InputSpec(n_users=7, n_items=11, cat_vocab=(5,), n_numeric=3, history_len=4, n_history_labels=2,
                     n_prior_buckets=16)


def random_batch(spec: InputSpec, b: int, t: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "user": torch.randint(0, spec.n_users, (b, t), generator=g),
        "item": torch.randint(0, spec.n_items, (b, t), generator=g),
        "prior_bucket": torch.randint(0, spec.n_prior_buckets, (b, t), generator=g),
        "cat": torch.randint(0, spec.cat_vocab[0], (b, t, 1), generator=g),
        "num": torch.randn(b, t, spec.n_numeric, generator=g),
        "prev_label": torch.randint(0, 2, (b, t, spec.n_history_labels), generator=g).to(torch.int8),
        "valid": torch.ones(b, t, dtype=torch.bool),
    }


@pytest.mark.parametrize("cell", ["lstm", "ff"])
def test_mose_step_gates_are_causal(cell):
    torch.manual_seed(0)
    spec, tasks = tiny_spec(), ["a", "b", "c"]
    model = MoSE(spec, tasks, embed_dim=4, cell=cell, bottom_hidden=8, bottom_layers=2, n_experts=3,
                 expert_hidden=6, expert_layers=2, tower_hidden=5, gate="step").eval()
    batch = random_batch(spec, 4, 9, seed=1)
    noise = random_batch(spec, 4, 9, seed=2)
    with torch.no_grad():
        base = model(batch)
        for t in range(9):
            perturbed = {k: v.clone() for k, v in batch.items()}
            for k in ("user", "item", "prior_bucket", "cat", "num", "prev_label"):
                perturbed[k][:, t + 1:] = noise[k][:, t + 1:]
            out = model(perturbed)
            for task in tasks:
                torch.testing.assert_close(out[task][:, : t + 1], base[task][:, : t + 1])
                if t < 8:
                    assert not torch.allclose(out[task][:, t + 1:], base[task][:, t + 1:])


@pytest.mark.parametrize("gate", ["step", "window"])
def test_mose_gate_weights_sum_to_one(gate):
    spec = tiny_spec()
    model = MoSE(spec, ["a", "b"], embed_dim=4, bottom_hidden=8, n_experts=5, expert_hidden=6, tower_hidden=4,
                 gate=gate)
    out = model(random_batch(spec, 3, 7, seed=0))
    gates = out["aux"]["gates"]
    assert gates.shape == (3, 7, 2, 5)
    assert (gates >= 0).all()
    torch.testing.assert_close(gates.sum(-1), torch.ones(3, 7, 2))
    assert out["a"].shape == (3, 7)


@pytest.mark.parametrize("shared_input", [True, False])
def test_grouped_lstm_equals_separate_lstms(shared_input):
    torch.manual_seed(0)
    groups, in_dim, hidden, layers = 3, 5, 4, 2
    grouped = GroupedLSTM(groups, in_dim, hidden, layers, shared_input=shared_input)
    x = torch.randn(2, 7, in_dim) if shared_input else torch.randn(2, 7, groups, in_dim)
    out = grouped(x)
    assert out.shape == (2, 7, groups, hidden)
    flat = grouped.flat_weights()
    gh = groups * hidden
    separate = LSTMList(groups, in_dim, hidden, layers, shared_input=shared_input)
    for g, lstm in enumerate(separate.lstms):
        rows = torch.cat([torch.arange(k * gh + g * hidden, k * gh + (g + 1) * hidden) for k in range(4)])
        for layer in range(layers):
            w_ih, w_hh, b_ih, b_hh = flat[4 * layer: 4 * layer + 4]
            if layer == 0:
                cols = slice(None) if shared_input else slice(g * in_dim, (g + 1) * in_dim)
            else:
                cols = slice(g * hidden, (g + 1) * hidden)
            with torch.no_grad():
                getattr(lstm, f"weight_ih_l{layer}").copy_(w_ih[rows][:, cols])
                getattr(lstm, f"weight_hh_l{layer}").copy_(w_hh[rows][:, g * hidden:(g + 1) * hidden])
                getattr(lstm, f"bias_ih_l{layer}").copy_(b_ih[rows])
                getattr(lstm, f"bias_hh_l{layer}").copy_(b_hh[rows])
    torch.testing.assert_close(out, separate(x), rtol=1e-5, atol=1e-6)


def test_sequence_picks_the_fused_kernel_for_narrow_layers():
    assert isinstance(GroupedSequence(4, 8, 16).net, GroupedLSTM)
    assert isinstance(GroupedSequence(4, 8, 32).net, LSTMList)
    assert isinstance(GroupedSequence(4, 8, 32, fused=True).net, GroupedLSTM)


def test_mose_learns_the_sequential_benchmark(tmp_path):
    """A short MoSE training through mose.train on (an easy, tiny version of) the sequential data."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from data_prep.paths import CONF_DIR
    from mose.train import train

    torch.set_num_threads(2)
    overrides = [
        "data=sequential", "model=mose", f"paths.data_dir={tmp_path / 'data'}",
        "data.source.n_users=200", "data.source.n_steps=32", "data.source.n_items=10", "data.source.noise=0.3",
        "data.prep.stream_len=16", "data.prep.stream_overlap=4", "data.batch_size=16",
        "optim.lr=2e-2", "trainer.max_epochs=3", "trainer.enable_progress_bar=false",
        "callbacks.early_stopping.patience=10",
    ]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path / "run")
        cfg.hydra.job.num = 0
    (tmp_path / "run").mkdir()
    HydraConfig.instance().set_config(cfg)
    test = train(cfg)
    assert test["click/auc"] > 0.6, test
    assert np.isfinite(test["dwell/mse"])


def test_stream_predictions_are_the_scored_steps(prepared):
    """``predict_step`` (mose-predict, mose-cli predict) keeps only the ``mask``-ed steps: ``(M, T)``."""
    from dataclasses import asdict

    from mose.module import MultiTaskModule

    _, root, _ = prepared
    manifest = read_manifest(root)
    torch.manual_seed(0)
    module = MultiTaskModule(model={"_target_": "mose.models.mose.MoSE", "embed_dim": 4, "bottom_hidden": 8,
                                    "n_experts": 2, "expert_hidden": 4, "tower_hidden": 4},
                             input_spec=asdict(InputSpec.from_manifest(manifest)), tasks=manifest["spec"]["tasks"],
                             task_stats=manifest["task_stats"]).eval()
    batch = StreamSplit(root, "test").__getitems__([0, 1, 2])
    with torch.no_grad():
        preds = module.predict_step(batch)
        out = module(batch)
    mask = batch["mask"]
    assert preds.shape == (int(mask.sum()), len(module.tasks))
    per_step = torch.stack([out[t] for t in module.tasks], -1)  # (B, S, T): the raw output is per step
    assert per_step.shape[:2] == mask.shape
    assert torch.allclose(preds, module.predictions(per_step[mask]))


STREAM_MODELS = sorted(p.stem for p in (Path(CONF_DIR) / "model").glob("*.yaml")
                       if p.stem == "mose" or p.stem.startswith("stream_"))


def gate_window_pairs(refused: bool = False) -> list[tuple[str, str | None, str]]:
    """``(model config, model.gate or None, data.windows)`` for every per-stream model config and every
    gate / window pair ``check_gate_windows`` allows (``refused``: the pairs it refuses)."""
    out = []
    for name in STREAM_MODELS:
        model = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "model" / f"{name}.yaml")["model"])
        for gate in GATES if "gate" in model else (None,):
            for windows in WINDOWS:
                try:
                    check_gate_windows({"gate": gate}, {"windows": windows})
                    ok = True
                except ConfigError:
                    ok = False
                if ok != refused:
                    out.append((name, gate, windows))
    return out


def later_rows_perturbed(root: Path, dest: Path, seed: int = 0) -> np.ndarray:
    """A copy of the prepared folder ``root`` at ``dest`` in which, for every user, every event after a
    random cut has its features (item, categorical, numeric) replaced and its labels and ``prev_label``
    flipped; returns each row's cut (the user's last unchanged row)."""
    shutil.copytree(root, dest)
    rng = np.random.default_rng(seed)
    offsets = np.load(root / "user_offsets.npy")
    sizes = np.diff(offsets)
    cut = np.repeat(offsets[:-1] + (rng.random(len(sizes)) * sizes).astype(np.int64), sizes)
    later = np.arange(offsets[-1]) > cut
    for name in ("item", "cat", "num", "labels", "prev_label"):
        arr = np.load(root / f"{name}.npy")
        if name in ("labels", "prev_label"):
            new = (1 - arr) if name == "prev_label" else arr + 1
        elif name == "num":
            new = rng.standard_normal(arr.shape).astype(arr.dtype)
        else:
            new = rng.integers(1, max(int(arr.max(initial=1)), 1) + 1, arr.shape).astype(arr.dtype)
        arr[later] = new[later]
        np.save(dest / f"{name}.npy", arr)
    return cut


@pytest.mark.parametrize("name, gate, windows", gate_window_pairs())
def test_later_steps_never_move_earlier_logits(prepared, tmp_path, name, gate, windows):
    """Every per-stream model config and every allowed gate / window pair, on batches served from the
    prepared data: flipping the labels and features of a user's events after step t (and the labels
    later steps carry in ``prev_label``) leaves the logits of the steps <= t exactly unchanged (chunks:
    every valid step; next_step: the scored step of each window, the only one it predicts)."""
    assert_later_steps_never_move_earlier_logits(prepared[1], tmp_path, name, gate, windows)


@pytest.mark.parametrize("name, gate, windows", gate_window_pairs(refused=True))
def test_the_refused_pair_would_leak(prepared, tmp_path, name, gate, windows):
    """The pairs ``check_gate_windows`` refuses (the window gate over chunks) do leak: the check above fails."""
    with pytest.raises(AssertionError, match="earlier logits moved"):
        assert_later_steps_never_move_earlier_logits(prepared[1], tmp_path, name, gate, windows)


def assert_later_steps_never_move_earlier_logits(root, tmp_path, name, gate, windows):
    torch.manual_seed(0)
    cut = later_rows_perturbed(root, tmp_path / "perturbed")
    conf = OmegaConf.load(Path(CONF_DIR) / "model" / f"{name}.yaml")["model"]
    if gate is not None:
        conf.gate = gate
    spec = InputSpec.from_manifest(read_manifest(root))
    model = instantiate(conf, input_spec=spec, tasks=["click", "like", "dwell"]).eval()
    moved_later = False
    for split in SPLITS:
        base_ds, new_ds = StreamSplit(root, split, windows), StreamSplit(tmp_path / "perturbed", split, windows)
        positions = list(range(len(base_ds)))
        rows, mask = base_ds._rows(np.asarray(positions))
        rows_flat = rows.clip(0)
        earlier = (rows >= 0) & (rows <= cut[rows_flat])
        keep = earlier if windows == "chunks" else earlier & mask
        with torch.no_grad():
            base, new = model(base_ds.__getitems__(positions)), model(new_ds.__getitems__(positions))
        for task in ("click", "like", "dwell"):
            a, b = base[task].numpy(), new[task].numpy()
            assert np.array_equal(a[keep], b[keep]), f"{name} gate={gate} windows={windows} {split}: earlier logits moved"
            moved_later |= not np.allclose(a[(rows >= 0) & ~earlier], b[(rows >= 0) & ~earlier])
    assert moved_later, "the perturbation changed no later logit: the test would not see a leak"
