"""data.prep.carry_state: batch lanes of each user's chunks in time order, LSTM states carried across chunks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from data_prep.dataset import read_manifest
from data_prep.options import PrepOptions
from data_prep.paths import CONF_DIR
from data_prep.prepare import prepare
from data_prep.split import SPLITS
from mose.config_checks import ConfigError, check_data
from mose.data.datasets import StreamSplit
from mose.data.lanes import LaneBatchSampler, lane_batches
from mose.nn.carry import carry_states
from mose.nn.embeddings import InputSpec
from test_streams import SPEC, hand_made_events

TASKS = ["click", "like", "dwell"]


@pytest.fixture(scope="module")
def carried(tmp_path_factory):
    """The hand-made log of test_streams (users of 1 to 29 events, timestamp ties) in chunks of 4 steps."""
    return prepare(hand_made_events(), SPEC, tmp_path_factory.mktemp("carry") / "data",
                   PrepOptions(history_len=4, val_frac=0.2, test_frac=0.2, stream_len=4, stream_overlap=2,
                               min_count=1, carry_state=True))


def test_lane_batches_by_hand():
    # users A (chunks 0-2), B (3), C (4-5) dealt round-robin longest first (A, C, B): 2 lanes A, B | C
    first = np.array([1, 0, 0, 1, 1, 0], dtype=bool)
    np.testing.assert_array_equal(lane_batches(first, 2), [[0, 4], [1, 5], [2, -1], [3, -1]])
    np.testing.assert_array_equal(lane_batches(first, 4), [[0, 4, 3, -1], [1, 5, -1, -1], [2, -1, -1, -1]])


def test_lanes_serve_each_users_chunks_in_order_and_shuffle_between_epochs():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 9, 40)
    first = np.zeros(sizes.sum(), dtype=bool)
    first[np.cumsum(sizes) - sizes] = True
    user = np.cumsum(first) - 1
    sampler = LaneBatchSampler(first, lanes=6, shuffle=True, seed=0)
    epochs = [np.array(list(sampler)) for _ in range(2)]
    assert len(epochs[0]) == len(epochs[1]) == len(sampler)  # Lightning counts an epoch's batches once
    for index in epochs:
        served = index[index >= 0]
        np.testing.assert_array_equal(np.sort(served), np.arange(len(first)))  # every chunk once
        for lane in index.T:
            chunks = lane[lane >= 0]
            assert (lane[: len(chunks)] >= 0).all()  # a lane's empty slots are at its end
            np.testing.assert_array_equal(np.diff(chunks)[np.diff(user[chunks]) == 0], 1)  # a user's chunks in order
            assert len(set(user[chunks])) == len(np.unique(user[chunks][np.r_[True, np.diff(user[chunks]) != 0]]))
    lanes_of = [{int(u): int(np.nonzero((user[np.clip(i, 0, None)] == u) & (i >= 0))[1][0]) for u in range(40)}
                for i in epochs]
    assert lanes_of[0] != lanes_of[1]  # users are dealt anew each epoch


def test_carried_splits_start_at_each_users_first_chunk(carried):
    rows_all = np.load(carried / "stream_rows.npy")
    assert (rows_all[:, :-1] + 1 == rows_all[:, 1:])[rows_all[:, 1:] >= 0].all()  # no overlap: the state is the context
    split_of = np.load(carried / "split.npy")
    for split in SPLITS:
        ds = StreamSplit(carried, split, carry_state=True)
        offsets = np.load(carried / "user_offsets.npy")
        starts = ds.rows[ds.first, 0]
        assert np.isin(starts, offsets).all()  # every user served from its first event
        scored = ds.rows[ds.mask]
        np.testing.assert_array_equal(np.sort(scored), np.flatnonzero(split_of == SPLITS.index(split)))


def one_pass_batch(ds: StreamSplit, rows: np.ndarray) -> dict[str, torch.Tensor]:
    """The user's whole stream ``rows`` as one window ``(1, n)``."""
    out = {name: torch.from_numpy(np.asarray(arr[rows]))[None] for name, arr in ds.arrays.items()}
    out["valid"] = torch.ones(1, len(rows), dtype=torch.bool)
    return out


