"""Prepared per-event dataset: leakage-free histories, past-only counts, time split, train-only
vocabularies and statistics, manifest, atomic writes and reuse.

Expected values come from slow plain-Python references over the raw events, never from the
library's own helpers.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import CATEGORICAL, COHORTS, NUMERIC, PREP, TASKS, load

from data_prep import build
from data_prep.build import ensure_prepared
from data_prep.dataset import FORMAT_VERSION, load_fitted, read_manifest
from data_prep.errors import WriteError
from data_prep.fit import check_item_vocab
from data_prep.options import PrepOptions
from data_prep.prepare import build_arrays, prepare
from data_prep.schema import EventSpec, SchemaError, TaskSpec
from data_prep import npy_writer, sequences
from data_prep.npy_writer import NpyWriter
from data_prep.sequences import prior_bucket_expr
from data_prep.split import time_cuts
from mose.data.datasets import EventSplit

K = PREP.history_len
BINARY = ["click", "like"]


# ---------------------------------------------------------------- plain-Python references


class Reference:
    """The raw events, as Python lists, in the order the prepared rows must have: (user, ts, input row)."""

    def __init__(self, events: pl.DataFrame) -> None:
        self.cols = {c: events[c].to_list() for c in events.columns}
        n = events.height
        u, t = self.cols["user_id"], self.cols["ts"]
        self.order = sorted(range(n), key=lambda i: (u[i], t[i], i))  # prepared row r is raw event order[r]
        self.row_of = {e: r for r, e in enumerate(self.order)}
        self.by_user = defaultdict(list)
        for i in range(n):
            self.by_user[u[i]].append(i)

    def col(self, name: str) -> list:
        """Column ``name`` in prepared-row order."""
        return [self.cols[name][e] for e in self.order]

    def earlier(self, e: int) -> list[int]:
        """Raw events of ``e``'s user with a strictly smaller ts, oldest first (ties by input row)."""
        u, t = self.cols["user_id"], self.cols["ts"]
        prior = [j for j in self.by_user[u[e]] if t[j] < t[e]]
        return sorted(prior, key=lambda j: (t[j], j))

    def n_prior(self) -> list[int]:
        return [len(self.earlier(e)) for e in self.order]


@pytest.fixture(scope="module")
def ref(events) -> Reference:
    return Reference(events)


@pytest.fixture(scope="module")
def arrays(prepared) -> dict[str, np.ndarray]:
    root, manifest = prepared
    return {name: load(root, name) for name in manifest["arrays"]}


# ---------------------------------------------------------------- row order, counts, histories


def test_rows_are_sorted_by_user_then_time(ref, arrays, spec):
    # labels are stored untransformed, so they identify the row order exactly (watch_time is continuous)
    expected = np.array([ref.col(t) for t in spec.task_names], dtype=np.float32).T
    np.testing.assert_array_equal(arrays["labels"], expected)


def test_n_prior_counts_only_strictly_earlier_events(ref, arrays):
    expected = ref.n_prior()
    np.testing.assert_array_equal(arrays["n_prior"], expected)
    # ties exist, so n_prior differs from a per-user running count
    running = [sum(1 for j in ref.order[:r] if ref.cols["user_id"][j] == ref.cols["user_id"][ref.order[r]])
               for r in range(200)]
    assert running != expected[:200]


def test_history_items_are_int32_and_a_larger_item_vocabulary_is_refused(arrays):
    assert arrays["hist_item"].dtype == np.int32
    check_item_vocab(2**31 - 1)
    with pytest.raises(ValueError, match="column 'item_id'.*do not fit"):
        check_item_vocab(2**31)


def test_prior_bucket(arrays):
    n = arrays["n_prior"]
    expected = [min((1 + int(x)).bit_length() - 1, 15) for x in n]  # floor(log2(1 + n)), capped at 15
    np.testing.assert_array_equal(arrays["prior_bucket"], expected)


