"""mose vs torch-rechub (a public PyTorch multi-task library) on the same prepared KuaiRand sample.

    python bench/peer_bench.py [--models mmoe ple] [--epochs 3] [--seeds 0 1 2] [--batches 512 2048 8192]
                               [--threads 2 1] [--speed-batches 512 2048] [-- mose's Hydra overrides]

1. Creates ``bench/.venv-rechub`` (git-ignored) once with ``python -m venv`` and installs
   ``torch==2.13.0 torch-rechub==0.9.0`` there (torch pinned in the same resolve, so rechub's
   ``torch>=1.10`` requirement cannot pull another torch; the venv's torch version is checked).
2. Prepares the KuaiRand sample (``data=kuairand``, ``/work/shared/data/kuairand`` by default)
   once into a temp folder, as ``mose-prep data=kuairand`` does.
3. Per model, batch and seed, one after the other with the same thread count: mose's model
   (``conf/model/<name>.yaml`` with the default config, so its optim recipe: the lr scaled from
   ``optim.ref_batch`` to the batch, warm-up; trained by ``pl.Trainer.fit`` as in ``mose-train``: no
   validation, fixed epochs) and torch-rechub's model with the same embedding, expert and tower
   sizes, batch size, base learning rate (``optim.lr``, unscaled: the peer's own practice),
   optimizer (Adam(W) without weight decay) and epochs (``bench/peer_rechub.py``, run by the venv's
   python on the same ``.npy`` arrays). Training throughput counts train events x epochs over the
   time of the training epochs only; test AUC per binary task is of the final weights (no early
   stopping on either side). Every batch runs every seed with the first ``--threads``; the speed
   batches run again, first seed, with each other thread count.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, Timed, run_child

VENV = ROOT / "bench/.venv-rechub"
PEER_PY = VENV / "bin/python"
PINS = ["torch==2.13.0", "torch-rechub==0.9.0"]
BATCHES = (512, 2048, 8192)  # every seed: AUC and speed
SPEED_BATCHES = (512, 2048)  # also with the other thread counts (the 3x target)


def ensure_venv() -> dict:
    """Create the peer's virtualenv if missing; return its torch / torch-rechub versions and setup seconds."""
    start = time.perf_counter()
    check = [str(PEER_PY), "-c", "import json, torch, importlib.metadata as m; "
             "print(json.dumps({'torch': torch.__version__, 'torch_rechub': m.version('torch-rechub')}))"]
    ok = PEER_PY.exists() and subprocess.run(check, capture_output=True, check=False).returncode == 0
    if not ok:
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(PEER_PY), "-m", "pip", "install", "-q", *PINS], check=True)
    versions = run_child(check)
    if not versions["torch"].startswith("2.13.0"):
        raise RuntimeError(f"the peer venv resolved torch {versions['torch']}, not 2.13.0")
    return {**versions, "setup_s": time.perf_counter() - start, "created": not ok}


def compose(name: str, data_dir: str, overrides: list[str]) -> tuple[dict, dict, dict]:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose("train", overrides=[f"model={name}", "data=kuairand", f"paths.data_dir={data_dir}",
                                                *overrides])
    return (OmegaConf.to_container(cfg.model, resolve=True), OmegaConf.to_container(cfg.data, resolve=True),
            OmegaConf.to_container(cfg.optim, resolve=True))


def ours(name: str, data_dir: str, epochs: int, seed: int, threads: int, overrides: list[str]) -> dict:
    """mose's model trained by Lightning for ``epochs`` epochs: train events/s and test AUC per task."""
    import logging
    import warnings

    import pytorch_lightning as pl

    from data_prep.build import ensure_prepared, event_spec
    from data_prep.dataset import read_manifest
    from mose.module import MultiTaskModule
    from mose.nn.embeddings import InputSpec
    from mose.optim import recipe
    from mose.train import build_datamodule

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    model, data, optim = compose(name, data_dir, overrides)
    root = ensure_prepared(data)
    manifest = read_manifest(root)
    pl.seed_everything(seed, verbose=False)
    module = MultiTaskModule(model=model, input_spec=asdict(InputSpec.from_manifest(manifest)),
                             tasks=event_spec(data).to_dict()["tasks"], task_stats=manifest["task_stats"],
                             cohorts=manifest["cohorts"], lr=optim["lr"], weight_decay=optim["weight_decay"],
                             batch_size=data["batch_size"], **recipe(optim))
    dm = build_datamodule(data)

    class EpochClock(pl.Callback):
        def __init__(self) -> None:
            self.seconds, self.start = [], 0.0

        def on_train_epoch_start(self, trainer, pl_module):
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            self.seconds.append(time.perf_counter() - self.start)

    clock = EpochClock()
    dm.setup("fit")
    timer = Timed(dm.splits["train"])
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, limit_val_batches=0,
                         num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[clock])
    trainer.fit(module, datamodule=dm)
    group = trainer.optimizers[0].param_groups[0]
    trainer.test(module, datamodule=dm, verbose=False)
    # inference like the peer's: eval-mode forward over the test split at the training batch size
    ds, module = dm.splits["test"], module.eval()
    with torch.inference_mode():
        start = time.perf_counter()
        for i in range(0, len(ds), dm.batch_size):
            module(ds.__getitems__(list(range(i, min(i + dm.batch_size, len(ds))))))
        test_s = time.perf_counter() - start
    n_train = manifest["splits"]["train"]
    res = module.results["test"]
    binary = [t for t, s in data["tasks"].items() if s.get("kind", "binary") == "binary"]
    return {"events_per_s": n_train * epochs / sum(clock.seconds), "epoch_s": clock.seconds, "n_test": len(ds),
            "data_share": timer.seconds / sum(clock.seconds),
            "test_auc": {t: res[f"{t}/auc"] for t in binary if f"{t}/auc" in res},
            "test_events_per_s": len(ds) / test_s, "batch": dm.batch_size, "model": model,
            "params": sum(p.numel() for p in module.parameters()), "root": str(root), "lr": optim["lr"],
            "lr_used": group.get("initial_lr", group["lr"])}  # optim.lr after the recipe's scaling


