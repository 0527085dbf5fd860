"""Training and inference throughput of the model family, data-wait share, and FLOP/s vs a matmul peak.

    python bench/train_bench.py [--models shared_bottom mmoe ple mose poso] [--threads 2] [--steps 30]

Each model is composed by Hydra exactly as ``mose-train model=<name> data=synthetic`` would
(``conf/model/<name>.yaml``, including its data overrides: MoSE trains on the per-stream layout
with its own batch size) and trained on the synthetic data (``--n-events``, prepared once in a
temp folder). Per model and precision (fp32; ``bf16-mixed`` only where the CPU has native bf16,
AVX512-BF16 / AMX), median over timed steps after warm-up:

- **Lightning**: ``pl.Trainer.fit`` (``max_steps``, no validation, no logger/checkpoints), the
  path ``mose-train`` runs; events/s = scored events per second of training step time; the data
  share is the time spent inside the dataset's batch gathering (``__getitems__``, which with the
  identity collate is all the DataLoader does) over the total;
- **raw loop**: the same module's loss + backward + AdamW step in a plain loop (what the
  Lightning path costs on top is the difference);
- **FLOP/s**: ``torch.utils.flop_counter.FlopCounterMode`` counts one training step (forward +
  backward) and divides by the raw-loop step time; as a fraction of the fp32 (and bf16) matmul
  peak measured in the same run (``torch.mm`` of 2048 x 2048);
- **inference**: eval-mode forward under ``torch.inference_mode`` in batches of 8192 events,
  including batch gathering from the memory-mapped arrays.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, Timed, native_bf16

DEFAULT_MODELS = ["shared_bottom", "mmoe", "ple", "mose", "poso"]


def compose(name: str, data_dir: str, n_events: int) -> tuple[dict, dict]:
    """The resolved ``(model, data)`` configs of ``mose-train model=<name> data=synthetic``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose("train", overrides=[f"model={name}", "data=synthetic", f"paths.data_dir={data_dir}",
                                                f"data.source.n_events={n_events}"])
    return OmegaConf.to_container(cfg.model, resolve=True), OmegaConf.to_container(cfg.data, resolve=True)


def build(name: str, data_dir: str, n_events: int):
    from data_prep.build import ensure_prepared, event_spec
    from data_prep.dataset import read_manifest
    from mose.module import MultiTaskModule
    from mose.nn.embeddings import InputSpec
    from mose.train import build_datamodule

    model, data = compose(name, data_dir, n_events)
    ensure_prepared(data)
    manifest = read_manifest(data["dir"])
    torch.manual_seed(0)
    module = MultiTaskModule(model=model, input_spec=asdict(InputSpec.from_manifest(manifest)),
                             tasks=event_spec(data).to_dict()["tasks"], task_stats=manifest["task_stats"],
                             cohorts=manifest["cohorts"], lr=5e-3)
    dm = build_datamodule(data)
    dm.setup()
    return module, dm, data, model


def scored(batch: dict) -> int:
    return int(batch["mask"].sum()) if "mask" in batch else len(batch["labels"])


def lightning_fit(module, dm, steps: int, warmup: int, precision: str) -> dict:
    """Events/s and data-wait share of ``Trainer.fit`` over ``steps`` steps (after ``warmup``)."""
    import pytorch_lightning as pl

    class Clock(pl.Callback):
        """Per-step wall and data time (batch start to next batch start) after ``warmup`` steps."""

        def __init__(self) -> None:
            self.starts, self.data, self.events = [], [], 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx >= warmup:
                self.starts.append(time.perf_counter())
                self.data.append(timer.seconds)
                self.events += scored(batch)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.end, self.data_end = time.perf_counter(), timer.seconds

    ds = dm.splits["train"]
    timer = Timed(ds)
    clock = Clock()
    trainer = pl.Trainer(accelerator="cpu", devices=1, precision=precision, max_steps=warmup + steps,
                         limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[clock])
    trainer.fit(module, train_dataloaders=dm.train_dataloader())
    del ds.__getitems__
    # medians over steps: robust to other jobs' bursts on a shared machine
    step_s = np.diff([*clock.starts, clock.end])
    data_s = np.diff([*clock.data, clock.data_end])
    med = float(np.median(step_s))
    return {"events_per_s": clock.events / len(step_s) / med, "step_s": med,
            "data_share": float(np.median(data_s)) / med}