def test_prior_bucket_expr_hand_values():
    n = [0, 1, 2, 3, 4, 6, 7, 8, 1022, 1023, 32766, 32767, 65535, 10**9]
    want = [0, 1, 1, 2, 2, 2, 3, 3, 9, 10, 14, 15, 15, 15]
    got = pl.DataFrame({"n_prior": n}).select(prior_bucket_expr())["prior_bucket"].to_list()
    assert got == want


def test_histories_match_reference_including_ties(ref, arrays):
    item = arrays["item"]
    hist_item, hist_label = arrays["hist_item"], arrays["hist_label"]
    assert hist_item.shape == (len(ref.order), K) and hist_label.shape == (len(ref.order), K, 2)
    ties = 0
    for r, e in enumerate(ref.order):
        prior = ref.earlier(e)[-K:]
        pad = K - len(prior)
        want_item = [0] * pad + [int(item[ref.row_of[j]]) for j in prior]
        want_label = [[0, 0]] * pad + [[ref.cols[t][j] for t in BINARY] for j in prior]
        assert hist_item[r].tolist() == want_item, f"row {r}"
        assert hist_label[r].tolist() == want_label, f"row {r}"
        assert arrays["prev_label"][r].tolist() == want_label[-1]
        same_user = ref.by_user[ref.cols["user_id"][e]]
        ties += any(ref.cols["ts"][j] == ref.cols["ts"][e] for j in same_user if j != e)
    assert ties > 1000  # the fixture really has many same-timestamp events


def test_history_padding_is_exactly_the_missing_past(arrays):
    n_real = np.minimum(arrays["n_prior"], K)
    pad = arrays["hist_item"] == 0
    np.testing.assert_array_equal(pad.sum(1), K - n_real)
    np.testing.assert_array_equal(pad, np.arange(K)[None, :] < (K - n_real)[:, None])  # left padding
    assert not arrays["hist_label"][pad].any()


def test_gather_windows_in_blocks_into_a_given_array_or_file(monkeypatch, tmp_path):
    """Blocks of any size fill ``out`` (an array, or the output file's writer, in prepare) exactly as one gather."""
    rng = np.random.default_rng(0)
    n_prior = np.concatenate([np.arange(n) for n in rng.integers(1, 9, size=40)])  # 40 users' runs
    ends, k = np.arange(len(n_prior)), 5
    values = rng.integers(1, 100, size=(len(n_prior), 2)).astype(np.int8)
    whole = sequences.gather_windows(values, ends, n_prior, k)
    for row, (e, m) in enumerate(zip(ends, n_prior, strict=True)):  # by hand: the last k rows before e, left-padded
        past = values[e - min(m, k):e]
        assert whole[row].tolist() == [[0, 0]] * (k - len(past)) + past.tolist()
    monkeypatch.setattr(sequences, "GATHER_BLOCK", 7)
    out = np.full((len(ends), k, 2), -1, dtype=np.int8)
    assert sequences.gather_windows(values, ends, n_prior, k, out=out) is out
    np.testing.assert_array_equal(out, whole)
    with NpyWriter(tmp_path / "h.npy", whole.shape, whole.dtype) as w:
        sequences.gather_windows(values, ends, n_prior, k, out=w)
    np.testing.assert_array_equal(np.load(tmp_path / "h.npy"), whole)


def test_prepare_writes_each_array_once_the_histories_block_by_block(events, spec, tmp_path, monkeypatch):
    """The history arrays are appended to their files in blocks (never whole in memory); every other array is
    saved once, as soon as it is made; the files equal the arrays ``build_arrays`` returns."""
    blocks, saved = [], []
    real_write, real_save = NpyWriter.write, npy_writer.save
    monkeypatch.setattr(NpyWriter, "write", lambda self, b: (blocks.append((self.path.stem, len(b))),
                                                             real_write(self, b))[1])
    monkeypatch.setattr(npy_writer, "save", lambda path, arr: (saved.append(Path(path).stem), real_save(path, arr))[1])
    monkeypatch.setattr(sequences, "GATHER_BLOCK", 50)
    monkeypatch.setattr(npy_writer, "DIRECT_MIN", 0)  # every array direct, as at 1e7 events
    out = prepare(events, spec, tmp_path / "ds", PREP)
    reference = build_arrays(events, spec, PREP)[0]
    hist = [(name, n) for name, n in blocks if name in ("hist_item", "hist_label")]
    assert {name for name, _ in hist} == {"hist_item", "hist_label"} and max(n for _, n in hist) <= 50
    assert sorted(saved) == sorted(set(reference) - {"hist_item", "hist_label"})  # each once
    for name, arr in reference.items():
        np.testing.assert_array_equal(np.load(out / f"{name}.npy"), arr)


