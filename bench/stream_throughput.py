"""MoSE training throughput: per-stream layout vs per-event histories; grouped vs separate LSTM experts.

    python bench/stream_throughput.py [--threads 2] [--repeats 5] [--steps 8]

1. Layouts, at equal model and LSTM sizes (``conf/model/mose.yaml``) on the sequential benchmark
   (``conf/data/sequential.yaml``, fewer users): training throughput in scored events per second
   (fp32; batch gathering + forward + masked loss + backward + AdamW step, median over repeats).
   *per-stream* serves ``data.windows=chunks``: one LSTM pass over a chunk of T steps scores every
   new step of it (T - overlap of T). *per-event history* serves ``data.windows=next_step``: each event
   gets its own window of its last T events, of which only the last is scored; this is the per-event
   history form of the same model and computation, so it pays a T-step pass per scored event.
2. The expert layer: ``GroupedLSTM`` (G LSTMs as one fused kernel call with block-diagonal weights)
   vs a Python list of G ``nn.LSTM`` (forward + backward of one batch, median time).

Prints a markdown table and writes it to ``docs/benchmarks/stream_throughput.md``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from data_prep.build import event_spec
from data_prep.dataset import read_manifest
from data_prep.options import PrepOptions
from data_prep.prepare import prepare
from mose.data.datasets import StreamSplit
from mose.module import MultiTaskModule
from mose.nn.embeddings import InputSpec
from mose.nn.grouped_lstm import GroupedLSTM

ROOT = Path(__file__).resolve().parents[1]


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def prepared_sequential(out: Path, n_users: int) -> tuple[Path, dict]:
    """The sequential benchmark data (``conf/data/sequential.yaml`` with ``n_users``), prepared at ``out``."""
    from data_prep.sources.sequential import generate

    data = load_yaml(ROOT / "conf/data/sequential.yaml")
    source = {k: v for k, v in data["source"].items() if k != "_target_"} | {"n_users": n_users}
    root = prepare(generate(**source), event_spec(data), out, PrepOptions.from_config(data["prep"]))
    return root, data


def mose_module(root: Path, data: dict) -> MultiTaskModule:
    model = load_yaml(ROOT / "conf/model/mose.yaml")["model"]
    manifest = read_manifest(root)
    return MultiTaskModule(model=model, input_spec=asdict(InputSpec.from_manifest(manifest)), tasks=data["tasks"],
                           task_stats=manifest["task_stats"], lr=1e-3)


def train_throughput(module: MultiTaskModule, ds: StreamSplit, batch_size: int, steps: int, repeats: int,
                     seed: int = 0) -> tuple[float, float, int]:
    """Median scored events/s (and median s/step) over ``repeats`` runs of ``steps`` optimizer steps."""
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    module.train()

    def step() -> int:
        batch = ds.__getitems__(rng.choice(len(ds), batch_size, replace=False).tolist())
        losses, logits, _, aux = module._step(batch)
        loss = (module.weights * losses).sum() + aux.get("loss", 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return len(logits)  # scored events in the batch

    step()  # warm-up
    rates, seconds = [], []
    for _ in range(repeats):
        start, events = time.perf_counter(), 0
        for _ in range(steps):
            events += step()
        elapsed = time.perf_counter() - start
        rates.append(events / elapsed)
        seconds.append(elapsed / steps)
    return statistics.median(rates), statistics.median(seconds), events // steps


def expert_times(groups: int, hidden: int, in_dim: int, batch: int, steps: int, repeats: int) -> tuple[float, float]:
    """Median forward+backward seconds: ``GroupedLSTM`` vs a list of ``groups`` ``nn.LSTM``."""
    torch.manual_seed(0)
    x = torch.randn(batch, steps, in_dim, requires_grad=True)
    grouped = GroupedLSTM(groups, in_dim, hidden)
    separate = nn.ModuleList(nn.LSTM(in_dim, hidden, batch_first=True) for _ in range(groups))

    def run_grouped():
        grouped(x).sum().backward()

    def run_separate():
        torch.stack([lstm(x)[0] for lstm in separate], dim=2).sum().backward()

    out = []
    for fn in (run_grouped, run_separate):
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        out.append(statistics.median(times))
    return out[0], out[1]


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats; the median is reported")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per repeat")
    parser.add_argument("--batch", type=int, default=64, help="windows (chunks or next-step windows) per batch")
    parser.add_argument("--n-users", type=int, default=200, help="users of the sequential benchmark to prepare")
    parser.add_argument("--out", default=str(ROOT / "docs/benchmarks/stream_throughput.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    lines = [
        "# MoSE training throughput: per-stream layout vs per-event histories",
        "",
        f"`python bench/stream_throughput.py --threads {args.threads} --repeats {args.repeats} --steps {args.steps}"
        f" --batch {args.batch} --n-users {args.n_users}`",
        "",
        f"torch {torch.__version__}, {args.threads} thread(s), fp32, {platform.processor() or platform.machine()}; "
        f"median of {args.repeats} repeats.",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        root, data = prepared_sequential(Path(tmp) / "sequential", args.n_users)
        length = data["prep"]["stream_len"]
        module = mose_module(root, data)
        n_params = sum(p.numel() for p in module.parameters())
        rows = []
        for name, windows, batch in [("per-stream (chunks)", "chunks", args.batch),
                                     ("per-event history (next_step)", "next_step", args.batch),
                                     ("per-event history (next_step)", "next_step", 8 * args.batch)]:
            ds = StreamSplit(root, "train", windows, length)
            rate, sec, scored = train_throughput(module, ds, batch, args.steps, args.repeats)
            rows.append((name, batch, scored, sec, rate))
        base = rows[0][4]
        lines += [
            f"## Layouts: MoSE ({n_params:,} parameters, conf/model/mose.yaml), windows of T = {length} steps, "
            f"overlap {data['prep']['stream_overlap']}",
            "",
            "| layout | windows / batch | scored events / batch | s / step | events / s | per-stream speed-up |",
            "|---|---|---|---|---|---|",
        ]
        lines += [f"| {n} | {b} | {s} | {t:.3f} | {r:,.0f} | {base / r:.1f}x |" for n, b, s, t, r in rows]

    lines += [
        "",
        "## Expert layer: GroupedLSTM (one fused kernel) vs a list of nn.LSTM",
        "",
        f"Forward + backward of one batch (B = {args.batch}, T = {length}, input 64), median ms.",
        "",
        "| experts x hidden | GroupedLSTM ms | list of nn.LSTM ms | speed-up |",
        "|---|---|---|---|",
    ]
    for groups, hidden in [(4, 16), (4, 32), (8, 32), (4, 64), (16, 16), (8, 64)]:
        g, s = expert_times(groups, hidden, 64, args.batch, length, args.repeats)
        lines.append(f"| {groups} x {hidden} | {1e3 * g:.1f} | {1e3 * s:.1f} | {s / g:.2f}x |")
    table = "\n".join(lines) + "\n"
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    print(f"written to {out}")
    return table


if __name__ == "__main__":
    main()
