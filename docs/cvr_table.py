"""Post-click AUC of a dependent task for the runs of a multirun (docs/moe_family.md): ESMM's CVR metric.

    python docs/cvr_table.py outputs/multirun/moe_family_final [--baseline shared_bottom]

For a task declared ``after`` a parent (``data.tasks.convert.after=click``) every model predicts the
joint ``P(click, convert)``; the conversion rate it implies is ``P(click, convert) / P(click)``
(for ESMM exactly its CVR tower, ``sigmoid(aux["conditional_logits"])``). This re-scores each run's
tested checkpoint on its test split and takes the AUC of that ratio over the test events whose
parent label is 1 (the clicked events, the only ones with a conversion label in the usual CVR
data), per model: mean ± std over seeds, and the same-seed difference to ``--baseline``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

import torch
from torchmetrics.functional.classification import binary_auroc

from mose.data.datamodule import EventDataModule
from mose.predict import load_module, score_arrays
from mose.report import load_runs


def post_click_auc(ckpt: str) -> dict[str, float]:
    """``{task: AUC of P(task, parent) / P(parent) over the test events with parent = 1}`` of one checkpoint."""
    module = load_module(ckpt)
    data = module.hparams.data
    dm = EventDataModule(data, eval_batch_size=8192)
    dm.setup()
    loader = dm.test_dataloader()
    preds = torch.from_numpy(score_arrays(module, loader)).double()
    labels = torch.cat([b["labels"] for b in loader]).double()
    out = {}
    for t, parent in module.chain.after.items():
        i, p = module.tasks.index(t), module.tasks.index(parent)
        parent_joint = module.chain.joint_labels(labels)[:, p] > 0
        rate = preds[parent_joint, i] / preds[parent_joint, p].clamp_min(1e-12)
        out[t] = float(binary_auroc(rate, labels[parent_joint, i].long()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir")
    parser.add_argument("--baseline", default="shared_bottom")
    args = parser.parse_args()
    torch.set_num_threads(1)
    scores: dict[str, dict[int, dict[str, float]]] = defaultdict(dict)
    for run in load_runs(args.dir):
        ckpt = json.loads((Path(run["dir"]) / "metrics.json").read_text())["checkpoint"]
        scores[run["model"]][run["seed"]] = post_click_auc(ckpt)
    tasks = list(next(iter(next(iter(scores.values())).values())))
    base = scores.get(args.baseline, {})
    print("| model | runs | " + " | ".join(f"{t} post-click AUC | minus {args.baseline} (same seed)" for t in tasks) + " |")
    print("|---|---|" + "---|---|" * len(tasks))
    for model, by_seed in scores.items():
        cells = []
        for t in tasks:
            values = [s[t] for s in by_seed.values()]
            diffs = [by_seed[k][t] - base[k][t] for k in by_seed if k in base]
            cells.append(f"{statistics.fmean(values):.4f} ± {statistics.stdev(values) if len(values) > 1 else 0:.4f}")
            cells.append("-" if model == args.baseline or len(diffs) < 2 else
                         f"{statistics.fmean(diffs):+.4f} ± {statistics.stdev(diffs):.4f}")
        print(f"| {model} | {len(by_seed)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