def tie_events() -> pl.DataFrame:
    """Three users, unique items, rows shuffled; user 5 has three events at ts=5 and two at ts=9.

    ``eid`` (a regression task, stored untransformed) names each event.
    """
    rows = [  # user, item, ts, click, like
        (5, "a", 5, 1, 0), (5, "b", 5, 0, 1), (9, "c", 2, 1, 1), (5, "d", 1, 0, 0), (5, "e", 9, 1, 1),
        (5, "f", 3, 1, 0), (7, "g", 4, 0, 1), (5, "h", 9, 0, 0), (7, "i", 4, 1, 0), (5, "j", 5, 1, 1),
    ]
    df = pl.DataFrame(rows, schema=["user_id", "item_id", "ts", "click", "like"], orient="row")
    return df.with_row_index("eid").with_columns(pl.col("eid").cast(pl.Float64))


TIE_SPEC = EventSpec(tasks=(TaskSpec("click"), TaskSpec("like"), TaskSpec("eid", "regression")))


def test_hand_histories_with_ties(tmp_path):
    events = tie_events()
    root = prepare(events, TIE_SPEC, tmp_path / "d", PrepOptions(history_len=3, val_frac=0.0, test_frac=0.0,
                   new_user_max_prior=2, stream_len=4, stream_overlap=1))
    labels = load(root, "labels")
    eid = labels[:, 2].astype(int)
    name = events["item_id"].to_list()
    idx = {name[e]: int(i) for e, i in zip(eid, load(root, "item"))}  # item name -> vocab index
    assert len(set(idx.values())) == 10 and min(idx.values()) >= 2
    # rows in (user, ts, input row) order
    assert [name[e] for e in eid] == ["d", "f", "a", "b", "j", "e", "h", "g", "i", "c"]
    expected_hist = {  # item names, oldest first; same-ts events never see each other
        "d": [], "f": ["d"], "a": ["d", "f"], "b": ["d", "f"], "j": ["d", "f"],
        "e": ["a", "b", "j"], "h": ["a", "b", "j"],  # last 3 of d, f, a, b, j
        "g": [], "i": [], "c": [],
    }
    expected_n_prior = {"d": 0, "f": 1, "a": 2, "b": 2, "j": 2, "e": 5, "h": 5, "g": 0, "i": 0, "c": 0}
    click = dict(zip(name, events["click"].to_list()))
    like = dict(zip(name, events["like"].to_list()))
    hist_item, hist_label, n_prior = load(root, "hist_item"), load(root, "hist_label"), load(root, "n_prior")
    for r, e in enumerate(eid):
        h = expected_hist[name[e]]
        assert hist_item[r].tolist() == [0] * (3 - len(h)) + [idx[x] for x in h], name[e]
        assert hist_label[r].tolist() == [[0, 0]] * (3 - len(h)) + [[click[x], like[x]] for x in h], name[e]
        assert n_prior[r] == expected_n_prior[name[e]]
    # new_user cohort: 'new' iff n_prior < 2
    m = read_manifest(root)
    cohort = [m["cohorts"]["new_user"][c] for c in load(root, "cohorts")[:, 0]]
    assert cohort == ["new" if expected_n_prior[name[e]] < 2 else "regular" for e in eid]
    np.testing.assert_array_equal(load(root, "user_offsets"), [0, 7, 9, 10])
    np.testing.assert_array_equal(load(root, "user_key"), [0] * 7 + [1, 1, 2])
    assert m["splits"] == {"train": 10, "val": 0, "test": 0}


