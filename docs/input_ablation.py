"""Which input hurts a checkpoint on its test split? Test GAUC with one input at a time neutralised.

    python docs/input_ablation.py <run>/checkpoints/<ckpt> [--tasks is_click long_view like]

Loads the checkpoint and its prepared test split (as ``mose-eval`` does), scores every test event
as trained, then again with one input replaced: the history tokens by PAD (item and labels), the
history labels by 0, ``prior_bucket`` by 0, each categorical feature by its most frequent value,
the numeric features by their mean (0 after standardising), the personalization code by 0, the
item by OOV, the user by one train user's row. A positive change means the model ranks the test
users' items better without that input (docs/poso.md, "KuaiRand, user split"). GAUC is the
suite's (``mose.metrics.gauc``, grouped by ``user_key``). Run it from the folder the run was
trained in (the checkpoint names its data folder relative to it).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from data_prep.vocab import FIRST, OOV, PAD
from mose.metrics import gauc
from mose.predict import load_module
from mose.train import build_datamodule

Batch = dict[str, torch.Tensor]


def ablations(batch: Batch) -> dict[str, Callable[[Batch], Batch]]:
    """Name -> the batch with that input neutralised (only inputs the batch has)."""
    out: dict[str, Callable[[Batch], Batch]] = {}
    if "hist_item" in batch:
        out["history -> PAD"] = lambda b: b | {"hist_item": torch.full_like(b["hist_item"], PAD)}
        out["history labels -> 0"] = lambda b: b | {"hist_label": torch.zeros_like(b["hist_label"])}
    if "prior_bucket" in batch:
        out["prior_bucket -> 0"] = lambda b: b | {"prior_bucket": torch.zeros_like(b["prior_bucket"])}
    for i in range(batch["cat"].shape[-1]):
        def most_frequent(b: Batch, i: int = i) -> Batch:
            cat = b["cat"].clone()
            cat[..., i] = cat[..., i].mode().values
            return b | {"cat": cat}
        out[f"categorical {i} -> most frequent"] = most_frequent
    if batch["num"].shape[-1]:
        out["numeric -> mean"] = lambda b: b | {"num": torch.zeros_like(b["num"])}
    if "pcode" in batch:
        out["pcode -> 0"] = lambda b: b | {"pcode": torch.zeros_like(b["pcode"])}
    out["item -> OOV"] = lambda b: b | {"item": torch.full_like(b["item"], OOV)}
    out["user -> one train user"] = lambda b: b | {"user": torch.full_like(b["user"], FIRST)}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="a mose-train checkpoint (per-event layout)")
    parser.add_argument("--tasks", nargs="+", default=None, help="binary tasks (default: all binary tasks)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    module = load_module(args.ckpt).eval()
    data = build_datamodule(dict(module.hparams.data), eval_batch_size=8192)
    data.prepare_data()
    data.setup("test")
    batches = list(data.test_dataloader())
    batch = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    tasks = args.tasks or [t for t, b in zip(module.tasks, module.binary.tolist()) if b]

    def scores(b: Batch) -> list[float]:
        with torch.no_grad():
            out = module(b)
        return [gauc(out[t], b["labels"][:, module.tasks.index(t)], b["user_key"]) for t in tasks]

    base = scores(batch)
    print(f"| input | {' | '.join(f'{t} GAUC (change)' for t in tasks)} |")
    print(f"|---|{'---|' * len(tasks)}")
    print(f"| as trained | {' | '.join(f'{v:.4f}' for v in base)} |")
    for name, ablate in ablations(batch).items():
        cells = [f"{v:.4f} ({v - b:+.4f})" for v, b in zip(scores(ablate(batch)), base)]
        print(f"| {name} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
