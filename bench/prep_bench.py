"""Preparation throughput and peak memory: raw Parquet log -> prepared dataset (per-event + per-stream arrays).

    python bench/prep_bench.py [--sizes 1e5 1e6 1e7] [--big]

For each size the synthetic source (``data_prep/sources/synthetic.py``, ``conf/data/synthetic.yaml``
features and prep settings) is generated in chunks of users and written to Parquet once (cached in
``bench/.cache``, not timed). Then, each in a fresh child process that reports its own peak RSS
(``ru_maxrss``):

- **in-memory**: ``pl.read_parquet`` + ``data_prep.prepare.prepare`` (what ``mose-prep`` runs: the
  per-event arrays and the per-stream ``stream_rows``/``stream_scored`` are built by the same call);
- **partitioned**: ``data_prep.partitioned.prepare_partitioned`` (user-hash partitions, memmapped
  output) on the same Parquet.

Prints a table (events/s, peak RSS, output size) with the scaling exponent (slope of log time vs
log n). ``--big`` adds the partitioned prep of 1e8 events (about 30 GB of output; generation of the
raw data alone takes ~10 minutes on 2 cores). ``--profile N`` prints the top functions of the
in-memory prep at N events.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, peak_rss_gib, run_child

CACHE = ROOT / "bench/.cache"
CHUNK = 2_000_000
EVENTS_PER_USER = 200  # as conf/data/synthetic.yaml (200k events, 1000 users)
N_ITEMS = 10_000


def data_config() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "conf/data/synthetic.yaml").read_text())


def raw_dir(n: int) -> Path:
    return CACHE / f"raw-{n:.0e}".replace("+", "")


def _chunk(args: tuple[int, int, int, Path]) -> None:
    import polars as pl

    from data_prep.sources.synthetic import generate

    i, m, chunk, out = args
    ev = generate(n_events=m, n_users=max(10, m // EVENTS_PER_USER), n_items=N_ITEMS, seed=i)
    ev = ev.with_columns(pl.col("user_id") + i * (chunk // EVENTS_PER_USER))  # each chunk its own users
    ev.write_parquet(out / f"part-{i:05d}.parquet")


def generate_raw(n: int, out: Path, chunk: int = CHUNK, workers: int = 2) -> Path:
    """``n`` synthetic events as Parquet files of at most ``chunk`` events (``workers`` processes)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    if (out / "_SUCCESS").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    jobs = [(i, min(chunk, n - start), chunk, out) for i, start in enumerate(range(0, n, chunk))]
    if len(jobs) == 1 or workers == 1:
        for job in jobs:
            _chunk(job)
    else:
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            list(pool.map(_chunk, jobs))
    (out / "_SUCCESS").write_text(str(n))
    return out


def ray_workers_peak_rss_gib() -> float | None:
    """The largest peak RSS (``VmHWM`` in ``/proc/<pid>/status``) of this machine's Ray worker processes."""
    peaks = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes()
            if not (cmd.startswith(b"ray::") or b"default_worker.py" in cmd):  # Ray renames busy workers ray::<task>
                continue
            line = next(x for x in (proc / "status").read_text().splitlines() if x.startswith("VmHWM:"))
        except (OSError, StopIteration):  # gone meanwhile, or not ours to read
            continue
        peaks.append(int(line.split()[1]) / 2**20)  # kB -> GiB
    return max(peaks, default=None)