def test_every_history_item_is_an_earlier_event_of_the_same_user(tmp_path):
    # unique items make every history slot traceable to its event
    rng = np.random.default_rng(3)
    n = 400
    events = pl.DataFrame({
        "user_id": rng.integers(0, 12, n), "item_id": np.arange(n) + 100, "ts": rng.integers(0, 15, n) * 1000,
        "click": rng.integers(0, 2, n), "like": rng.integers(0, 2, n),
    }).with_row_index("eid").with_columns(pl.col("eid").cast(pl.Float64))
    root = prepare(events, TIE_SPEC, tmp_path / "d", PrepOptions(history_len=6, val_frac=0.0, test_frac=0.0))
    eid = load(root, "labels")[:, 2].astype(int)
    item_event = {int(i): int(e) for i, e in zip(load(root, "item"), eid)}
    user, ts = events["user_id"].to_numpy(), events["ts"].to_numpy()
    checked = 0
    for r, hist in enumerate(load(root, "hist_item")):
        e = eid[r]
        past = [item_event[int(i)] for i in hist if i != 0]
        assert all(user[p] == user[e] and ts[p] < ts[e] for p in past)
        assert [ts[p] for p in past] == sorted(ts[p] for p in past)  # oldest first
        n_earlier = int(((user == user[e]) & (ts < ts[e])).sum())
        assert len(past) == min(6, n_earlier)
        checked += len(past)
    assert checked > 1000


# ---------------------------------------------------------------- split


def test_split_is_disjoint_in_time(ref, arrays, prepared):
    _, manifest = prepared
    ts = np.array(ref.col("ts"))
    split = arrays["split"]
    cuts = manifest["cuts"]
    assert set(cuts) == {"val_start", "test_start"}
    tr, va, te = ts[split == 0], ts[split == 1], ts[split == 2]
    assert len(tr) and len(va) and len(te)
    assert tr.max() < cuts["val_start"] <= va.min() <= va.max() < cuts["test_start"] <= te.min()
    assert manifest["splits"] == {"train": len(tr), "val": len(va), "test": len(te)}
    assert 0.05 < len(va) / len(ts) < 0.2 and 0.05 < len(te) / len(ts) < 0.2


def test_time_cuts_hand_values():
    ts = pl.Series(list(range(100)))
    assert time_cuts(ts, 0.1, 0.1) == (79, 89)  # lower quantiles 0.8 and 0.9
    assert time_cuts(ts, 0.0, 0.0) == (100, 100)
    with pytest.raises(SchemaError, match="data.prep.val_frac"):
        PrepOptions(val_frac=0.6, test_frac=0.5)  # the fractions are checked once, in the prep options
    with pytest.raises(SchemaError, match="first timestamp"):
        time_cuts(pl.Series([0] * 90 + list(range(1, 11))), 0.1, 0.1)


# ---------------------------------------------------------------- vocabularies and statistics


def test_vocab_fitted_on_train_only(ref, arrays, prepared):
    _, manifest = prepared
    split = np.array(arrays["split"])
    for col, arr, n_oov_min in (("user_id", arrays["user"], 2), ("item_id", arrays["item"], 2),
                                ("device", arrays["cat"][:, 0], 0)):
        raw = ref.col(col)
        in_train = {v for v, s in zip(raw, split) if s == 0}
        mapping = {}
        for v, i in zip(raw, arr.tolist()):
            assert mapping.setdefault(v, i) == i, f"{col} {v!r} maps to two indices"
            assert (i == 1) == (v not in in_train), f"{col} {v!r}: index {i}"
        known = {mapping[v] for v in in_train}
        assert known == set(range(2, len(in_train) + 2))  # a bijection onto 2..size-1
        assert manifest["vocab_sizes"][col] == len(in_train) + 2
        assert sum(v not in in_train for v in mapping) >= n_oov_min  # ids unseen in train exist
    assert (arrays["user"] >= 1).all() and (arrays["item"] >= 1).all() and (arrays["cat"] >= 1).all()
    assert (arrays["hist_item"] == 0).any()


