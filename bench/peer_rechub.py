"""torch-rechub's MMoE / PLE on a prepared mose dataset (run with the peer venv's python, not mose's).

    bench/.venv-rechub/bin/python bench/peer_rechub.py DATASET_DIR --model mmoe --epochs 3 --batch 512 \
        --embed 16 --experts 4 --expert-dims 128 64 --tower-dims 32 --seed 0 --threads 2

Reads the prepared ``.npy`` arrays (train/test by ``split.npy``) and feeds torch-rechub the same
inputs mose's models get from the same rows: user, item, each categorical column, the prior-count
bucket (sparse features), the standardised numerics (dense), and the item history (a sequence
feature sharing the item table, mean-pooled). Binary tasks train with torch-rechub's BCE,
regression tasks on mose's standardised target (``log1p`` where configured) with MSE. Training uses
torch-rechub's own ``MTLTrainer.train_one_epoch`` and ``DataGenerator`` loaders (its documented
path); epochs are timed without evaluation. Prints one JSON line: events/s and test AUC per task.
Imports only numpy, scikit-learn, torch and torch_rechub.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--model", choices=["mmoe", "ple"], default="mmoe")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--embed", type=int, default=16)
    parser.add_argument("--experts", type=int, default=4, help="MMoE experts")
    parser.add_argument("--levels", type=int, default=2, help="PLE levels")
    parser.add_argument("--specific", type=int, default=1, help="PLE task-specific experts per task")
    parser.add_argument("--shared", type=int, default=2, help="PLE shared experts")
    parser.add_argument("--expert-dims", type=int, nargs="+", default=[128, 64])
    parser.add_argument("--tower-dims", type=int, nargs="+", default=[32])
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from torch_rechub.basic.features import DenseFeature, SequenceFeature, SparseFeature
    from torch_rechub.models.multi_task import MMOE, PLE
    from torch_rechub.trainers import MTLTrainer
    from torch_rechub.utils.data import DataGenerator

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    root = Path(args.root)
    manifest = json.loads((root / "manifest.json").read_text())
    load = lambda name: np.load(root / f"{name}.npy")
    split = load("split")
    spec, vocab = manifest["spec"], manifest["vocab_sizes"]
    tasks = list(spec["tasks"])
    kinds = [spec["tasks"][t].get("kind", "binary") for t in tasks]
    labels = load("labels").astype(np.float64)
    for j, t in enumerate(tasks):  # regression targets on mose's scale: standardised (log1p) values
        if kinds[j] == "regression":
            y = np.log1p(np.clip(labels[:, j], 0, None)) if spec["tasks"][t].get("transform") == "log1p" else labels[:, j]
            st = manifest["task_stats"][t]
            labels[:, j] = (y - st["mean"]) / st["std"]
    cat, num = load("cat"), load("num")
    x = {"user": load("user"), "item": load("item"), "prior_bucket": load("prior_bucket"), "hist_item": load("hist_item")}
    features = [SparseFeature("user", vocab["user_id"], args.embed),
                SparseFeature("item", vocab["item_id"], args.embed, padding_idx=0),
                SparseFeature("prior_bucket", manifest["prior_buckets"], args.embed)]
    for j, c in enumerate(spec["categorical"]):
        x[f"cat_{c}"] = cat[:, j]
        features.append(SparseFeature(f"cat_{c}", vocab[c], args.embed))
    for j, c in enumerate(spec["numeric"]):
        x[f"num_{c}"] = num[:, j].astype(np.float32)
        features.append(DenseFeature(f"num_{c}", 1))
    features.append(SequenceFeature("hist_item", vocab["item_id"], args.embed, pooling="mean", shared_with="item",
                                    padding_idx=0))

    def part(code):
        rows = np.flatnonzero(split == code)
        return {k: v[rows] for k, v in x.items()}, labels[rows].astype(np.float32)

    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = part(0), part(1), part(2)
    task_types = ["classification" if k == "binary" else "regression" for k in kinds]
    expert_params = {"dims": args.expert_dims}
    towers = [{"dims": args.tower_dims} for _ in tasks]
    if args.model == "mmoe":
        model = MMOE(features, task_types, args.experts, expert_params=expert_params, tower_params_list=towers)
    else:
        model = PLE(features, task_types, n_level=args.levels, n_expert_specific=args.specific,
                    n_expert_shared=args.shared, expert_params=expert_params, tower_params_list=towers)
    train_dl, _, test_dl = DataGenerator(x_tr, y_tr).generate_dataloader(x_va, y_va, x_te, y_te,
                                                                          batch_size=args.batch)
    trainer = MTLTrainer(model, task_types=task_types, optimizer_params={"lr": args.lr, "weight_decay": 0.0},
                         n_epoch=args.epochs, earlystop_patience=args.epochs + 1, device="cpu", model_path="/tmp")
    class TimedLoader:
        """The loader as MTLTrainer iterates it, timing the batch fetches (per-row __getitem__ + collate)."""

        def __init__(self, dl) -> None:
            self.dl, self.seconds = dl, 0.0

        def __len__(self) -> int:
            return len(self.dl)

        def __iter__(self):
            it = iter(self.dl)
            while True:
                start = time.perf_counter()
                try:
                    batch = next(it)
                except StopIteration:
                    return
                self.seconds += time.perf_counter() - start
                yield batch

    timed = TimedLoader(train_dl)
    epoch_s = []
    for _ in range(args.epochs):
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            trainer.train_one_epoch(timed)
        epoch_s.append(time.perf_counter() - start)
    model.eval()  # the loop of MTLTrainer.evaluate (its predict() expects feature-only loaders)
    start, preds = time.perf_counter(), []
    with torch.no_grad():
        for x_dict, _ in test_dl:
            preds.append(model(x_dict).numpy())
    infer_s = time.perf_counter() - start
    preds = np.concatenate(preds)
    auc = {t: float(roc_auc_score(y_te[:, j], preds[:, j])) for j, t in enumerate(tasks)
           if kinds[j] == "binary" and 0 < y_te[:, j].mean() < 1}
    print(json.dumps({
        "model": args.model, "n_train": len(y_tr), "epochs": args.epochs, "epoch_s": epoch_s,
        "events_per_s": len(y_tr) * args.epochs / sum(epoch_s), "test_auc": auc,
        "data_share": timed.seconds / sum(epoch_s),
        "inference_events_per_s": len(y_te) / infer_s,
        "params": sum(p.numel() for p in model.parameters()), "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
