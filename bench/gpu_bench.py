"""GPU throughput: training / inference events/s per precision and batch, the loader alone, FLOP/s vs a matmul peak.

    python bench/gpu_bench.py                  # on a GPU: < 5 minutes; writes its section of docs/performance.md
    python bench/gpu_bench.py --quick          # tiny, CPU, fp32 only, seconds: checks that the script runs
    python bench/gpu_bench.py --device cpu --batches 4096 --threads 1   # the same measurement on this CPU

Each model (``--models``, default MMoE, PLE, MoSE, POSO) is composed by Hydra as ``mose-train
model=<name> data=synthetic`` would (``bench/train_bench.build``) on synthetic data prepared once in
a temp folder, moved to the device, and per precision (``32-true``, ``16-mixed``, ``bf16-mixed``;
without CUDA fp32 only) and batch (``--batches``, default 4096 8192 16384 32768 65536 events):

- **train**: loss + backward + fused AdamW step in a plain loop (``torch.autocast`` for the mixed
  precisions, a ``GradScaler`` for ``16-mixed``), on batches gathered and copied to the device
  before the clock (the model alone; the loader is measured apart); events/s over ``--steps``
  steps after ``--warmup``, the device synchronised at both ends;
- **inference**: eval-mode forward under ``torch.inference_mode`` (and autocast), same batches;
- **FLOP/s**: ``FlopCounterMode`` counts one fp32 training step (forward + backward) at the first
  batch, scaled linearly to the others; achieved FLOP/s over the training step time, as a share of
  the matmul peak of the precision's compute dtype (fp32, fp16, bf16) measured in the same run;
- **loader**: the memory-mapped prepared arrays -> batch gathering (``__getitems__``, as the
  DataLoader calls it) -> pinned host tensors -> ``.to(device, non_blocking=True)``, in the main
  process, events/s; beside it the ratio to the fastest model's training events/s at that batch
  (the loader should be >= 5x, so that the device never waits on data).

MoSE trains on the per-stream layout: a batch of B events is B / stream_len windows, and events
count its scored steps. FlopCounterMode has no formula for the LSTM kernels, so MoSE has no FLOP
share. A batch that does not fit in device memory is reported as OOM; measurements that would start after
``--budget`` seconds (default 270, so the whole command stays under 5 minutes) are skipped and marked so.

Results go to ``bench/results/gpu_bench.json`` and the "GPU benchmark" section of
``docs/performance.md`` (``bench/run_all.py`` renders the same section from the JSON); ``--quick``
writes neither unless ``--out`` / ``--json`` are given.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, environment
from train_bench import matmul_peak, step_flops, sync

DEFAULT_MODELS = ["mmoe", "ple", "mose", "poso"]
DEFAULT_BATCHES = [4096, 8192, 16384, 32768, 65536]
PRECISIONS = ["32-true", "16-mixed", "bf16-mixed"]
AUTOCAST = {"32-true": None, "16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}
JSON_PATH = ROOT / "bench/results/gpu_bench.json"
DOC = ROOT / "docs/performance.md"
HEADING = "## GPU benchmark"


def positions(n: int, batch: int, rng: np.random.Generator) -> list[int]:
    """``batch`` random positions of a split of ``n`` (with replacement where the split is smaller)."""
    return rng.choice(n, batch, replace=batch > n).tolist()


def rows_per_batch(dm, batch: int) -> int:
    """Dataset rows making a batch of ``batch`` events: windows of ``stream_len`` steps for per-stream data."""
    ds = dm.splits["train"]
    if hasattr(ds, "rows"):  # per-stream chunks
        return max(1, batch // ds.rows.shape[1])
    return batch


def to_device(batch: dict, device: torch.device) -> dict:
    if device.type != "cuda":
        return batch
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}


def scored(batch: dict) -> int:
    return int(batch["mask"].sum()) if "mask" in batch else len(batch["labels"])


def loader(dm, batch: int, device: torch.device, steps: int, seed: int = 0) -> dict:
    """Events/s from the memory-mapped arrays to (pinned) device tensors, non_blocking copies."""
    ds = dm.splits["train"]
    rng = np.random.default_rng(seed)
    rows = rows_per_batch(dm, batch)
    to_device(ds.__getitems__(positions(len(ds), rows, rng)), device)  # warm-up: page cache, pinned allocator
    sync(device)
    events, start = 0, time.perf_counter()
    for _ in range(steps):
        out = to_device(ds.__getitems__(positions(len(ds), rows, rng)), device)
        events += scored(out)
    sync(device)
    return {"events_per_s": events / (time.perf_counter() - start)}


def train_and_infer(module, batches: list[dict], device: torch.device, precision: str, steps: int,
                    warmup: int) -> dict:
    """Training and inference events/s of ``module`` on device-resident ``batches`` (cycled)."""
    dtype = AUTOCAST[precision]
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3, fused=True)  # as module.configure_optimizers
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")

    def train_step(batch) -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            losses, _, _, aux = module._step(batch)
            loss, _ = module.combined_loss(losses, aux)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    def timed(fn) -> float:
        for i in range(warmup):
            fn(batches[i % len(batches)])
        sync(device)
        start = time.perf_counter()
        for i in range(steps):
            fn(batches[i % len(batches)])
        sync(device)
        return (time.perf_counter() - start) / steps

    def infer(batch) -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32,
                                                    enabled=dtype is not None):
            module(batch)

    events = statistics.mean(scored(b) for b in batches)
    module.train()
    train_s = timed(train_step)
    module.eval()
    infer_s = timed(infer)
    return {"train_events_per_s": events / train_s, "train_step_s": train_s,
            "infer_events_per_s": events / infer_s, "events": events}


def run(models: list[str], batches: list[int], precisions: list[str], device: torch.device, steps: int,
        warmup: int, n_events: int, threads: int, peak_n: int, budget_s: float = float("inf")) -> dict:
    import logging
    import warnings

    import train_bench

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    if device.type != "cuda":
        precisions = [p for p in precisions if p == "32-true"]  # 16-mixed needs CUDA; CPU bf16: train_bench.py
    peak_dtypes = {AUTOCAST[p] or torch.float32 for p in precisions}
    peaks = {str(d).removeprefix("torch."): matmul_peak(d, peak_n, repeats=10, device=device, warmup=3)
             for d in peak_dtypes}
    rows, loads = [], []
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        built = {}  # name -> (module on CPU, datamodule, data config): seeded, the same weights every run
        for name in models:
            if not (ROOT / f"conf/model/{name}.yaml").exists():
                print(f"  {name}: no conf/model/{name}.yaml, skipped", flush=True)
                continue
            base, dm, data, _ = train_bench.build(name, tmp, n_events)
            built[name] = (base, dm, data)
        flops_at = {}  # name -> (batch, FLOPs of one fp32 training step at that batch)
        # batches outermost: where --budget runs out, the largest batches are skipped, not whole models
        for batch in batches:
            for name, (base, dm, data) in built.items():
                ds, layout = dm.splits["train"], data.get("layout")
                rows_n = rows_per_batch(dm, batch)
                # once per layout and batch (MMoE, PLE and POSO read the same per-event arrays)
                if not any(r["layout"] == layout and r["batch"] == batch for r in loads):
                    load = loader(dm, batch, device, steps)
                    loads.append({"layout": layout, "batch": batch, **load})
                    print(f"  loader {layout:10s} batch {batch:6d}: {load['events_per_s']:>12,.0f} ev/s", flush=True)
                for precision in precisions:
                    row = {"model": name, "layout": layout, "precision": precision, "batch": batch}
                    rows.append(row)
                    if time.perf_counter() - t0 > budget_s:  # keep the whole run under its budget
                        row["skipped"] = True
                        print(f"  {name:5s} {precision:10s} batch {batch:6d}: skipped (--budget {budget_s:.0f} s)")
                        continue
                    module = copy.deepcopy(base).to(device)  # fresh weights and optimizer per run
                    try:
                        dev = [to_device(ds.__getitems__(positions(len(ds), rows_n, rng)), device) for _ in range(2)]
                        if name not in flops_at and layout != "per_stream":
                            flops_at[name] = (batch, step_flops(module, dev[0]))
                        row.update(train_and_infer(module, dev, device, precision, steps, warmup))
                        if name in flops_at:
                            fl = flops_at[name][1] * batch / flops_at[name][0]
                            peak = peaks[str(AUTOCAST[precision] or torch.float32).removeprefix("torch.")]
                            row.update(flops_per_step=fl, achieved_flops=fl / row["train_step_s"],
                                       peak_fraction=fl / row["train_step_s"] / peak)
                        print(f"  {name:5s} {precision:10s} batch {batch:6d}: train {row['train_events_per_s']:>12,.0f} "
                              f"ev/s, inference {row['infer_events_per_s']:>12,.0f} ev/s"
                              + (f", {100 * row['peak_fraction']:.1f}% of peak" if "peak_fraction" in row else ""),
                              flush=True)
                    except torch.OutOfMemoryError:
                        row["oom"] = True
                        print(f"  {name:5s} {precision:10s} batch {batch:6d}: OOM", flush=True)
                    finally:
                        dev = None
                        del module
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
    rows.sort(key=lambda r: (models.index(r["model"]), PRECISIONS.index(r["precision"]), r["batch"]))
    loads.sort(key=lambda r: (r["layout"], r["batch"]))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({threads} thread(s))"
    return {"device": name, "peaks": peaks, "peak_n": peak_n, "rows": rows, "loader": loads, "steps": steps,
            "warmup": warmup, "n_events": n_events, "environment": environment(threads),
            "date": datetime.now(timezone.utc).isoformat(timespec="minutes")}


def lines(res: dict, command: str = "python bench/gpu_bench.py") -> list[str]:
    """The docs/performance.md section of one result."""
    peaks = ", ".join(f"{k} {v / 1e12:.2f} TFLOP/s" for k, v in sorted(res["peaks"].items()))
    out = [f"{HEADING} (`{command}`)", "",
           (f"Device: **{res['device']}**; run {res['date']}; {res['environment']}. Matmul peak (`torch.mm` "
            f"{res['peak_n']}x{res['peak_n']}, same run): {peaks}. Plain training loop (loss, backward, fused "
            f"AdamW; autocast for the mixed precisions) on device-resident batches, {res['steps']} steps after "
            f"{res['warmup']} warm-up; synthetic data, {res['n_events']:,} events; MoSE: batch / stream_len "
            "windows, scored steps counted. The FLOP share is of the precision's own matmul peak."), "",
           "| model | precision | batch | train events/s | inference events/s | GFLOP/step | TFLOP/s | % of matmul peak |",
           "|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        if r.get("oom") or r.get("skipped"):
            why = "OOM" if r.get("oom") else "skipped (time budget)"
            out.append(f"| {r['model']} | {r['precision']} | {r['batch']} | {why} | {why} | - | - | - |")
            continue
        fl = (f"{r['flops_per_step'] / 1e9:.2f} | {r['achieved_flops'] / 1e12:.3f} | {100 * r['peak_fraction']:.1f}%"
              if "peak_fraction" in r else "n/a (LSTM) | n/a | n/a")
        out.append(f"| {r['model']} | {r['precision']} | {r['batch']} | {r['train_events_per_s']:,.0f} | "
                   f"{r['infer_events_per_s']:,.0f} | {fl} |")
    out += ["", ("The loader alone (memory-mapped arrays -> batch gathering -> pinned host tensors -> non_blocking "
                 "copies to the device, main process) against the fastest model's training at the same batch:"), "",
            "| layout | batch | loader events/s | fastest training (model, precision) events/s | loader / training |",
            "|---|---|---|---|---|"]
    for load in res["loader"]:
        same = [r for r in res["rows"] if r["batch"] == load["batch"] and r["layout"] == load["layout"]
                and "train_events_per_s" in r]
        if not same:
            continue
        best = max(same, key=lambda r: r["train_events_per_s"])
        out.append(f"| {load['layout']} | {load['batch']} | {load['events_per_s']:,.0f} | "
                   f"{best['train_events_per_s']:,.0f} ({best['model']}, {best['precision']}) | "
                   f"{load['events_per_s'] / best['train_events_per_s']:.1f}x |")
    return out + [""]


def section_lines(path: Path = JSON_PATH) -> list[str]:
    """The section from the saved JSON (for bench/run_all.py); empty if never run."""
    if not path.exists():
        return []
    saved = json.loads(path.read_text())
    return lines(saved, saved.get("command", "python bench/gpu_bench.py"))


def write_section(doc: Path, section: list[str]) -> None:
    """Replace (or append) the "GPU benchmark" section of ``doc``, up to the next ``## `` heading."""
    text = doc.read_text() if doc.exists() else "# Performance\n"
    body = "\n".join(section)
    if HEADING in text:
        a = text.index(HEADING)
        b = text.find("\n## ", a + 1)
        text = text[:a] + body + (text[b:] if b >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + body
    doc.write_text(text if text.endswith("\n") else text + "\n")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="conf/model/<name>.yaml names")
    parser.add_argument("--batches", nargs="+", type=int, default=None, help=f"events per batch ({DEFAULT_BATCHES})")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=PRECISIONS)
    parser.add_argument("--device", default=None, help="cuda (default where available) | cpu")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default 20; --quick 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5; --quick 1)")
    parser.add_argument("--n-events", type=int, default=None, help="synthetic events (default 1e6; --quick 20k)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--budget", type=float, default=270.0,
                        help="seconds after which the remaining measurements are skipped (and marked so)")
    parser.add_argument("--quick", action="store_true", help="tiny, on CPU, fp32: checks the script end to end")
    parser.add_argument("--out", default=None, help="markdown file whose section is rewritten (default "
                                                    "docs/performance.md; --quick: none)")
    parser.add_argument("--json", default=None, help="results JSON (default bench/results/gpu_bench.json; "
                                                     "--quick: none)")
    args = parser.parse_args(argv)
    quick = args.quick
    device = torch.device(args.device or ("cpu" if quick or not torch.cuda.is_available() else "cuda"))
    batches = args.batches or ([256, 512] if quick else DEFAULT_BATCHES)
    steps = args.steps or (3 if quick else 20)
    warmup = args.warmup or (1 if quick else 5)
    n_events = args.n_events or (20_000 if quick else 1_000_000)
    peak_n = 512 if quick else (8192 if device.type == "cuda" else 2048)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (the default; stated here to be sure)
    start = time.perf_counter()
    res = run(args.models, batches, args.precisions, device, steps, warmup, n_events, args.threads, peak_n, args.budget)
    res["command"] = "python bench/gpu_bench.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])
                                                     if (argv if argv is not None else sys.argv[1:]) else "")
    res["seconds"] = time.perf_counter() - start
    section = lines(res, res["command"])
    print("\n".join(section))
    print(f"done in {res['seconds']:.0f} s", flush=True)
    json_path = args.json or (None if quick else str(JSON_PATH))
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(res, indent=1))
    out = args.out or (None if quick else str(DOC))
    if out:
        write_section(Path(out), section)
    return res


if __name__ == "__main__":
    main()