def test_min_count_maps_rare_train_ids_to_oov(events, spec, tmp_path, ref):
    root = prepare(events, spec, tmp_path / "d", replace(PREP, min_count=8))
    split = load(root, "split")
    user = load(root, "user")
    train_count = defaultdict(int)
    for v, s in zip(ref.col("user_id"), split):
        train_count[v] += s == 0
    rare = np.array([train_count[v] < 8 for v in ref.col("user_id")])
    assert rare.any() and (~rare).any()
    np.testing.assert_array_equal(user == 1, rare)
    assert read_manifest(root)["vocab_sizes"]["user_id"] == sum(c >= 8 for c in train_count.values()) + 2
    assert read_manifest(root)["vocab_sizes"]["device"] == 5  # min_count applies to users and items only


def test_numeric_stats_are_train_mean_std(ref, arrays, prepared):
    _, manifest = prepared
    x = np.array(ref.col("duration"))
    train = x[arrays["split"] == 0]
    mean, std = train.mean(), train.std(ddof=1)
    assert manifest["numeric_stats"]["duration"]["mean"] == pytest.approx(mean, rel=1e-12)
    assert manifest["numeric_stats"]["duration"]["std"] == pytest.approx(std, rel=1e-12)
    assert abs(mean - x.mean()) > 1e-6  # train-only stats differ from all-data stats here
    np.testing.assert_allclose(arrays["num"][:, 0], (x - mean) / std, rtol=1e-5, atol=1e-5)
    assert arrays["num"].dtype == np.float32


def test_regression_task_stats_after_log1p_on_train(ref, arrays, prepared):
    _, manifest = prepared
    y = np.array(ref.col("watch_time"))
    train = np.log1p(y[arrays["split"] == 0])
    stats = manifest["task_stats"]
    assert set(stats) == {"watch_time"}
    assert stats["watch_time"]["mean"] == pytest.approx(train.mean(), rel=1e-12)
    assert stats["watch_time"]["std"] == pytest.approx(train.std(ddof=1), rel=1e-12)
    assert stats["watch_time"]["mean"] != pytest.approx(np.log1p(y).mean(), rel=1e-9)


def test_cohorts(ref, arrays, prepared):
    _, manifest = prepared
    assert list(manifest["cohorts"]) == ["new_user", "user_group", "seen_in_train"]
    assert manifest["cohorts"]["new_user"] == ["new", "regular"]
    assert manifest["cohorts"]["user_group"] == ["a", "b"]
    new = arrays["n_prior"] < PREP.new_user_max_prior
    assert new.any() and (~new).any()
    np.testing.assert_array_equal(arrays["cohorts"][:, 0], np.where(new, 0, 1))
    group_codes = [("a", "b").index(g) for g in ref.col("user_group")]
    np.testing.assert_array_equal(arrays["cohorts"][:, 1], group_codes)


def test_user_keys_and_offsets(ref, arrays):
    users = ref.col("user_id")
    distinct = sorted(set(users))
    np.testing.assert_array_equal(arrays["user_key"], [distinct.index(u) for u in users])
    offsets = arrays["user_offsets"]
    assert offsets.tolist() == [users.index(u) for u in distinct] + [len(users)]


# ---------------------------------------------------------------- manifest and files


MANIFEST_KEYS = {
    "layout", "n_events", "splits", "cuts", "spec", "vocab_sizes", "n_user_keys", "numeric_stats",
    "task_stats", "history_len", "history_labels", "prior_buckets", "new_user_max_prior", "cohorts",
    "source_checksum", "config", "config_hash", "format", "arrays", "min_count", "stream_len",
    "stream_overlap",
}


