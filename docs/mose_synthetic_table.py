"""Tables of experiment=mose_paper_synthetic (docs/mose.md): size choice, MSE per task, ceiling, MoSE's paired gap.

    python docs/mose_synthetic_table.py --select outputs/multirun/mose_paper_synthetic_sizes
    python docs/mose_synthetic_table.py outputs/multirun/mose_paper_synthetic

``--select``: every run of the size grid with its validation loss (the best checkpoint's, in its name)
and each model's lowest, the ``chosen_size`` of conf/experiment/mose_paper_synthetic.yaml.
Otherwise, per ``data.source.task_correlation``: test MSE per task, mean ± std over seeds, for every
model, the train-mean baseline (``model=popularity``) and the ceiling (the generator's noise-free
next-step value on the same test events, ``data_prep.sources.mose_synthetic.ceiling_mse``); then
MoSE minus the best other model per task (the lowest mean MSE, popularity excluded), paired by seed,
with a 95% t-interval over seeds; and MoSE's mean gate weight per task and expert (test split), overall
and per user's dominant mode (the ``dominant_mode`` cohort).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data_prep.paths  # noqa: F401  (registers the ${source_key:...} resolver of data.dir)
from data_prep.dataset import read_manifest
from data_prep.sources.mose_synthetic import ceiling_mse
from mose.report import _mean_std, config_value, load_runs

MOSE, BASELINE = "mose", "popularity"


def val_loss(run: dict) -> float:
    """The best checkpoint's validation loss, from its file name (``epoch03-loss0.4321.ckpt``)."""
    found = re.search(r"loss(\d+\.\d+)", Path(run["checkpoint"] or "").name)
    return float(found.group(1)) if found else math.nan


def select(dirs: list[str]) -> str:
    runs = [r for d in dirs for r in load_runs(d)]
    by_model: dict[str, list[tuple[int, int, float]]] = defaultdict(list)
    for r in runs:
        by_model[r["model"]].append((config_value(r, "size.units"), config_value(r, "size.layers"), val_loss(r)))
    lines = ["| model | " + " | ".join(f"{u}x{n}" for n in (1, 2) for u in (16, 32, 64)) + " | chosen |",
             "|---|" + "---|" * 7]
    for model, rows in by_model.items():
        cell = {(u, n): v for u, n, v in rows}
        best = min(rows, key=lambda x: x[2])
        lines.append(f"| {model} | " + " | ".join(f"{cell[(u, n)]:.4f}" if (u, n) in cell else "-"
                                                  for n in (1, 2) for u in (16, 32, 64))
                     + f" | units {best[0]}, layers {best[1]} |")
    return "\n".join(lines)


def ceiling(run: dict, tasks: list[str]) -> dict[str, float]:
    cfg = OmegaConf.load(Path(run["dir"]) / ".hydra" / "config.yaml")
    source = OmegaConf.to_container(cfg.data.source, resolve=True)
    test_start = read_manifest(OmegaConf.to_container(cfg.data, resolve=True)["dir"])["cuts"]["test_start"]
    return ceiling_mse(source, test_start, tasks)


def paired_gap(a: list[float], b: list[float]) -> str:
    d = np.asarray(a) - np.asarray(b)
    if len(d) < 2:
        return f"{d.mean():+.4f}"
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return f"{d.mean():+.4f} [{d.mean() - half:+.4f}, {d.mean() + half:+.4f}] ({100 * d.mean() / np.mean(b):+.1f}%)"


def tables(root: str) -> str:
    runs = load_runs(root)
    out = []
    for rho in sorted({config_value(r, "data.source.task_correlation") for r in runs}, reverse=True):
        group = [r for r in runs if config_value(r, "data.source.task_correlation") == rho]
        tasks = sorted(k.split("/")[0] for k in group[0]["test"] if re.fullmatch(r"y\d+/mse", k))
        models = list(dict.fromkeys(r["model"] for r in group))
        per = {m: {int(r["seed"]): r["test"] for r in group if r["model"] == m} for m in models}
        out += [f"**task_correlation = {rho}** (test MSE, mean ± std over seeds)", "",
                "| model | runs | " + " | ".join(f"{t}/mse" for t in tasks) + " |", "|---|---|" + "---|" * len(tasks)]
        for m in models:
            out.append(f"| {m} | {len(per[m])} | " + " | ".join(_mean_std([v[f"{t}/mse"] for v in per[m].values()])
                                                          for t in tasks) + " |")
        ceil = ceiling(group[0], tasks)
        out += ["| ceiling (noise-free next step) | - | " + " | ".join(f"{ceil[f'{t}/mse']:.4f}" for t in tasks) + " |",
                ""]
        if MOSE in per:
            out += ["| task | best other model | MoSE - best, paired by seed [95% interval] |", "|---|---|---|"]
            for t in tasks:
                others = {m: np.mean([v[f"{t}/mse"] for v in per[m].values()]) for m in models if m not in (MOSE, BASELINE)}
                best = min(others, key=others.get)
                seeds = sorted(set(per[MOSE]) & set(per[best]))
                out.append(f"| {t} | {best} | " + paired_gap([per[MOSE][s][f"{t}/mse"] for s in seeds],
                                                             [per[best][s][f"{t}/mse"] for s in seeds]) + " |")
            experts = sorted({k.split("/")[2] for v in per[MOSE].values() for k in v
                              if re.fullmatch(r"gates/y\d+/e\d+", k)}, key=lambda e: int(e[1:]))
            out += ["", "MoSE's mean gate weight per task and expert (test split, mean over seeds):", "",
                    "| task | " + " | ".join(experts) + " |", "|---|" + "---|" * len(experts)]
            for t in tasks:
                out.append(f"| {t} | " + " | ".join(
                    f"{np.mean([v.get(f'gates/{t}/{e}', math.nan) for v in per[MOSE].values()]):.3f}"
                    for e in experts) + " |")
            modes = sorted({int(k.split("=")[1].split("/")[0]) for v in per[MOSE].values() for k in v
                            if k.startswith("gates/cohort/dominant_mode=")})
            if modes:
                out += ["", "MoSE's gate weights per user's dominant mode (e0/e1/... per task, test split, mean "
                        "over seeds):", "", "| dominant mode | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
                for mode in modes:
                    cells = ["/".join(f"{np.mean([v.get(f'gates/cohort/dominant_mode={mode}/{t}/{e}', math.nan) for v in per[MOSE].values()]):.2f}"
                                      for e in experts) for t in tasks]
                    out.append(f"| {mode} | " + " | ".join(cells) + " |")
            out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="*")
    parser.add_argument("--select", nargs="+", help="size-grid multirun folders: print the grid and the choice")
    args = parser.parse_args()
    if args.select:
        print(select(args.select))
    for d in args.dirs:
        print(tables(d))


if __name__ == "__main__":
    main()