@pytest.mark.parametrize("name, sizes", [
    ("mose", {"bottom_layers": 2, "n_experts": 4, "expert_hidden": 32}),  # fused bottom, separate expert LSTMs
    ("stream_shared_bottom_lstm", {"bottom_layers": 2}),
    ("stream_single_task_lstm", {"hidden": 8}),
])
def test_carried_chunks_equal_one_pass_over_the_whole_stream(carried, name, sizes):
    """Eval mode, same weights: every chunk's logits (the user's last one included) with the carried state
    equal those of one LSTM pass over the user's whole stream; without carrying, the later chunks differ."""
    torch.manual_seed(0)
    conf = OmegaConf.load(f"{CONF_DIR}/model/{name}.yaml")["model"]
    conf.update(sizes)
    model = instantiate(conf, input_spec=InputSpec.from_manifest(read_manifest(carried)), tasks=TASKS).eval()
    ds = StreamSplit(carried, "test", carry_state=True)
    carried_logits, fresh_logits = {}, {}
    index = LaneBatchSampler(ds.first, lanes=3, shuffle=True, seed=1).batches()
    with torch.no_grad():
        for store, carry in ((carried_logits, True), (fresh_logits, False)):
            for positions in index:
                batch = ds.__getitems__(positions)
                rows = ds._rows(positions)[0]
                carry_states(model, batch["reset"] if carry else None)
                out = model(batch)
                for b, t in zip(*np.nonzero(rows >= 0)):
                    store[int(rows[b, t])] = torch.stack([out[k][b, t] for k in TASKS])
        offsets = np.load(carried / "user_offsets.npy")
        differs = False
        for user in range(len(offsets) - 1):
            rows = np.arange(offsets[user], offsets[user + 1])
            if rows[0] not in carried_logits:
                continue
            served = rows[np.isin(rows, list(carried_logits))]
            carry_states(model, None)
            out = model(one_pass_batch(ds, served))
            whole = torch.stack([out[k][0] for k in TASKS], dim=-1)  # (n, T)
            last_chunk = ds.rows[(ds.rows[:, 0] >= offsets[user]) & (ds.rows[:, 0] < offsets[user + 1])][-1]
            for i, row in enumerate(served):
                torch.testing.assert_close(carried_logits[int(row)], whole[i], rtol=1e-5, atol=1e-5)
                differs |= not torch.allclose(fresh_logits[int(row)], whole[i], atol=1e-4)
            assert set(last_chunk[last_chunk >= 0]) <= set(served.tolist())
    assert differs, "the carried state changed nothing: the test would not see a truncated memory"


def test_carry_state_needs_chunks():
    with pytest.raises(ConfigError, match="data.prep.carry_state=true with data.windows=next_step"):
        check_data({"tasks": {"click": {"kind": "binary"}}, "prep": {"carry_state": True}, "windows": "next_step"})


def test_mose_train_with_carried_states(tmp_path):
    """A real (short) training through mose.train with carried states: every test event scored once, and
    MoSE beats the train mean on the short-memory task of data=mose_synthetic."""
    from conftest import compose_with_output, prepared_dir

    from mose.train import train

    torch.set_num_threads(1)
    cfg = compose_with_output("train", [
        "data=mose_synthetic", "model=mose", f"paths.data_dir={tmp_path / 'data'}", "data.source.n_users=64",
        "data.source.n_steps=96", "data.prep.stream_len=16", "data.prep.carry_state=true", "data.batch_size=16",
        "+size.units=16", "optim.lr=1e-2", "trainer.max_epochs=3", "trainer.enable_progress_bar=false",
        "threads=1"], tmp_path / "run")
    test = train(cfg)
    root = prepared_dir(tmp_path / "data", "mose_synthetic")
    assert read_manifest(root)["carry_state"] and read_manifest(root)["stream_overlap"] == 0
    n_test = int((np.load(root / "split.npy") == SPLITS.index("test")).sum())
    assert test["cohort/seen_in_train=seen/n_events"] == n_test
    assert test["y0/mse"] < 0.9, test  # the train mean scores ~1.09 (unit-variance signal + 0.3 noise)