def child(mode: str, raw: Path, out: Path, rows_per_partition: int, engine: str = "local", workers: int = 2) -> dict:
    import polars as pl

    from data_prep.build import event_spec
    from data_prep.options import PrepOptions

    data = data_config()
    spec = event_spec(data)
    prep = PrepOptions.from_config({**data["prep"], "engine": engine, "workers": workers})
    files = sorted(raw.glob("*.parquet"))
    timings: dict = {}
    if engine == "ray":  # a running Ray instance, as on a cluster: its start is reported, not timed
        import ray

        t = time.perf_counter()
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        timings["ray_init"] = time.perf_counter() - t
    start = time.perf_counter()
    if mode == "memory":
        from data_prep.prepare import prepare

        events = pl.read_parquet(files)
        timings["read"] = time.perf_counter() - start
        prepare(events, spec, out, prep)
        n = events.height
        del events
    else:
        from data_prep.partitioned import prepare_partitioned

        prepare_partitioned(files, spec, out, prep, rows_per_partition=rows_per_partition, timings=timings)
        n = json.loads((out / "manifest.json").read_text())["n_events"]
    seconds = time.perf_counter() - start
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    # the largest worker process: the pool's workers (reaped at its shutdown), or Ray's (not our children: their
    # peak RSS, VmHWM, read from /proc before the instance stops)
    worker_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20 if engine == "processes" else None
    if engine == "ray":
        import ray

        worker_rss = ray_workers_peak_rss_gib()
        ray.shutdown()
    return {"mode": mode if mode == "memory" else f"partitioned-{engine}", "engine": engine, "n": n,
            "seconds": seconds, "worker_rss_gib": worker_rss, "cpu_s": ru.ru_utime + ru.ru_stime, "user_s": ru.ru_utime,
            "sys_s": ru.ru_stime, "rss_gib": peak_rss_gib(),
            "out_gib": size / 2**30,
            "timings": timings}


def touch_cost(gib: float = 1.0, idle_s: float = 6.0, rounds: int = 3) -> dict:
    """Seconds per GiB to fill memory new to this process, medians of ``rounds``: after the machine's free
    pages sat idle for ``idle_s`` (``idle``: on a VM whose balloon reports free pages, the host must back them
    again), and pages the kernel took back a moment before (``reused``). Run in a fresh process
    (``--child touch``)."""
    import statistics

    import numpy as np

    n = int(gib * 2**30) // 8
    out = {"idle": [], "reused": []}
    for _ in range(rounds):
        time.sleep(idle_s)
        for name in ("idle", "reused"):
            a = np.empty(n, dtype=np.int64)
            start = time.perf_counter()
            a.fill(1)
            out[name].append((time.perf_counter() - start) / gib)
            del a
    return {name: statistics.median(v) for name, v in out.items()} | {"rounds": rounds, "idle_s": idle_s}


PHASES = {"data_prep.sequences": ["sort_events", "prior_rows", "gather_windows", "stream_chunks"],
          "data_prep.fit": ["fit"],
          "data_prep.transform": ["transform", "cohort_codes", "personalization_codes"],
          "data_prep.prepare": ["build_arrays"],
          "data_prep.dataset": ["write_dataset"]}


def profile(n: int) -> list[dict]:
    """Wall, user-CPU and kernel-CPU seconds and page faults of the in-memory prep of ``n`` events, per phase.

    Each function of ``PHASES`` is wrapped to read ``getrusage`` around its calls (nested phases
    count in their parent too: everything runs inside ``build_arrays`` except ``write_dataset``);
    the first row is the whole ``prepare``. Run it in a fresh process (``--child profile``).
    """
    import functools
    import importlib
    import resource

    import polars as pl

    from data_prep.build import event_spec
    from data_prep.options import PrepOptions

    rows: dict[str, dict] = {}

    def usage() -> tuple[float, float, float, int]:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return time.perf_counter(), r.ru_utime, r.ru_stime, r.ru_minflt

    def measured(name, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            before = usage()
            try:
                return fn(*args, **kwargs)
            finally:
                row = rows.setdefault(name, {"phase": name, "wall": 0.0, "user": 0.0, "sys": 0.0, "faults": 0})
                for key, a, b in zip(("wall", "user", "sys", "faults"), before, usage()):
                    row[key] += b - a
        return wrapper

    prepare_module = importlib.import_module("data_prep.prepare")
    users = [m for name, m in list(sys.modules.items()) if name.startswith("data_prep")]
    for module_name, names in PHASES.items():
        module = importlib.import_module(module_name)
        for name in names:
            original = getattr(module, name)
            wrapped = measured(name, original)
            for target in users:  # every module that imported the function by name
                if getattr(target, name, None) is original:
                    setattr(target, name, wrapped)
    data = data_config()
    events = pl.read_parquet(sorted(raw_dir(n).glob("*.parquet")))
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        measured("prepare (total)", prepare_module.prepare)(events, event_spec(data), Path(tmp) / "d",
                                                            PrepOptions.from_config(data["prep"]))
    return sorted(rows.values(), key=lambda r: -r["wall"])


def run_profile(n: int) -> list[dict]:
    """``profile(n)`` in a fresh process (raw data generated first if missing)."""
    generate_raw(n, raw_dir(n))
    return run_child([__file__, "--child", "profile", "--n", str(n)])["phases"]


def profile_table(rows: list[dict]) -> list[str]:
    lines = ["| phase | wall s | user CPU s | kernel (sys) CPU s | minor page faults |", "|---|---|---|---|---|"]
    return lines + [f"| `{r['phase']}` | {r['wall']:.2f} | {r['user']:.2f} | {r['sys']:.2f} | {r['faults']:,} |"
                    for r in rows]


def exponent(ns: list[int], ts: list[float]) -> float:
    """Least-squares slope of log(time) vs log(n)."""
    x, y = [math.log(n) for n in ns], [math.log(t) for t in ts]
    mx, my = sum(x) / len(x), sum(y) / len(y)
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)


