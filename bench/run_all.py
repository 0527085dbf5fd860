"""All benchmarks in one run (< 15 minutes on 2 CPU cores); writes docs/performance.md.

    python bench/run_all.py                      # prep 1e5/1e6/1e7, training, inference, peer
    python bench/run_all.py --threads 2 --big    # + the partitioned prep of 1e8 events (~25 min more)
    python bench/run_all.py --quick              # smaller sizes, for checking the scripts
    python bench/run_all.py --only train         # re-run one part, the others from the last run

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
import gpu_bench
import peer_bench
import prep_bench
import train_bench
from common import ROOT, environment, native_bf16

BIG_JSON = prep_bench.BIG_JSON


def prep_profile_lines(n: int) -> list[str]:
    return prep_bench.profile_table(prep_bench.run_profile(n))


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
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--big", action="store_true", help="also prepare 1e8 events partitioned (slow)")
    parser.add_argument("--quick", action="store_true", help="small sizes and few steps (script check)")
    parser.add_argument("--out", default=str(ROOT / "docs/performance.md"))
    parser.add_argument("--only", nargs="*", choices=["prep", "train", "peer"],
                        help="re-run only these parts; the others come from bench/results/last_run.json "
                             "(no part: only re-render the page from it)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.epochs, args.seeds = [1e4, 1e5], 1, [0]
    os.environ.setdefault("POLARS_MAX_THREADS", str(args.threads))
    start = time.perf_counter()
    env = environment(args.threads)
    print(env, flush=True)
    last_path = ROOT / "bench/results/last_run.json"
    parts = set(["prep", "train", "peer"] if args.only is None else args.only)
    last = json.loads(last_path.read_text()) if parts != {"prep", "train", "peer"} else {}
    if last:
        print(f"re-running {sorted(parts)}; the other parts from {last_path}", flush=True)

    part_minutes = dict(last.get("part_minutes", {}))
    clock = time.perf_counter()
    print("[1/4] preparation", flush=True)
    if "prep" in parts:
        prep = prep_bench.run([int(s) for s in args.sizes], big=args.big)
        if args.big:
            prep_bench.save_big(prep, env)
        profile_n = int(max(args.sizes))
        prep_prof = prep_profile_lines(profile_n)
    else:
        prep, args.sizes = last["prep"], last.get("sizes", args.sizes)
        profile_n = last.get("profile_n", int(max(args.sizes)))
        prep_prof = last.get("prep_prof") or prep_profile_lines(profile_n)

    if "prep" in parts:
        part_minutes["prep"], clock = (time.perf_counter() - clock) / 60, time.perf_counter()
    print("[2/4] training and inference", flush=True)
    if "train" in parts:
        train = train_bench.run(args.models, args.threads, steps=10 if args.quick else 30,
                                n_events=50_000 if args.quick else 200_000)
        torch_prof = lightning_profile_lines(args.threads)
    else:
        train = last["train"]
        torch_prof = last.get("torch_prof") or lightning_profile_lines(args.threads)

    if "train" in parts:
        part_minutes["train"], clock = (time.perf_counter() - clock) / 60, time.perf_counter()
    print("[3/4] peer (torch-rechub)", flush=True)
    if "peer" in parts:
        peer = peer_bench.run(["mmoe", "ple"], args.epochs, args.seeds, sorted({args.threads, 1}, reverse=True),
                              batches=[512] if args.quick else list(peer_bench.BATCHES))
    else:
        peer = last["peer"]

    if "peer" in parts:
        part_minutes["peer"] = (time.perf_counter() - clock) / 60
    print("[4/4] writing", args.out, flush=True)
    minutes = (time.perf_counter() - start) / 60 + sum(last.get("part_minutes", {}).get(k, 0) for k in
                                                       {"prep", "train", "peer"} - parts)
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if not parts:  # a re-render: the run's own date, machine and duration
        stamp = datetime.fromtimestamp(last_path.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        env, minutes, date = last["env"], last["minutes"], last.get("date", stamp)
    text = render(args, env, prep, prep_prof, profile_n, train, torch_prof, peer, minutes, date)
    if not parts:
        text = text.replace("\nAbsolute numbers", "\nThe text around the tables was re-rendered from that run's "
                            "results (`--only` without parts).\n\nAbsolute numbers", 1)
    elif last:
        text = text.replace("\nAbsolute numbers", f"\nParts {sorted({'prep', 'train', 'peer'} - parts)} are from "
                            f"the previous run ({last.get('env', '?')}); {sorted(parts)} were re-run "
                            "(`--only`).\n\nAbsolute numbers", 1)
    Path(args.out).write_text(text)
    last_path.parent.mkdir(exist_ok=True)
    last_path.write_text(json.dumps(
        {"prep": prep, "prep_prof": prep_prof, "profile_n": profile_n, "sizes": args.sizes, "train": train,
         "torch_prof": torch_prof, "peer": peer, "minutes": minutes, "env": env, "date": date, "part_minutes": part_minutes},
        indent=1, default=str))
    print(text)
    print(f"done in {minutes:.1f} min")


def render(args, env, prep, prep_prof, profile_n, train, torch_prof, peer, minutes, date: str) -> str:
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
    lines += prep_bench.engine_lines()  # bench/results/prep_engines.json (prep_bench.py --engines), if recorded
    lines += [
        f"Where the in-memory prep spends its time ({profile_n:.0e} events, `python bench/prep_bench.py --sizes "
        f"--profile {profile_n:.0e}`: `getrusage` around each phase in a fresh process; nested phases count in "
        "their parent too, everything but `write_dataset` runs inside `build_arrays`):",
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
        "Lightning runs forward and backward inside the optimizer's closure, so the self time of "
        "`Optimizer.step#AdamW.step` is the Python time of the whole step (model code, loss, Lightning "
        "hooks) outside aten operators, not the AdamW update (fused: under 1 ms a step, see the breakdown).",
        "",
        "Per-step breakdown of the raw loop (fp32) and the expert layer alone:",
        "",
        *train_bench.detail_table(train),
        "",
        "## 3. Against a peer: torch-rechub on the same KuaiRand sample",
        "",
        "`bench/peer_bench.py`: torch-rechub in its own virtualenv (`bench/.venv-rechub`), trained by its "
        "`MTLTrainer` with its `DataGenerator` loaders on the same prepared arrays (`mose-prep data=kuairand`), "
        "same embedding / expert / tower sizes, batch size, base learning rate (Adam, no weight decay) and "
        "epochs as ours, final weights tested on the same test split. mose trains through `pl.Trainer.fit` "
        "with the default config, so with its optim recipe (`conf/train.yaml`: the lr scaled linearly from "
        "`optim.ref_batch` 512 to the batch, `mose lr` below, with a warm-up); the peer keeps the base lr at "
        "every batch, as its own trainer does. The sample has 33,368 train events: 3 epochs are 198 optimizer "
        "steps at batch 512, 51 at 2048 and 15 at 8192.",
        "",
        *peer_bench.table(peer),
        "",
        *gpu_bench.section_lines(),  # bench/results/gpu_bench.json (python bench/gpu_bench.py), if recorded
        *findings(prep, train, peer, mem_1e7),
    ]
    return "\n".join(lines) + "\n"


def findings(prep, train, peer, mem) -> list[str]:
    """The targets of issues 6 and 19 against this run's numbers, then what was changed and what holds the rest back."""
    import statistics

    lines = ["## Targets (this run)", ""]
    if mem:
        exp = prep["exponents"].get("memory")
        verdict = "holds" if mem["events_per_s"] >= 1e6 else "not met"
        lines.append(f"- **Prep >= 1M events/s at {mem['n']:.0e}, near-linear**: {verdict} - {mem['events_per_s']:,.0f} "
                     f"events/s wall ({mem['n'] / mem['user_s']:,.0f} per user CPU-second; kernel time "
                     f"{mem['sys_s']:.1f} of {mem['seconds']:.1f} s), scaling exponent "
                     + (f"{exp:.2f}" if exp is not None else "n/a"))
    big = json.loads(BIG_JSON.read_text())["results"] if BIG_JSON.exists() else []
    for r in big:
        lines.append(f"- **1e8 events within 8 GB (partitioned)**: {'holds' if r['rss_gib'] <= 8 else 'not met'} - "
                     f"peak RSS {r['rss_gib']:.2f} GiB, {r['events_per_s']:,.0f} events/s")
    slow = [f"{r['model']} {r['precision']} {100 * r['fit']['data_share']:.1f}%" for r in train["rows"]
            if r["fit"]["data_share"] >= 0.05]
    lines.append("- **Data wait < 5% of step time**: " + ("holds for every model and precision" if not slow
                                                          else "not met for " + ", ".join(slow)))
    by_speed = peer_bench.groups(peer, lambda r: (r["model"], r["batch"], r["threads"]))
    for (name, batch, threads), rows in by_speed.items():
        if batch not in peer_bench.SPEED_BATCHES:
            continue
        ratio = statistics.median(r["ours"]["events_per_s"] for r in rows) / statistics.median(
            r["peer"]["events_per_s"] for r in rows)
        lines.append(f"- **{name} @ {batch}, {threads} thread(s): >= 3x torch-rechub's training events/s**: "
                     f"{'holds' if ratio >= 3 else 'not met'} ({ratio:.2f}x)")
    quality = peer_bench.quality_runs(peer)
    for (name, batch), rows in quality.items():
        base = quality.get((name, min(b for m, b in quality if m == name)))
        if rows is base:
            continue
        short = []
        for task in rows[0]["ours"]["test_auc"]:
            ours = peer_bench.aucs(rows, "ours", task)
            for label, ref in (("mose @ %d" % base[0]["batch"], peer_bench.aucs(base, "ours", task)),
                               (f"torch-rechub @ {batch}", peer_bench.aucs(rows, "peer", task))):
                if peer_bench.worse(ours, ref):
                    short.append(f"{task} {statistics.mean(ours):.4f} vs {label} {statistics.mean(ref):.4f}")
        lines.append(f"- **{name} @ {batch}: test AUC per task no worse than mose @ {base[0]['batch']} and than "
                     f"torch-rechub @ {batch} beyond seed noise** ({len(rows)} seeds; noise: both half-ranges + "
                     f"0.005): " + ("holds" if not short else "not met on " + "; ".join(short)))
    lines += ["", STATIC]
    return lines