def peer_args(name: str, model: dict, batch: int, epochs: int, seed: int, threads: int, lr: float) -> list[str]:
    args = ["--model", name, "--epochs", str(epochs), "--batch", str(batch), "--embed", str(model["embed_dim"]),
            "--expert-dims", *map(str, model["expert"]), "--tower-dims", *map(str, model["tower"]),
            "--seed", str(seed), "--threads", str(threads), "--lr", str(lr)]
    if name == "mmoe":
        args += ["--experts", str(model["n_experts"])]
    else:
        args += ["--levels", str(model["levels"]), "--specific", str(model["n_specific"]),
                 "--shared", str(model["n_shared"])]
    return args


def pair(name: str, data_dir: str, batch: int, seed: int, threads: int, epochs: int, overrides: list[str]) -> dict:
    """Both sides once: mose's model, then torch-rechub's with the sizes, batch, lr and threads mose used."""
    # our side in a child process too, so neither side inherits the other's state
    a = run_child([__file__, "--child-ours", name, "--data-dir", data_dir, "--epochs", str(epochs), "--seed", str(seed),
                   "--threads", str(threads), "--", *overrides, f"data.batch_size={batch}"])
    b = run_child([str(PEER_PY), str(ROOT / "bench/peer_rechub.py"), a["root"],
                   *peer_args(name, a["model"], a["batch"], epochs, seed, threads, a["lr"])])
    print(f"  peer {name} batch {batch} threads {threads} seed {seed}: mose {a['events_per_s']:,.0f} ev/s (lr "
          f"{a['lr_used']:.3g}) vs torch-rechub {b['events_per_s']:,.0f} ev/s "
          f"({a['events_per_s'] / b['events_per_s']:.1f}x); AUC "
          + ", ".join(f"{t} {a['test_auc'][t]:.4f}/{b['test_auc'].get(t, float('nan')):.4f}" for t in a["test_auc"]),
          flush=True)
    return {"model": name, "batch": batch, "seed": seed, "threads": threads, "ours": a, "peer": b}


def run(models: list[str], epochs: int = 3, seeds: list[int] | None = None, threads: list[int] | None = None,
        overrides: list[str] | None = None, batches: list[int] | None = None,
        speed_batches: list[int] | None = None) -> dict:
    """Per model: both sides at every batch and seed with ``threads[0]`` threads (AUC and speed), then the speed
    with each other thread count at ``speed_batches``, first seed only."""
    seeds, threads = seeds or [0, 1, 2], threads or [2, 1]
    batches = batches or list(BATCHES)
    speed_batches = [b for b in (speed_batches or SPEED_BATCHES) if b in batches]
    venv = ensure_venv()
    print(f"  peer venv: torch {venv['torch']}, torch-rechub {venv['torch_rechub']} "
          f"({'created' if venv['created'] else 'reused'}, {venv['setup_s']:.0f}s)", flush=True)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            runs += [pair(name, tmp, batch, seed, threads[0], epochs, overrides or [])
                     for batch in batches for seed in seeds]
            runs += [pair(name, tmp, batch, seeds[0], t, epochs, overrides or [])
                     for t in threads[1:] for batch in speed_batches]
        # the trivial baseline beside the models: item popularity (counts; its AUC depends on no batch or seed)
        baseline = run_child([__file__, "--child-ours", "popularity", "--data-dir", tmp, "--epochs", "1",
                              "--seed", str(seeds[0]), "--threads", str(threads[0]), "--", *(overrides or [])])
    return {"venv": venv, "runs": runs, "baseline": baseline["test_auc"], "epochs": epochs, "seeds": seeds,
            "threads": threads, "overrides": overrides or []}


