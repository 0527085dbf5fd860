"""All benchmarks in one run (< 15 minutes on 2 CPU cores); writes docs/performance.md.

    python bench/run_all.py                      # prep 1e5/1e6/1e7, training, inference, peer
    python bench/run_all.py --threads 2 --big    # + the partitioned prep of 1e8 events (~25 min more)
    python bench/run_all.py --quick              # smaller sizes, for checking the scripts

Each part can also run alone (``bench/prep_bench.py``, ``bench/train_bench.py``,
``bench/peer_bench.py``); see bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peer_bench
import prep_bench
import train_bench
from common import ROOT, environment, native_bf16

BIG_JSON = ROOT / "bench/results/prep_big.json"


def prep_profile_lines(n: int) -> list[str]:
    rows = prep_bench.profile(n)
    return ["| function | cumulative s |", "|---|---|"] + [f"| `{name}` | {ct:.2f} |" for name, ct in rows]


def lightning_profile_lines(threads: int) -> list[str]:
    """torch.profiler's top operators of 20 MMoE training steps through Lightning."""
    import tempfile

    import pytorch_lightning as pl
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        module, dm, _, _ = train_bench.build("mmoe", tmp, 200_000)
        trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=25, limit_val_batches=0, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            trainer.fit(module, train_dataloaders=dm.train_dataloader())
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:10]
    return ["| operator | self CPU % | calls |", "|---|---|---|"] + [
        f"| `{e.key}` | {100 * e.self_cpu_time_total / total:.1f}% | {e.count} |" for e in top]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=train_bench.DEFAULT_MODELS)
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e5, 1e6, 1e7])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--big", action="store_true", help="also prepare 1e8 events partitioned (slow)")
    parser.add_argument("--quick", action="store_true", help="small sizes and few steps (script check)")
    parser.add_argument("--out", default=str(ROOT / "docs/performance.md"))
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.epochs, args.seeds = [1e4, 1e5], 1, [0]
    os.environ.setdefault("POLARS_MAX_THREADS", str(args.threads))
    start = time.perf_counter()
    env = environment(args.threads)
    print(env, flush=True)

    print("[1/4] preparation", flush=True)
    prep = prep_bench.run([int(s) for s in args.sizes], big=args.big)
    if args.big:
        big = [r for r in prep["results"] if r["n"] >= 100_000_000]
        BIG_JSON.parent.mkdir(parents=True, exist_ok=True)
        BIG_JSON.write_text(json.dumps({"date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
                                        "environment": env, "results": big,
                                        "generate_s": prep["generate_s"].get(100_000_000)}, indent=1))
    profile_n = int(min(1e6, max(args.sizes)))
    prep_prof = prep_profile_lines(profile_n)

    print("[2/4] training and inference", flush=True)
    train = train_bench.run(args.models, args.threads, steps=10 if args.quick else 30,
                            n_events=50_000 if args.quick else 200_000)
    torch_prof = lightning_profile_lines(args.threads)

    print("[3/4] peer (torch-rechub)", flush=True)
    peer = peer_bench.run(["mmoe", "ple"], args.epochs, args.seeds, args.threads)

    print("[4/4] writing", args.out, flush=True)
    minutes = (time.perf_counter() - start) / 60
    text = render(args, env, prep, prep_prof, profile_n, train, torch_prof, peer, minutes)
    Path(args.out).write_text(text)
    (ROOT / "bench/results").mkdir(exist_ok=True)
    (ROOT / "bench/results/last_run.json").write_text(json.dumps(
        {"prep": prep, "train": {**train, "rows": [{k: v for k, v in r.items()} for r in train["rows"]]},
         "peer": peer, "minutes": minutes}, indent=1, default=str))
    print(text)
    print(f"done in {minutes:.1f} min")


