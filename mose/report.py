"""``mose-report DIR``: a markdown table of test metrics (model x task, mean ± std over seeds) from runs.

Every ``metrics.json`` below ``DIR`` is one run (a single run folder or a Hydra multirun folder);
runs are grouped by the model config chosen (``model=...``) and the data set.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

import yaml


def _run_order(path: Path) -> tuple:
    """Multirun job folders (``0``, ``1``, ..., ``10``) in job order, not text order."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.parent.parts)


def load_runs(root: str | Path) -> list[dict]:
    """One dict per run: ``model`` (config choice), ``data``, ``seed``, ``test`` metrics, ``dir``."""
    runs = []
    for path in sorted(Path(root).rglob("metrics.json"), key=_run_order):
        info = json.loads(path.read_text())
        model = info.get("model", "?")
        hydra_file = path.parent / ".hydra" / "hydra.yaml"
        if hydra_file.exists():
            choices = yaml.safe_load(hydra_file.read_text())["hydra"]["runtime"]["choices"]
            model = choices.get("model", model)
        runs.append({"model": model, "data": info.get("data", "?"), "seed": info.get("seed"),
                     "test": info["test"], "dir": str(path.parent)})
    return runs


def _mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "-"
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return f"{mean:.4f} ± {std:.4f}"


def task_columns(runs: list[dict], metrics: tuple[str, ...]) -> list[str]:
    """Metric keys present in the runs, ``<task>/<metric>`` in first-seen order, then the means."""
    keys: dict[str, None] = {}
    for run in runs:
        for key in run["test"]:
            parts = key.split("/")
            if len(parts) == 2 and parts[1] in metrics:
                keys[key] = None
    return list(keys) + [f"{m}_mean" for m in metrics if any(f"{m}_mean" in r["test"] for r in runs)]


def markdown_table(runs: list[dict], metrics: tuple[str, ...] = ("auc", "mse")) -> str:
    """Model x task table; each cell ``mean ± std`` over the group's runs (seeds)."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run in runs:
        groups[(run["data"], run["model"])].append(run)
    columns = task_columns(runs, metrics)
    lines = ["| data | model | runs | " + " | ".join(columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for (data, model), group in groups.items():
        cells = [_mean_std([r["test"].get(c, math.nan) for r in group]) for c in columns]
        lines.append(f"| {data} | {model} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mose-report", description=__doc__.splitlines()[0])
    parser.add_argument("dir", help="a run or multirun folder (searched recursively for metrics.json)")
    parser.add_argument("--out", help="markdown file to write (default: DIR/report.md)")
    parser.add_argument("--metrics", default="auc,mse", help="comma-separated metrics per task (auc,gauc,logloss,mse)")
    args = parser.parse_args(argv)
    runs = load_runs(args.dir)
    if not runs:
        raise SystemExit(f"error: no metrics.json found under {args.dir}")
    table = markdown_table(runs, tuple(args.metrics.split(",")))
    out = Path(args.out or Path(args.dir) / "report.md")
    out.write_text(f"# Test metrics ({len(runs)} runs from {args.dir})\n\nmean ± std over runs (seeds)\n\n{table}\n")
    print(table)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