def test_manifest_and_array_shapes(prepared, events, spec):
    root, m = prepared
    assert MANIFEST_KEYS <= set(m)
    n = events.height
    assert m["n_events"] == n and m["layout"] == "per_event"
    assert m["spec"] == spec.to_dict() and m["history_labels"] == BINARY and m["history_len"] == K
    assert m["n_user_keys"] == events["user_id"].n_unique()
    assert m["config"] == {"test": 1}
    expected = {
        "split": (n,), "user": (n,), "user_key": (n,), "item": (n,), "cat": (n, 1), "num": (n, 1),
        "labels": (n, 3), "n_prior": (n,), "prior_bucket": (n,), "cohorts": (n, 3), "hist_item": (n, K),
        "hist_label": (n, K, 2), "prev_label": (n, 2), "user_offsets": (m["n_user_keys"] + 1,),
    }
    for name, shape in expected.items():
        assert tuple(m["arrays"][name]["shape"]) == shape, name
    for name, info in m["arrays"].items():
        arr = np.load(root / f"{name}.npy", mmap_mode="r")
        assert list(arr.shape) == info["shape"] and str(arr.dtype) == info["dtype"], name
    files = sorted([f"{k}.npy" for k in m["arrays"]] + ["manifest.json", "users.parquet", "fit"])
    assert sorted(p.name for p in root.iterdir()) == files
    assert m["format"] == FORMAT_VERSION and m["fingerprint"] == load_fitted(root).fingerprint()


def test_checksum_tracks_content(events, spec, tmp_path, prepared):
    _, m = prepared
    changed = events.with_columns(pl.when(pl.int_range(pl.len()) == 7).then(1 - pl.col("click"))
                                  .otherwise(pl.col("click")).alias("click"))
    a = prepare(events, spec, tmp_path / "a", PREP)
    b = prepare(changed, spec, tmp_path / "b", PREP)
    assert read_manifest(a)["source_checksum"] == m["source_checksum"]
    assert read_manifest(b)["source_checksum"] != m["source_checksum"]


def test_event_split_dataset(prepared, arrays):
    root, m = prepared
    ds = EventSplit(root, "val")
    rows = np.flatnonzero(arrays["split"] == 1)
    assert len(ds) == m["splits"]["val"] == len(rows)
    batch = ds.__getitems__([5, 0, 3])
    want = np.sort(rows[[5, 0, 3]])
    for name in ("user", "item", "labels", "hist_item", "hist_label", "cohorts", "num"):
        np.testing.assert_array_equal(batch[name].numpy(), arrays[name][want], err_msg=name)
    assert batch["hist_item"].shape == (3, K)
    train = EventSplit(root, "train").__getitems__([0, 1])
    assert "labels" in train and not {"user_key", "cohorts"} & set(train)  # eval-only fields stay on disk


