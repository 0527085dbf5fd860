"""mose vs torch-rechub (a public PyTorch multi-task library) on the same prepared KuaiRand sample.

    python bench/peer_bench.py [--models mmoe ple] [--epochs 3] [--seeds 0 1 2] [--batches 0 2048] [--threads 2]

1. Creates ``bench/.venv-rechub`` (git-ignored) once with ``python -m venv`` and installs
   ``torch==2.13.0 torch-rechub==0.9.0`` there (torch pinned in the same resolve, so rechub's
   ``torch>=1.10`` requirement cannot pull another torch; the venv's torch version is checked).
2. Prepares the KuaiRand sample (``data=kuairand``, ``/work/shared/data/kuairand`` by default)
   once into a temp folder, as ``mose-prep data=kuairand`` does.
3. Per model and seed, in the same run and with the same thread count: mose's model
   (``conf/model/<name>.yaml``, trained by ``pl.Trainer.fit`` as in ``mose-train``: no validation,
   fixed epochs) and torch-rechub's model with the same embedding, expert and tower sizes, batch
   size, learning rate, optimizer (Adam(W) without weight decay) and epochs
   (``bench/peer_rechub.py``, run by the venv's python on the same ``.npy`` arrays). Training
   throughput counts train events x epochs over the time of the training epochs only; test AUC per
   binary task is of the final weights (no early stopping on either side).
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
            "params": sum(p.numel() for p in module.parameters()), "root": str(root), "lr": optim["lr"]}


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


def run(models: list[str], epochs: int = 3, seeds: list[int] | None = None, threads: int = 2,
        overrides: list[str] | None = None, batches: list[int] | None = None) -> dict:
    """Both sides per model, batch size and seed; the first batch size with every seed, others with the first."""
    seeds = seeds or [0, 1, 2]
    batches = batches or [0]  # 0: the data config's batch size
    venv = ensure_venv()
    print(f"  peer venv: torch {venv['torch']}, torch-rechub {venv['torch_rechub']} "
          f"({'created' if venv['created'] else 'reused'}, {venv['setup_s']:.0f}s)", flush=True)
    out = {"venv": venv, "models": {}, "epochs": epochs, "seeds": seeds, "threads": threads}
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            for k, batch in enumerate(batches):
                extra = [*(overrides or []), *([f"data.batch_size={batch}"] if batch else [])]
                rows = []
                for seed in seeds if k == 0 else seeds[:1]:
                    # our side in a child process too, so neither side inherits the other's state
                    a = run_child([__file__, "--child-ours", name, "--data-dir", tmp, "--epochs", str(epochs),
                                   "--seed", str(seed), "--threads", str(threads), "--", *extra])
                    b = run_child([str(PEER_PY), str(ROOT / "bench/peer_rechub.py"), a["root"],
                                   *peer_args(name, a["model"], a["batch"], epochs, seed, threads, a["lr"])])
                    rows.append({"ours": a, "peer": b})
                    print(f"  peer {name} batch {a['batch']} seed {seed}: mose {a['events_per_s']:,.0f} ev/s vs "
                          f"torch-rechub {b['events_per_s']:,.0f} ev/s ({a['events_per_s'] / b['events_per_s']:.1f}x);"
                          " AUC " + ", ".join(f"{t} {a['test_auc'][t]:.4f}/{b['test_auc'].get(t, float('nan')):.4f}"
                                              for t in a["test_auc"]), flush=True)
                out["models"][f"{name} @ {rows[0]['ours']['batch']}"] = rows
    return out


def table(res: dict) -> list[str]:
    lines = [f"torch-rechub {res['venv']['torch_rechub']} on torch {res['venv']['torch']} (its own venv); "
             f"{res['epochs']} epochs, seeds {res['seeds']}, {res['threads']} thread(s); medians over seeds; "
             "AUC as mean ± half-range over seeds.", "",
             "| model | mose params | rechub params | batch | mose train events/s (data wait) "
             "| rechub train events/s (data wait) | ratio "
             "| mose inference events/s | rechub inference events/s | task | mose test AUC | rechub test AUC |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, rows in res["models"].items():
        ours_r = statistics.median(r["ours"]["events_per_s"] for r in rows)
        peer_r = statistics.median(r["peer"]["events_per_s"] for r in rows)
        ours_d = statistics.median(r["ours"]["data_share"] for r in rows)
        peer_d = statistics.median(r["peer"]["data_share"] for r in rows)
        ours_t = statistics.median(r["ours"]["test_events_per_s"] for r in rows)
        peer_t = statistics.median(r["peer"]["inference_events_per_s"] for r in rows)
        for i, task in enumerate(rows[0]["ours"]["test_auc"]):
            a = [r["ours"]["test_auc"][task] for r in rows]
            b = [r["peer"]["test_auc"].get(task, float("nan")) for r in rows]
            fmt = lambda xs: f"{statistics.mean(xs):.4f} ± {(max(xs) - min(xs)) / 2:.4f}"
            head = (f"| {name.split(' @ ')[0]} | {rows[0]['ours']['params']:,} | {rows[0]['peer']['params']:,} | "
                    f"{rows[0]['ours']['batch']} | {ours_r:,.0f} ({100 * ours_d:.0f}%) | {peer_r:,.0f} "
                    f"({100 * peer_d:.0f}%) | **{ours_r / peer_r:.1f}x** | "
                    f"{ours_t:,.0f} | {peer_t:,.0f} |") if i == 0 else "| | | | | | | | | |"
            lines.append(f"{head} {task} | {fmt(a)} | {fmt(b)} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mmoe", "ple"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[0, 2048],
                        help="batch sizes for both sides (0: data.batch_size of conf/data/kuairand.yaml, 512); "
                             "the first with every seed, the others with the first seed")
    parser.add_argument("--child-ours", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for our side, e.g. data.batch_size=1024")
    args = parser.parse_args(argv)
    if args.child_ours:
        import json

        print(json.dumps(ours(args.child_ours, args.data_dir, args.epochs, args.seed, args.threads, args.overrides)))
        return
    res = run(args.models, args.epochs, args.seeds, args.threads, args.overrides, args.batches)
    print("\n".join(table(res)))


if __name__ == "__main__":
    main()