def raw_loop(module, dm, steps: int, warmup: int, bf16: bool, seed: int = 0) -> dict:
    """Events/s of loss + backward + AdamW in a plain loop; per-step median seconds."""
    ds = dm.splits["train"]
    rng = np.random.default_rng(seed)
    opt = module.configure_optimizers()  # the optimizer mose-train uses (fused AdamW)
    opt = opt["optimizer"] if isinstance(opt, dict) else opt  # optim.warmup_steps: the scheduler is not run here
    module.train()
    bs = dm.batch_size
    batches = [ds.__getitems__(rng.choice(len(ds), min(bs, len(ds)), replace=False).tolist())
               for _ in range(min(steps, 8))]

    def step(batch) -> int:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            losses, logits, _, aux = module._step(batch)
            loss, _ = module.combined_loss(losses, aux)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return len(logits)

    for i in range(warmup):
        step(batches[i % len(batches)])
    times, events = [], 0
    for i in range(steps):
        start = time.perf_counter()
        events += step(batches[i % len(batches)])
        times.append(time.perf_counter() - start)
    med = statistics.median(times)
    return {"events_per_s": events / steps / med, "step_s": med, "batch": batches[0]}


def expert_layer(batch: int, in_dim: int, groups: int = 4, hidden: tuple = (128, 64), repeats: int = 30) -> dict:
    """Forward + backward ms of MMoE's expert layer: ``GroupedMLP`` (addmm / baddbmm over stacked weights) vs a
    Python list of ``nn.Linear`` MLPs (torch-rechub's form), same sizes."""
    from torch import nn

    from mose.nn.experts import GroupedMLP

    x = torch.randn(batch, in_dim, requires_grad=True)
    grouped = GroupedMLP(groups, in_dim, list(hidden))
    dims = [in_dim, *hidden]
    listed = nn.ModuleList(nn.Sequential(*[m for a, b in itertools.pairwise(dims) for m in (nn.Linear(a, b), nn.ReLU())])
                           for _ in range(groups))
    out = {}
    for name, fn in [("grouped", lambda: grouped(x)), ("list", lambda: torch.stack([m(x) for m in listed], 1))]:
        for _ in range(3):
            fn().sum().backward()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn().sum().backward()
            times.append(time.perf_counter() - start)
        out[name] = 1e3 * statistics.median(times)
    return out


def step_breakdown(module, batch, repeats: int = 20) -> dict:
    """Median ms of forward (+ loss), backward and optimizer step of one raw training step."""
    opt = module.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    module.train()
    parts = {"forward": [], "backward": [], "optimizer": []}
    for i in range(repeats + 3):
        t0 = time.perf_counter()
        losses, _, _, aux = module._step(batch)
        loss, _ = module.combined_loss(losses, aux)
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        if i >= 3:
            for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
                parts[k].append(1e3 * v)
    return {k: statistics.median(v) for k, v in parts.items()}


def step_flops(module, batch) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    module.train()
    with FlopCounterMode(display=False) as counter:
        losses, _, _, aux = module._step(batch)
        loss, _ = module.combined_loss(losses, aux)
        loss.backward()
    module.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def sync(device: torch.device) -> None:
    """Wait for the device's queued kernels (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CPU = torch.device("cpu")


def matmul_peak(dtype=torch.float32, n: int = 2048, repeats: int = 7, device: torch.device = CPU,
                warmup: int = 1) -> float:
    """Median FLOP/s of an ``n x n`` matmul on ``device`` (the practical dense peak at the set thread count)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(warmup):
        torch.mm(a, b)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


def inference(module, dm, batch_size: int = 8192, max_batches: int = 6) -> dict:
    """Eval-mode scoring: events/s over the test split, batch gathering included."""
    ds = dm.splits["test"]
    module.eval()
    n = len(ds)
    order = np.arange(n)
    with torch.inference_mode():
        module._step(ds.__getitems__(order[:batch_size].tolist()))  # warm-up
        start, events = time.perf_counter(), 0
        for i in range(0, min(n, batch_size * max_batches), batch_size):
            batch = ds.__getitems__(order[i:i + batch_size].tolist())
            out = module(batch)
            events += scored(batch)
            del out
        elapsed = time.perf_counter() - start
    return {"events_per_s": events / elapsed}


