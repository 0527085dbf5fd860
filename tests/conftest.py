"""Shared fixtures: a small, learnable canonical event log and its prepared dataset."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from data_prep.dataset import read_manifest
from data_prep.options import PrepOptions
from data_prep.paths import CONF_DIR
from data_prep.prepare import prepare
from data_prep.schema import EventSpec

N_USERS, N_ITEMS = 300, 60
T0 = 1_700_000_000_000  # ms
MINUTE = 60_000
N_SLOTS = 60  # distinct timestamps per user: ~15 events per user over 60 slots gives many ties
N_NEW_USERS, N_NEW_ITEMS = 8, 4  # only seen in the last 5% of time (val/test only)

TASKS = {
    "click": {"kind": "binary"},
    "like": {"kind": "binary", "weight": 0.5},
    "watch_time": {"kind": "regression", "transform": "log1p"},
}
CATEGORICAL = ["device"]
NUMERIC = ["duration"]
COHORTS = ["user_group"]


def make_events(seed: int = 0, n_users: int = N_USERS, n_items: int = N_ITEMS) -> pl.DataFrame:
    """A canonical event log with strong user/item effects, so ``click`` is learnable.

    * ~15 events per user, timestamps on a minute grid of ``N_SLOTS`` values per user: many
      events of the same user share a timestamp (ties);
    * ``N_NEW_USERS`` users and ``N_NEW_ITEMS`` items occur only in the last 5% of the time range
      (so they are unseen in train);
    * click ~ Bernoulli(sigmoid(2 * (user_bias + item_bias))), like from the same biases shifted,
      watch_time = exp(item_bias + noise) >= 0;
    * device (categorical, strings), duration (numeric), user_group (cohort, per user).
    """
    rng = np.random.default_rng(seed)
    user_bias = rng.normal(0.0, 1.2, n_users + N_NEW_USERS)
    item_bias = rng.normal(0.0, 1.2, n_items + N_NEW_ITEMS)
    sizes = rng.integers(4, 27, n_users)
    user = np.repeat(np.arange(n_users), sizes)
    n = len(user)
    item = rng.integers(0, n_items, n)
    slot = rng.integers(0, N_SLOTS, n)
    # new items replace some events in the last 5% of time
    late = slot >= int(N_SLOTS * 0.95)
    swap = late & (rng.random(n) < 0.3)
    item[swap] = n_items + rng.integers(0, N_NEW_ITEMS, swap.sum())
    # new users: a few events each, all in the last slots
    new_sizes = rng.integers(2, 5, N_NEW_USERS)
    new_user = np.repeat(np.arange(n_users, n_users + N_NEW_USERS), new_sizes)
    m = len(new_user)
    user = np.concatenate([user, new_user])
    item = np.concatenate([item, rng.integers(0, n_items, m)])
    slot = np.concatenate([slot, np.full(m, N_SLOTS - 1)])  # all their events tie
    n = len(user)
    ts = T0 + MINUTE * slot
    logit = 2.0 * (user_bias[user] + item_bias[item])
    click = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    like = (rng.random(n) < 1 / (1 + np.exp(-(logit - 1.0)))).astype(np.int64)
    watch = np.exp(0.5 * item_bias[item] + 0.3 * rng.normal(size=n))
    device = np.array(["ios", "android", "web"])[rng.integers(0, 3, n)]
    duration = rng.gamma(2.0, 30.0, n)
    group = np.array(["a", "b"])[user % 2]
    df = pl.DataFrame({
        "user_id": (user * 7 + 1000).astype(np.int64),  # sparse ids
        "item_id": np.char.add("item", item.astype(str)),  # string ids
        "ts": ts.astype(np.int64),
        "device": device,
        "duration": duration,
        "click": click,
        "like": like,
        "watch_time": watch,
        "user_group": group,
    })
    return df.sample(fraction=1.0, shuffle=True, seed=seed)  # rows in no particular order


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    torch.set_num_threads(2)
    yield


@pytest.fixture(scope="session")
def events() -> pl.DataFrame:
    return make_events()


@pytest.fixture(scope="session")
def spec() -> EventSpec:
    return EventSpec.from_config(TASKS, CATEGORICAL, NUMERIC, COHORTS)


PREP = PrepOptions(history_len=5, val_frac=0.1, test_frac=0.1, new_user_max_prior=5, stream_len=8, stream_overlap=2,
                   min_count=1)


@pytest.fixture(scope="session")
def prepared(events, spec, tmp_path_factory) -> tuple[Path, dict]:
    """The conftest events prepared with :data:`PREP` into a temp folder: ``(root, manifest)``."""
    root = prepare(events, spec, tmp_path_factory.mktemp("prepared") / "data", PREP, config={"test": 1})
    return root, read_manifest(root)


@pytest.fixture(scope="session")
def events_parquet(events, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("raw") / "events.parquet"
    events.write_parquet(path)
    return path


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance (2 CPUs, no dashboard) shared by the Ray tests, shut down after them; its address
    (``host:port``) lets a subprocess (``hydra.launcher.ray.init.address=``) join it. Skips without the ray extra.
    Only this machine's processes talk to it; Ray 2.60 still listens on all interfaces and advertises the host's IP
    whatever ``_node_ip_address`` says (its token authentication is on by default)."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'mose[ray]')")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def load(root: Path, name: str) -> np.ndarray:
    return np.load(Path(root) / f"{name}.npy")


def compose_train(overrides: list[str]) -> DictConfig:
    """``conf/train.yaml`` composed with ``overrides`` (and its Hydra section)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def compose_with_output(config_name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` like ``@hydra.main`` would, with its run dir at ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    output_dir.mkdir(parents=True, exist_ok=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The ``error: ...`` line of a console script that refused its input: exit 2, no traceback, and the
    only ``error:`` line, the last one on stderr."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert [ln for ln in lines if ln.startswith("error: ")] == lines[-1:], proc.stderr[-3000:]
    return lines[-1]


def console(name: str, module: str) -> list[str]:
    """The console script ``name`` (``python -m module`` where it is not installed)."""
    exe = shutil.which(name)
    return [exe] if exe else [sys.executable, "-m", module]


def run_console(name: str, module: str, args: list[str], cwd: Path, timeout: float = 300,
                **kwargs) -> subprocess.CompletedProcess:
    """Run a console script to completion (one torch thread), capturing its output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*console(name, module), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False, **kwargs)


# README "Your own event log": a one-task log with its own column names and ts in seconds
README_ONE_TASK = ["data=events", "data.source.path=my_log.parquet",
                   "data.source.columns={user_id: uid, item_id: iid, ts: time, click: clicked}",
                   "data.source.ts_unit=s", "data.tasks={click: {kind: binary}}"]


@pytest.fixture(scope="session")
def one_task_run(events, tmp_path_factory) -> tuple[Path, list[str]]:
    """The README's one-task ``mose-train`` run (a real subprocess, one epoch): ``(work dir, its arguments)``;
    the run is ``<work dir>/run``."""
    work = tmp_path_factory.mktemp("one_task")
    log = events.rename({"user_id": "uid", "item_id": "iid", "ts": "time", "click": "clicked"})
    log.with_columns(pl.col("time") // 1000).write_parquet(work / "my_log.parquet")
    args = [*README_ONE_TASK, "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "threads=1",
            "data.batch_size=256", f"paths.data_dir={work / 'data'}", f"hydra.run.dir={work / 'run'}"]
    proc = run_console("mose-train", "mose.train", args, work)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return work, args


# the models of a declared task dependency (data.tasks.<task>.after): they refuse a log without one, a one-task log too
CHAINED_MODELS = frozenset({"esmm", "aitm"})


def prepared_dir(data_root: Path, name: str) -> Path:
    """The one prepared dataset ``<name>-<source key>`` under ``data_root`` (``dir`` of conf/data/*.yaml)."""
    found = [p for p in Path(data_root).glob(f"{name}-*") if p.is_dir()]
    assert len(found) == 1, found
    return found[0]