def groups(res: dict, key) -> dict:
    """The runs of ``res`` grouped by ``key(run)``, in run order."""
    out: dict = {}
    for r in res["runs"]:
        out.setdefault(key(r), []).append(r)
    return out


def quality_runs(res: dict) -> dict:
    """The every-seed runs (``threads[0]``, the ones AUC is read from) by ``(model, batch)``."""
    return groups({"runs": [r for r in res["runs"] if r["threads"] == res["threads"][0]]},
                  lambda r: (r["model"], r["batch"]))


def aucs(rows: list[dict], side: str, task: str) -> list[float]:
    return [r[side]["test_auc"].get(task, float("nan")) for r in rows]


def spread(xs: list[float]) -> str:
    """Mean ± half-range over seeds."""
    return f"{statistics.mean(xs):.4f} ± {(max(xs) - min(xs)) / 2:.4f}"


def worse(a: list[float], b: list[float]) -> bool:
    """``a`` below ``b`` beyond seed noise: the means differ by more than both half-ranges and 0.005."""
    noise = (max(a) - min(a)) / 2 + (max(b) - min(b)) / 2 + 0.005
    return statistics.mean(a) < statistics.mean(b) - noise


def speed_table(res: dict) -> list[str]:
    """Training and inference events/s of both sides, medians over seeds, per model, batch and thread count."""
    lines = ["| model | batch | threads | seeds | mose lr | mose train events/s (data wait) "
             "| rechub train events/s (data wait) | ratio | mose inference events/s | rechub inference events/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (name, batch, threads), rows in groups(res, lambda r: (r["model"], r["batch"], r["threads"])).items():
        med = lambda side, key, rows=rows: statistics.median(r[side][key] for r in rows)
        ratio = med("ours", "events_per_s") / med("peer", "events_per_s")
        lines.append(f"| {name} | {batch} | {threads} | {len(rows)} | {rows[0]['ours']['lr_used']:.3g} | "
                     f"{med('ours', 'events_per_s'):,.0f} ({100 * med('ours', 'data_share'):.0f}%) | "
                     f"{med('peer', 'events_per_s'):,.0f} ({100 * med('peer', 'data_share'):.0f}%) | "
                     f"**{ratio:.1f}x** | {med('ours', 'test_events_per_s'):,.0f} | "
                     f"{med('peer', 'inference_events_per_s'):,.0f} |")
    return lines


def auc_table(res: dict) -> list[str]:
    """Test AUC per task of both sides at each batch (``threads[0]`` runs, every seed), mean ± half-range; then
    item popularity's (``model=popularity``), the trivial baseline."""
    runs = quality_runs(res)
    batches = sorted({b for _, b in runs})
    lines = ["| model | task | " + " | ".join(f"mose @ {b} | rechub @ {b}" for b in batches) + " |",
             "|---|---|" + "---|---|" * len(batches)]
    for name in dict.fromkeys(m for m, _ in runs):
        for task in runs[(name, batches[0])][0]["ours"]["test_auc"]:
            cells = [f"{spread(aucs(runs[(name, b)], 'ours', task))} | {spread(aucs(runs[(name, b)], 'peer', task))}"
                     for b in batches]
            lines.append(f"| {name} | {task} | " + " | ".join(cells) + " |")
    for task, auc in res.get("baseline", {}).items():  # model=popularity, the same at every batch and seed
        lines.append(f"| popularity | {task} | " + " | ".join(f"{auc:.4f} | -" for _ in batches) + " |")
    return lines


def table(res: dict) -> list[str]:
    o = res["overrides"]
    return [f"torch-rechub {res['venv']['torch_rechub']} on torch {res['venv']['torch']} (its own venv); "
            f"{res['epochs']} epochs; seeds {res['seeds']} with {res['threads'][0]} thread(s), the first seed with "
            f"{', '.join(map(str, res['threads'][1:])) or 'no other'} thread(s); mose's overrides: "
            + (" ".join(f"`{x}`" for x in o) if o else "none (the default config, its optim recipe)") + ".", "",
            *speed_table(res), "", "Test AUC per task (mean ± half-range over the seeds):", "", *auc_table(res)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mmoe", "ple"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1],
                        help="the first for every run, the others for the speed runs (--speed-batches, first seed)")
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--speed-batches", type=int, nargs="+", default=list(SPEED_BATCHES))
    parser.add_argument("--child-ours", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for our side, e.g. data.batch_size=1024")
    args = parser.parse_args(argv)
    if args.child_ours:
        import json

        print(json.dumps(ours(args.child_ours, args.data_dir, args.epochs, args.seed, args.threads[0],
                              args.overrides)))
        return
    res = run(args.models, args.epochs, args.seeds, args.threads, args.overrides, args.batches, args.speed_batches)
    print("\n".join(table(res)))


if __name__ == "__main__":
    main()