def _contents(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_write_is_atomic(events, spec, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    prepare(events, spec, out, PREP, config={"v": 1})
    before = _contents(out)

    real_save = npy_writer.save
    calls = []

    def failing_save(file, arr):
        calls.append(file)
        if len(calls) == 4:
            raise OSError("disk full (simulated)")
        return real_save(file, arr)

    monkeypatch.setattr(npy_writer, "save", failing_save)
    with pytest.raises(WriteError, match=r"cannot write .*ds \(prepared dataset\): disk full \(simulated\)"):
        prepare(events, spec, out, replace(PREP, history_len=7), config={"v": 2})
    assert len(calls) >= 4 and Path(calls[0]).parent != out  # it was writing elsewhere
    monkeypatch.undo()

    assert _contents(out) == before
    assert read_manifest(out)["config"] == {"v": 1}
    assert _leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]

    # a successful rewrite replaces the folder completely and leaves nothing behind
    (out / "stale.npy").write_bytes(b"x")
    prepare(events, spec, out, replace(PREP, history_len=7), config={"v": 2})
    assert read_manifest(out)["history_len"] == 7
    assert not (out / "stale.npy").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_failed_swap_restores_previous_dataset(events, spec, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    prepare(events, spec, out, PREP, config={"v": 1})
    real_rename = os.rename

    def rename_new_fails(src, dst):
        if ".tmp-" in str(src):
            raise OSError("rename failed (simulated)")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename_new_fails)
    with pytest.raises(WriteError, match=r"cannot write .*ds \(prepared dataset\): rename failed \(simulated\)"):
        prepare(events, spec, out, PREP, config={"v": 2})
    monkeypatch.undo()
    assert read_manifest(out)["config"] == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


# ---------------------------------------------------------------- ensure_prepared


def data_config(path: Path, out: Path, **prep) -> dict:
    return {
        "name": "test", "dir": str(out),
        "source": {"_target_": "polars.read_parquet", "source": str(path)},
        "tasks": {k: dict(v) for k, v in TASKS.items()},
        "categorical": list(CATEGORICAL), "numeric": list(NUMERIC), "cohorts": list(COHORTS),
        "prep": {**PREP.to_dict(), **prep},
    }


def test_ensure_prepared_reuses_and_rebuilds(events_parquet, tmp_path, monkeypatch):
    calls = []
    real_prepare = build.prepare
    monkeypatch.setattr(build, "prepare", lambda *a, **kw: calls.append(1) or real_prepare(*a, **kw))
    out = tmp_path / "ds"
    manifest = out / "manifest.json"
    events_parquet = Path(shutil.copy(events_parquet, tmp_path / "events.parquet"))  # edited below
    data = data_config(events_parquet, out)

    assert ensure_prepared(data) == out and len(calls) == 1
    mtime = os.stat(manifest).st_mtime_ns
    first = read_manifest(out)

    assert ensure_prepared(json.loads(json.dumps(data))) == out  # same config -> reused
    assert len(calls) == 1 and os.stat(manifest).st_mtime_ns == mtime

    reweighted = json.loads(json.dumps(data))
    reweighted["tasks"]["click"]["weight"] = 3.0  # loss weights do not change the arrays
    reweighted["batch_size"] = 7
    ensure_prepared(reweighted)
    assert len(calls) == 1 and os.stat(manifest).st_mtime_ns == mtime

    changed = data_config(events_parquet, out, history_len=K + 2)
    ensure_prepared(changed)
    assert len(calls) == 2
    second = read_manifest(out)
    assert second["history_len"] == K + 2 and second["config_hash"] != first["config_hash"]
    assert np.load(out / "hist_item.npy").shape == (first["n_events"], K + 2)

    ensure_prepared(changed)
    assert len(calls) == 2
    ensure_prepared(changed, force=True)
    assert len(calls) == 3

    other_task = data_config(events_parquet, out)
    other_task["tasks"]["watch_time"]["transform"] = "none"
    ensure_prepared(other_task)
    assert len(calls) == 4 and read_manifest(out)["spec"]["tasks"]["watch_time"]["transform"] == "none"

    pl.read_parquet(events_parquet).head(-1).write_parquet(events_parquet)  # the raw log changed
    ensure_prepared(other_task)
    assert len(calls) == 5
    assert _leftovers(tmp_path) == []


def test_prepare_validates(events, spec, tmp_path):
    bad = events.with_columns(pl.when(pl.int_range(pl.len()) == 11).then(2).otherwise(pl.col("click"))
                              .alias("click"))
    with pytest.raises(SchemaError, match="click"):
        prepare(bad, spec, tmp_path / "d", PREP)
    assert not (tmp_path / "d").exists()


def test_a_null_cohort_value_is_coded_as_unknown(events, spec):
    """Null cohort values are the value UNKNOWN (a name of its own), the other values keep their codes."""
    from data_prep.fit import UNKNOWN

    nulls = np.zeros(events.height, dtype=bool)
    nulls[::7] = True
    with_nulls = events.with_columns(pl.when(pl.Series(nulls)).then(None).otherwise(pl.col("user_group"))
                                     .alias("user_group"))
    arrays, fitted, _, _ = build_arrays(with_nulls, spec, PREP)
    names = fitted.cohorts["user_group"]
    col = list(fitted.cohorts).index("user_group")
    codes = arrays["cohorts"][:, col]
    assert UNKNOWN in names and (codes == names.index(UNKNOWN)).sum() == nulls.sum()
    assert set(codes.tolist()) == set(range(len(names)))  # every value, UNKNOWN among them, and no NO_COHORT