def render(args, env, prep, prep_prof, profile_n, train, torch_prof, peer, minutes) -> str:
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    mem_1e7 = next((r for r in prep["results"] if r["mode"] == "memory" and r["n"] == max(
        int(s) for s in args.sizes)), None)
    lines = [
        "# Performance",
        "",
        "Generated by `python bench/run_all.py` (see bench/README.md); do not edit by hand.",
        "",
        f"Run {date}, {minutes:.1f} minutes. Machine: {env}.",
        "",
        "**No GPU on this machine**: every number is CPU-only (the GPU rows of issue 6, `16-mixed` / "
        "`bf16-mixed` on a GPU with utilisation, were not measured). "
        + ("The CPU has native bf16 (AVX512-BF16 / AMX-BF16), so `bf16-mixed` is measured beside fp32."
           if native_bf16() else "The CPU has no native bf16 (AVX512-BF16 / AMX), so `bf16-mixed` is skipped."),
        "",
        "Absolute numbers move with the load of the machine (the load average at the start is above); "
        "ratios within one run (mose vs torch-rechub, Lightning vs raw loop, fp32 vs bf16) were measured "
        "side by side and are the numbers to compare.",
        "",
        "## 1. Preparation: raw Parquet log -> prepared dataset",
        "",
        "Synthetic events (`data_prep/sources/synthetic.py`, `conf/data/synthetic.yaml` features and prep: "
        "history 20, streams of 32), generated in chunks of users and written to Parquet first (not timed). "
        "Each path runs in a fresh process that reports its own peak RSS; `seconds` is read + prepare + write, "
        "end to end. One call builds both layouts (per-event arrays and the per-stream `stream_rows` / "
        "`stream_scored`). `partitioned` is `data_prep/partitioned.py` (user-hash partitions of 2M rows, "
        "memory-mapped output; its arrays equal the in-memory ones, `tests/test_partitioned.py`).",
        "",
        *prep_bench.table(prep),
        "",
    ]
    if mem_1e7:
        ok = mem_1e7["events_per_s"] >= 1e6
        lines += [f"Target >= 1M events/s at {mem_1e7['n']:.0e} (in-memory): "
                  f"**{'holds' if ok else 'not met'}** ({mem_1e7['events_per_s']:,.0f} events/s).", ""]
    if BIG_JSON.exists():
        big = json.loads(BIG_JSON.read_text())
        lines += [f"### 1e8 events, partitioned (`python bench/prep_bench.py --big`, one run on {big['date']})", "",
                  f"Machine then: {big['environment']}. Raw generation (2 processes) took "
                  f"{(big.get('generate_s') or 0) / 60:.1f} min (not part of the prep time).", "",
                  "| events | seconds | events / s | peak RSS (GiB) | output (GiB) | breakdown (s) |",
                  "|---|---|---|---|---|---|"]
        for r in big["results"]:
            br = ", ".join(f"{k} {v:.0f}" for k, v in r["timings"].items() if k != "total")
            lines.append(f"| {r['n']:.0e} | {r['seconds']:.0f} | {r['events_per_s']:,.0f} | {r['rss_gib']:.2f} | "
                         f"{r['out_gib']:.1f} | {br} |")
        lines.append("")
    else:
        lines += ["The 1e8 partitioned run (`python bench/prep_bench.py --big`) has not been recorded on this "
                  "machine yet.", ""]
    lines += [
        f"Where the in-memory prep spends its time ({profile_n:.0e} events, cProfile, cumulative seconds; "
        "the sum exceeds the total where functions nest):",
        "",
        *prep_prof,
        "",
        "## 2. Training (fp32" + (", bf16-mixed" if train["bf16"] else "") + ") and 4. inference",
        "",
        f"Synthetic data ({train['n_events']:,} events), each model as `mose-train model=<name> data=synthetic` "
        f"composes it; median over {train['steps']} steps after 5 warm-up steps. *Lightning fit*: "
        "`pl.Trainer.fit` (no validation, no logger), scored events per second of step time; *data wait*: "
        "share of that time inside the dataset's batch gathering (memory-mapped fancy indexing; the "
        "identity collate adds nothing); *raw loop*: the same module's loss, backward and AdamW step without "
        "Lightning; GFLOP/step from `torch.utils.flop_counter.FlopCounterMode` (forward + backward of one "
        "step), GFLOP/s over the raw-loop step time, as a share of the matmul peak measured in the same run. "
        "*Inference*: eval-mode forward under `torch.inference_mode`, batches of 8192 test events, batch "
        "gathering included. MoSE counts scored stream steps (per-stream layout, 64 windows of 32 steps).",
        "",
        *train_bench.table(train),
        "",
        "Top operators of 25 MMoE training steps through Lightning (torch.profiler, self CPU time):",
        "",
        *torch_prof,
        "",
        "## 3. Against a peer: torch-rechub on the same KuaiRand sample",
        "",
        "`bench/peer_bench.py`: torch-rechub in its own virtualenv (`bench/.venv-rechub`), trained by its "
        "`MTLTrainer` with its `DataGenerator` loaders on the same prepared arrays (`mose-prep data=kuairand`), "
        "same embedding / expert / tower sizes, batch size, learning rate (Adam, no weight decay) and epochs "
        "as ours, final weights tested on the same test split. mose trains through `pl.Trainer.fit`.",
        "",
        *peer_bench.table(peer),
        "",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