def run(sizes: list[int], big: bool = False, rows_per_partition: int = 2_000_000,
        partitioned_sizes: list[int] | None = None, rounds: int = 3) -> dict:
    """Each size in memory and partitioned, one fresh process a run; the in-memory prep of the largest size
    ``rounds`` times (its row: the median run, ``rounds_s`` every run's seconds); and :func:`touch_cost`."""
    CACHE.mkdir(parents=True, exist_ok=True)
    partitioned_sizes = partitioned_sizes if partitioned_sizes is not None else sizes
    results = []
    gen_s = {}
    for n in sorted(set(sizes) | set(partitioned_sizes) | ({100_000_000} if big else set())):
        start = time.perf_counter()
        run_child([__file__, "--child", "gen", "--n", str(n)])
        gen_s[n] = time.perf_counter() - start
        modes = ([("memory", n)] if n in sizes else []) + ([("partitioned", n)] if n in partitioned_sizes
                                                            or n == 100_000_000 else [])
        for mode, _ in modes:
            runs = []
            for _ in range(rounds if mode == "memory" and n == max(sizes) else 1):
                with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
                    runs.append(run_child([__file__, "--child", mode, "--raw", str(raw_dir(n)), "--out",
                                           str(Path(tmp) / "d"), "--rows-per-partition", str(rows_per_partition)]))
            r = sorted(runs, key=lambda x: x["seconds"])[len(runs) // 2]
            if len(runs) > 1:
                r["rounds_s"] = [x["seconds"] for x in runs]
            r["events_per_s"] = r["n"] / r["seconds"]
            print(f"  prep {mode:11s} n={n:.0e}: {r['seconds']:.1f}s ({r['user_s']:.1f} user + {r['sys_s']:.1f} sys CPU s), "
                  f"{r['events_per_s']:,.0f} events/s, "
                  f"peak RSS {r['rss_gib']:.2f} GiB, output {r['out_gib']:.2f} GiB", flush=True)
            results.append(r)
        if n >= 20_000_000:
            shutil.rmtree(raw_dir(n), ignore_errors=True)
    slopes = {}
    for mode in ("memory", "partitioned"):
        rs = [r for r in results if r["mode"] == mode and r["n"] < 100_000_000]
        if len(rs) >= 2:
            slopes[mode] = exponent([r["n"] for r in rs], [r["seconds"] for r in rs])
    return {"results": results, "exponents": slopes, "generate_s": gen_s,
            "touch": run_child([__file__, "--child", "touch"])}


def table(res: dict) -> list[str]:
    lines = ["| path | events | seconds | events / s | user CPU s | kernel (sys) CPU s | events / user CPU s "
             "| peak RSS (GiB) | output (GiB) | breakdown (s) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["results"]:
        br = ", ".join(f"{k} {v:.1f}" for k, v in r["timings"].items() if k != "total")
        if "rounds_s" in r:
            br += f"; median of {len(r['rounds_s'])} runs: " + ", ".join(f"{x:.1f}" for x in r["rounds_s"])
        lines.append(f"| {r['mode']} | {r['n']:.0e} | {r['seconds']:.1f} | {r['events_per_s']:,.0f} | "
                     f"{r['user_s']:.1f} | {r['sys_s']:.1f} | {r['n'] / r['user_s']:,.0f} | {r['rss_gib']:.2f} | "
                     f"{r['out_gib']:.2f} | {br} |")
    lines += ["", "Scaling exponent (slope of log seconds vs log events; 1.0 = linear): " + ", ".join(
        f"{m} {s:.2f}" for m, s in res["exponents"].items())]
    if "touch" in res:
        t = res["touch"]
        lines += ["", f"Filling 1 GiB of memory new to a process (`touch_cost`, a fresh process, medians of "
                      f"{t['rounds']}): {t['idle']:.2f} s/GiB after the machine's free memory sat idle for "
                      f"{t['idle_s']:.0f} s, {t['reused']:.2f} s/GiB right after, on pages the kernel had just "
                      "taken back. On a VM whose balloon reports free pages to the host, idle memory must be "
                      "backed again on its first touch (section 'What holds the rest back')."]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="*", type=float, default=[1e5, 1e6, 1e7])
    parser.add_argument("--big", action="store_true", help="also the partitioned prep of 1e8 events")
    parser.add_argument("--rows-per-partition", type=int, default=2_000_000)
    parser.add_argument("--profile", type=float, default=0, help="per-phase wall / user / kernel seconds of the "
                        "in-memory prep at this size")
    parser.add_argument("--engines", nargs="+", choices=["local", "processes", "ray"],
                        help="compare the partitioned prep's engines (2 workers) at --sizes, run alternately "
                             "--rounds times; writes bench/results/prep_engines.json and its section of "
                             "docs/performance.md")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engine", default="local", help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=["gen", "memory", "partitioned", "profile", "touch"], help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--raw", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "gen":
        generate_raw(args.n, raw_dir(args.n))
        print(json.dumps({"rss_gib": peak_rss_gib()}))
        return
    if args.child == "touch":
        print(json.dumps(touch_cost()))
        return
    if args.child == "profile":
        print(json.dumps({"phases": profile(args.n)}))
        return
    if args.child:
        print(json.dumps(child(args.child, Path(args.raw), Path(args.out), args.rows_per_partition, args.engine)))
        return
    if args.engines:
        from common import environment

        env = environment(2)
        for n in args.sizes:
            save_engines(run_engines(int(n), args.engines, args.rounds, args.rows_per_partition), env)
        print("\n".join(engine_lines()))
        return
    if args.profile:
        print("\n".join(profile_table(run_profile(int(args.profile)))))
        return
    from common import environment

    env = environment(2)  # the load average at the start
    res = run([int(s) for s in args.sizes], args.big, args.rows_per_partition)
    print("\n".join(table(res)))
    if args.big:
        save_big(res, env)


BIG_JSON = ROOT / "bench/results/prep_big.json"
ENGINES_JSON = ROOT / "bench/results/prep_engines.json"
ENGINES_HEADING = "### Prep engines"


def run_engines(n: int, engines: list[str], rounds: int, rows_per_partition: int = 2_000_000) -> list[dict]:
    """The partitioned prep of ``n`` events on each engine, ``rounds`` times, the engines alternating (on a
    loaded machine each round sees about the same load); every run a fresh child process."""
    run_child([__file__, "--child", "gen", "--n", str(n)])
    results = []
    for r in range(rounds):
        for engine in engines:
            with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
                res = run_child([__file__, "--child", "partitioned", "--raw", str(raw_dir(n)), "--out",
                                 str(Path(tmp) / "d"), "--rows-per-partition", str(rows_per_partition),
                                 "--engine", engine])
            res["round"] = r
            print(f"  round {r} {engine:9s} n={n:.0e}: {res['seconds']:.1f}s {res['timings']}", flush=True)
            results.append(res)
    if n >= 20_000_000:
        shutil.rmtree(raw_dir(n), ignore_errors=True)
    return results


def save_engines(results: list[dict], env: str) -> None:
    """Keep the engine runs of one size in ``ENGINES_JSON`` (keyed by size) and rewrite their section of
    docs/performance.md (run_all renders the same section from the JSON)."""
    from datetime import datetime, timezone

    saved = json.loads(ENGINES_JSON.read_text()) if ENGINES_JSON.exists() else {}
    saved[str(results[0]["n"])] = {"date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
                                   "environment": env, "results": results}
    ENGINES_JSON.parent.mkdir(parents=True, exist_ok=True)
    ENGINES_JSON.write_text(json.dumps(saved, indent=1))
    doc = ROOT / "docs/performance.md"
    text = doc.read_text()
    section = "\n".join(engine_lines()) + "\n"
    if ENGINES_HEADING in text:
        a = text.index(ENGINES_HEADING)
        b = min(i for i in (text.find("\n### ", a + 1), text.find("\n## ", a + 1), text.find("\nWhere the", a + 1),
                            len(text)) if i >= 0) + 1
        text = text[:a] + section + text[b:]
    else:
        a = text.index("Where the in-memory prep spends")
        text = text[:a] + section + "\n" + text[a:]
    doc.write_text(text)


def engine_lines() -> list[str]:
    """The docs/performance.md section of ``ENGINES_JSON``: per size and engine, the median of the rounds."""
    import statistics

    if not ENGINES_JSON.exists():
        return []
    lines = [f"{ENGINES_HEADING} (`python bench/prep_bench.py --engines local processes ray --sizes 1e7`)", "",
             ("The partitioned prep (partitions of 2M rows) on each `data.prep.engine`, 2 workers, the engines run "
              "alternately in fresh processes; medians (min-max) of the rounds. `ray` joins a local Ray instance "
              "started before the clock (its start, `ray_init`, not timed, as on a running cluster). Peak RSS: the "
              "driver process; `worker` the largest worker process (`processes`: the pool's; `ray`: Ray's workers, their VmHWM)."),
             "", ("| engine | events | rounds | seconds, median (min-max) | events / s | speed-up vs local | "
                  "driver peak RSS (GiB) | worker peak RSS (GiB) | split / fit / transform / streams (s, median) |"),
             "|---|---|---|---|---|---|---|---|---|"]
    runs = []
    for n, block in sorted(json.loads(ENGINES_JSON.read_text()).items(), key=lambda kv: int(kv[0])):
        by = {}
        for r in block["results"]:
            by.setdefault(r["engine"], []).append(r)
        med = {e: statistics.median(r["seconds"] for r in rs) for e, rs in by.items()}
        for e, rs in by.items():
            secs = [r["seconds"] for r in rs]
            phases = " / ".join(f"{statistics.median(r['timings'][k] for r in rs):.1f}"
                                for k in ("split_pass", "stats_pass", "build_pass", "streams"))
            worker = max((r.get("worker_rss_gib") or 0) for r in rs)
            speed = f"{med['local'] / med[e]:.2f}x" if "local" in med else "-"
            lines.append(f"| {e} | {int(n):.0e} | {len(rs)} | {med[e]:.1f} ({min(secs):.1f}-{max(secs):.1f}) | "
                         f"{int(n) / med[e]:,.0f} | {speed} | {max(r['rss_gib'] for r in rs):.2f} | "
                         f"{f'{worker:.2f}' if worker else '-'} | {phases} |")
        runs.append(f"- {int(n):.0e}: {block['date']}; {block['environment']}")
    lines += ["", "Runs (the load average at the start tells how busy the shared machine was; single runs vary):",
              *runs, ""]
    return lines


def save_big(res: dict, env: str) -> None:
    """Keep the 1e8 result (docs/performance.md shows it: run_all does not repeat the ~30 minute run)."""
    from datetime import datetime, timezone

    big = [r for r in res["results"] if r["n"] >= 100_000_000]
    BIG_JSON.parent.mkdir(parents=True, exist_ok=True)
    BIG_JSON.write_text(json.dumps({"date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
                                    "environment": env, "results": big,
                                    "generate_s": res["generate_s"].get(100_000_000)}, indent=1))


if __name__ == "__main__":
    main()