STATIC = """## What was changed for speed and quality (issue 6)

Measured during development on this machine, side by side in one process (variants alternated,
medians) or as CPU time, mostly with one core busy with other jobs (1 torch thread).

- **Id embedding init** (`mose/nn/embeddings.py: id_embedding`): id tables start at `N(0, 0.05)`
  instead of torch's `N(0, 1)` (torch-rechub uses `N(0, 1e-4)`). KuaiRand MMoE, 3 epochs, batch
  512, 3 seeds: test AUC is_click 0.677 -> 0.687, long_view 0.644 -> 0.662, like 0.874 -> 0.904,
  is_follow 0.645 -> 0.791; std 1e-4 and 0.01 did as well. Synthetic default MMoE (`mose-train`):
  click 0.717 -> 0.770, like 0.683 -> 0.772. This is what closed the AUC gap to the peer.
- **Pooled history** (`FeatureEmbedding.pooled_history`): the label projection is applied to the
  mean labels instead of every token, items gathered by `index_select` (its backward is ~2x faster
  than the embedding's on CPU): KuaiRand MMoE step 7.38 -> 6.85 ms (batch 512), 27.8 -> 26.0 ms (2048).
- **Grouped layers** (`GroupedLinear`): the bias is added inside `addmm` / `baddbmm` and a stack
  of layers keeps the `(G, B, .)` layout (no permute copies): MMoE step 7.03 -> 6.70 ms, PLE
  10.06 -> 9.72 ms. Rejected after measuring: contiguous outputs (+3%), in-place ReLU (+22%),
  the expert mix as a sum of broadcast products (2x faster alone, 15-25% slower in the step).
- **Gate softmax** (`gate_softmax`): `torch.softmax` over 4-7 experts is slow on CPU (292 vs 136 us
  forward + backward at `(512, 5, 4)`); written out: -1% of an MMoE step.
- **Loss weighting**: fixed and uncertainty weighting no longer collect the model's parameter
  lists every step (only GradNorm / PCGrad read them): 0.28 -> 0.11 ms per step (cProfile).
- **`model.norm`** (`batch` | `layer`, `mose/nn/norm.py`): the peer's BatchNorm, as an option.
  At batch 2048 (48 steps in 3 epochs) it lifts MMoE's is_click AUC from 0.633 to 0.710 (peer
  0.701) but costs ~25% of the step (3 seeds, 1 thread): 68k -> 51k events/s. Off by default.
- **Prep histories** (`gather_windows`): rows of a sliding-window view gathered by fancy indexing;
  `np.take` first copied the whole `(N + K, K)` view: at 1e7 events 3.3-7.3 s -> 0.4-1.0 s (mostly
  kernel time). `hist_item` is stored as int32 (80 instead of 160 bytes per event). Derived cohorts
  (`new_user`, `activity`) are coded from `n_prior` directly, not through strings (4.4 -> 2.1 s at
  1e7). In-memory prep of 1e7 events: 26-29 s -> 19.8 s in the same session.
- **Prep sort** (`sort_events`): one stable `np.lexsort` and one gather instead of
  `DataFrame.sort([user, ts, _row])`: 0.45 s vs 1.23 s at 2e6 events, identical order. On the sorted
  rows, `n_prior` and `user_key` are run positions (`prior_rows`, `rle_id`), not a `rank` over users.
- **Partitioned prep** (`data_prep/partitioned.py`): user-hash partitions, global time cuts and
  train-only vocabularies merged from per-partition fit statistics, per-partition `transform` written at each user's
  global rows into `np.lib.format.open_memmap` arrays, the per-stream arrays in blocks of users,
  an atomic rename; `tests/test_partitioned.py` checks array-by-array equality with the in-memory
  prep.
- **Lightning logging** (`training_step`): the 11 `self.log` calls run only on the steps Lightning
  writes (`log_every_n_steps`): 1.7 s of a 4.4 s KuaiRand epoch before. **Fused AdamW**: optimizer
  step 4.6 -> 0.6 ms. **Batch gathering**: plain `ndarray` views of the memory maps and `np.take`:
  2.27 -> 1.0 ms per batch of 1024.
- **Threads**: every bench fixes `torch.set_num_threads`; with more threads than free cores a step
  slows 10-30x. **torch.compile** of the experts and towers was measured and not adopted: 106 s to
  compile here and no faster steps afterwards. **No GPU here**: pinned memory / `non_blocking`
  copies were not measured (the DataModule keeps its `pin_memory` option).

## Issue 19: what was changed, what was measured and rejected

Measured side by side (variants alternated in one session) on the 2-core AMD EPYC machine of
2026-12-01; the sweep behind the recipe is docs/benchmarks/large_batch.md.

- **Writes around the page cache** (`data_prep/npy_writer.py`): every array of 32 MiB or more of the
  in-memory prep is written with `O_DIRECT` from a reused, page-aligned staging buffer (two of them: a background thread
  writes one while the prep fills the other), so the kernel allocates no page-cache pages for the 2.5 GB
  of output; the histories are appended block by block as `gather_windows` makes them, every other
  array is saved in the background as soon as `transform` returns it, while the user layout, the stream
  chunks and the checksum are computed. A file system without `O_DIRECT` gets the same bytes through
  ordinary writes; smaller arrays go through `np.save` (with every array direct, a 3,000-event prep
  took 93 ms instead of 45-57 ms). Also: the `(user, ts)` sort as one stable `argsort` of a single int64 key (0.61 vs
  0.91 s for the lexsort at 1e7), string cohorts coded without copying the strings. In-memory prep of
  1e7 events, the commit before (ff859b9) and after alternated over 3 rounds in fresh processes
  (`prep_bench.py --child memory`): median 20.4 -> 13.2 s wall (19.5-22.4 -> 13.0-13.8), kernel CPU
  14.3 -> 7.0 s, peak RSS 4.34 -> 3.25 GiB. One 1.2 GB array: `np.save` 3.5-4.0 s of kernel CPU, the
  `O_DIRECT` writer 0.9-1.3 s wall with the CPU idle. (Before that, the histories were gathered into
  memory maps of their files: 21.6 -> 17.8 s over 6 rounds.)
- **The optim recipe** (`conf/train.yaml`): the lr scaled linearly above `data.ref_batch`, reached
  over 5 warm-up steps; batches at or below `ref_batch` train as before. BatchNorm, sqrt scaling,
  larger or smaller embedding lrs and more epochs were measured against it (the sweep).
- **Rejected for the training step** (KuaiRand MMoE, 1 thread): the first expert layer computed
  transposed so the second needs no layout copy: expert stack forward + backward 4.65 -> 6.17 ms at
  512, 18.0 -> 24.8 ms at 2048; `torch.compile(model)`: 26 s for the first step with a cold cache,
  3.4 s with the inductor cache of an earlier run, then 58.5 ms a step against 43.7 ms eager at 2048
  (alternated in one process); the input width padded from 113 to 112 / 128 columns: the first
  layer 2.83 -> 2.48 / 3.04 ms at 512, within 5% at 2048; glibc `mallopt` (mmap threshold 32 MiB,
  trim 1 GiB): minor faults per 40 steps 20-33k -> 2.5-4k, step time unchanged within the run's noise;
  the history pool as `F.embedding_bag(mode="mean")` (one fused gather + mean, dense or sparse
  gradients for a sparse optimizer) instead of `index_select` + masked mean: forward + backward
  0.78 -> 1.53 / 1.15 ms at 512, 4.12 -> 4.95 / 5.11 ms at 2048.

## What holds the rest back (profiler numbers)

- **Prep at 1e7** (target 1M events/s): what is left of the kernel time is memory new to the
  process. This VM's balloon reports free pages to the host, which backs them again on their next first
  touch: filling 1.2 GB took 0.15 s when the kernel had freed those pages a moment before and 2.4-3.0 s
  after they sat free for 6 s (`touch_cost` in section 1 measures it in each run: 1.6 vs 0.2 s/GiB),
  so every GiB the prep allocates costs 1.5-2.5 s of kernel time, whatever the page size (huge pages: faults 942k -> 107k,
  kernel time unchanged). The prep still allocates ~3.5 GiB (minor faults x page size; peak RSS 3.25
  GiB: the input frame, its sorted copy, the arrays), i.e. ~6-7 s of its ~13 s; its user CPU is ~10 s
  on 2 cores (the sort's gather of every column 1.8 s, the fit 0.8 s, the codes). With pages at the
  reused cost (0.2 s/GiB) the kernel time would be ~6 s less (an estimate: not measurable on this VM,
  whose balloon cannot be turned off from inside). Left: fewer bytes, which
  is a change of the prepared format (int32 for the other id arrays: user, item, cat, cohorts, pcode,
  88 -> ~48 bytes per event; histories derived from `item` at batch time instead of stored, 120 bytes
  per event).
- **Training vs torch-rechub** (target 3x at 512 and 2048, 1 and 2 threads): the step itself is
  too slow on this CPU, not what surrounds it. `pl.Trainer.fit` against a raw loop of the same
  module (loss, backward, fused AdamW, batches gathered from the same split), alternated in one
  process: an epoch takes 1.04x / 1.16x the raw loop's at 2048 / 512 with 2 threads and 1.14x /
  1.09x with 1 (medians of 3-5 rounds), so with Lightning and the loader at zero cost the ratios
  above would be at most 2.0-2.7x. A KuaiRand MMoE step is 0.63 MFLOP per event (`FlopCounterMode`,
  forward + backward; PLE 0.61) against a fp32 `torch.mm` 2048x2048 peak of 75-80 GFLOP/s with 1
  thread and 117-150 with 2 (repeated minutes apart; the CPU run of the GPU benchmark below the
  peer section); at 2048 mose trains at 73k events/s with 2 threads (46 GFLOP/s, 31-39% of the peak)
  and 44k with 1 (28 GFLOP/s, 35-37%), where 3x the peer needs 58 and 48 GFLOP/s (39-50% and
  60-65%). The peer runs at ~11% of the peak (its 81-column input, ~0.52 MFLOP per event). Inside
  our step (torch.profiler): the expert and tower products at 42-71 GFLOP/s a core, memory-bound
  passes over the `(B, 4, 128)` activations (ReLU forward / backward 0.4-0.6 ms each at 512, a 1 MiB
  layout copy 0.44 ms) and the history embedding's backward (`index_add_`, 2.4 ms at 2048).
  Fusing the elementwise passes into the products needs a compiler that pays off here
  (torch.compile does not, above) or custom kernels. This machine's speed also drifts: the same raw
  step took 21 ms and 34 ms at 2048 (2 threads) half an hour apart, which is why only ratios
  measured side by side are compared.
- **Large batches** (docs/benchmarks/large_batch.md): at 8192 (15 optimizer steps on the 33k-event
  sample) no recipe measured keeps `like` and `is_follow` at the batch-512 level; more epochs do not
  either (12 epochs: lower). torch-rechub loses the same two tasks there. On 1e6 synthetic events
  (98 steps an epoch at 8192) the default recipe is level with batch 1024 at 6 epochs (mean AUC
  +0.0001 paired over 3 seeds; the unscaled lr -0.0063) and halves the loss at 3 (-0.014 vs -0.028).
"""


if __name__ == "__main__":
    main()
