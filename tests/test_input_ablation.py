"""docs/input_ablation.py: each ablation neutralises exactly its input."""

import importlib.util
from pathlib import Path

import torch

from data_prep.vocab import FIRST, OOV, PAD

SPEC = importlib.util.spec_from_file_location("input_ablation",
                                              Path(__file__).resolve().parents[1] / "docs/input_ablation.py")
ablation = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(ablation)


def test_each_ablation_changes_only_its_input():
    batch = {"user": torch.tensor([5, 6, 7]), "item": torch.tensor([3, 4, 4]), "prior_bucket": torch.tensor([1, 2, 3]),
             "cat": torch.tensor([[2, 9], [3, 9], [3, 8]]), "num": torch.tensor([[0.5], [1.0], [-1.0]]),
             "hist_item": torch.tensor([[3, 0], [4, 3], [0, 0]]), "hist_label": torch.ones(3, 2, 1, dtype=torch.int8),
             "pcode": torch.tensor([[1, 2], [3, 4], [5, 6]])}
    changed = {"history -> PAD": {"hist_item": torch.full((3, 2), PAD)},
               "history labels -> 0": {"hist_label": torch.zeros(3, 2, 1, dtype=torch.int8)},
               "prior_bucket -> 0": {"prior_bucket": torch.zeros(3, dtype=torch.long)},
               "categorical 0 -> most frequent": {"cat": torch.tensor([[3, 9], [3, 9], [3, 8]])},
               "categorical 1 -> most frequent": {"cat": torch.tensor([[2, 9], [3, 9], [3, 9]])},
               "numeric -> mean": {"num": torch.zeros(3, 1)},
               "pcode -> 0": {"pcode": torch.zeros(3, 2, dtype=torch.long)},
               "item -> OOV": {"item": torch.full((3,), OOV)},
               "user -> one train user": {"user": torch.full((3,), FIRST)}}
    found = ablation.ablations(batch)
    assert list(found) == list(changed)
    for name, ablate in found.items():
        out = ablate(batch)
        for key, value in batch.items():
            assert torch.equal(out[key], changed[name].get(key, value)), (name, key)