def run(models: list[str], threads: int = 2, steps: int = 30, warmup: int = 5, n_events: int = 200_000,
        bf16: bool | None = None) -> dict:
    import logging
    import warnings

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    bf16 = native_bf16() if bf16 is None else bf16
    peak32 = matmul_peak(torch.float32)
    peak16 = matmul_peak(torch.bfloat16) if bf16 else None
    rows, mmoe_in = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            if not (ROOT / f"conf/model/{name}.yaml").exists():
                print(f"  train {name}: no conf/model/{name}.yaml, skipped", flush=True)
                continue
            for precision in ["32-true"] + (["bf16-mixed"] if bf16 else []):
                module, dm, data, model = build(name, tmp, n_events)
                n_params = sum(p.numel() for p in module.parameters())
                if name == "mmoe":
                    mmoe_in = module.model.embed.out_dim
                raw = raw_loop(module, dm, steps, warmup, precision == "bf16-mixed")
                batch = raw.pop("batch")
                flops = step_flops(module, batch)
                breakdown = step_breakdown(module, batch) if precision == "32-true" else None
                module, dm, _, _ = build(name, tmp, n_events)  # fresh weights and optimizer for Lightning
                fit = lightning_fit(module, dm, steps, warmup, precision)
                inf = inference(module, dm)
                peak = peak16 if precision == "bf16-mixed" else peak32
                achieved = flops / raw["step_s"]
                rows.append({
                    "model": name, "precision": precision, "params": n_params, "layout": data.get("layout"),
                    "batch": dm.batch_size, "fit": fit, "raw": raw, "inference": inf, "flops_per_step": flops,
                    "achieved_flops": achieved, "peak_flops": peak, "peak_fraction": achieved / peak,
                    "config": {k: v for k, v in model.items() if k != "_target_"}, "breakdown": breakdown,
                })
                print(f"  train {name:14s} {precision:10s}: Lightning {fit['events_per_s']:>9,.0f} ev/s "
                      f"(data {100 * fit['data_share']:.1f}%), raw loop {raw['events_per_s']:>9,.0f} ev/s, "
                      f"{achieved / 1e9:.1f} GFLOP/s = {100 * achieved / peak:.1f}% of peak, "
                      f"inference {inf['events_per_s']:,.0f} ev/s", flush=True)
    experts = {b: expert_layer(b, mmoe_in) for b in (512, 1024)} if mmoe_in else {}
    return {"rows": rows, "experts": experts, "experts_in": mmoe_in, "peak_fp32": peak32, "peak_bf16": peak16, "bf16": bf16, "threads": threads,
            "steps": steps, "n_events": n_events}


def short_config(cfg: dict) -> str:
    keys = ("embed_dim", "n_experts", "expert", "bottom", "levels", "n_specific", "n_shared", "tower",
            "bottom_hidden", "expert_hidden", "tower_hidden", "attn_dim", "mha")
    return ", ".join(f"{k}={cfg[k]}" for k in keys if k in cfg)


def flops(r: dict) -> str:
    if r["layout"] == "per_stream":  # FlopCounterMode has no formula for the LSTM kernels
        return "n/a (LSTM) | n/a | n/a"
    return f"{r['flops_per_step'] / 1e9:.2f} | {r['achieved_flops'] / 1e9:.1f} | {100 * r['peak_fraction']:.1f}%"


def table(res: dict) -> list[str]:
    lines = [
        f"Matmul peak (torch.mm 2048x2048, {res['threads']} threads): fp32 {res['peak_fp32'] / 1e9:.0f} GFLOP/s"
        + (f", bf16 {res['peak_bf16'] / 1e9:.0f} GFLOP/s" if res["peak_bf16"] else "")
        + ("" if res["bf16"] else "; bf16-mixed skipped: this CPU has no native bf16 (AVX512-BF16/AMX)"),
        "",
        "| model (sizes) | params | precision | batch | Lightning fit events/s | data wait | raw loop events/s "
        "| Lightning / raw | GFLOP/step | GFLOP/s | % of matmul peak | inference events/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['model']} ({short_config(r['config'])}) | {r['params']:,} | {r['precision']} | {r['batch']}"
            f"{' windows' if r['layout'] == 'per_stream' else ''} | {r['fit']['events_per_s']:,.0f} | "
            f"{100 * r['fit']['data_share']:.1f}% | {r['raw']['events_per_s']:,.0f} | "
            f"{r['fit']['events_per_s'] / r['raw']['events_per_s']:.2f} | {flops(r)} | "
            f"{r['inference']['events_per_s']:,.0f} |")
    return lines


def detail_table(res: dict) -> list[str]:
    lines = ["| model | forward + loss ms | backward ms | optimizer ms | batch |", "|---|---|---|---|---|"]
    for r in res["rows"]:
        if r["breakdown"]:
            b = r["breakdown"]
            lines.append(f"| {r['model']} | {b['forward']:.1f} | {b['backward']:.1f} | {b['optimizer']:.1f} | "
                         f"{r['batch']} |")
    if res.get("experts"):
        lines += ["", f"MMoE's expert layer (4 experts, {res['experts_in']} -> 128 -> 64, forward + backward, "
                  "median ms):", "",
                  "| batch | GroupedMLP (addmm / baddbmm, mose.nn.experts) | list of nn.Linear MLPs | grouped / list time |",
                  "|---|---|---|---|"]
        for b, e in res["experts"].items():
            lines.append(f"| {b} | {e['grouped']:.2f} | {e['list']:.2f} | {e['grouped'] / e['list']:.2f} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="conf/model/<name>.yaml names")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--n-events", type=int, default=200_000)
    parser.add_argument("--no-bf16", action="store_true", help="skip bf16-mixed even where the CPU has it")
    args = parser.parse_args(argv)
    res = run(args.models, args.threads, args.steps, n_events=args.n_events, bf16=False if args.no_bf16 else None)
    print("\n".join(table(res) + [""] + detail_table(res)))


if __name__ == "__main__":
    main()
