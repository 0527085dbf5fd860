"""The optimizer recipe (mose/optim.py): lr scaled with the batch, linear warm-up, embedding lr; hand-computed."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import CONF_DIR, TASKS, compose_train
from torch import nn

from mose.config_checks import ConfigError, check_config
from mose.data.datamodule import EventDataModule
from mose.module import MultiTaskModule
from mose.nn.embeddings import InputSpec
from mose.optim import build_optimizer, scaled_lr, warmup_factor

MODEL = {"_target_": "mose.models.mmoe.MMoE", "embed_dim": 8, "n_experts": 2, "expert": [16], "tower": [8]}


@pytest.mark.parametrize("rule, batch, expected", [
    ("none", 8192, 5e-3),
    ("linear", 8192, 5e-3 * 16),      # 8192 / 512 = 16
    ("sqrt", 8192, 5e-3 * 4),         # sqrt(16) = 4
    ("linear", 256, 5e-3),            # below ref_batch: the lr as tuned
    ("sqrt", 512, 5e-3),
    ("sqrt", 2048, 1e-2),             # sqrt(4) = 2
    ("sqrt", 1024, 5e-3 * math.sqrt(2)),
])
def test_scaled_lr(rule, batch, expected):
    assert scaled_lr(5e-3, batch, 512, rule) == pytest.approx(expected, rel=1e-12)


def test_scaled_lr_rejects_unknown_rules_and_empty_batches():
    with pytest.raises(ValueError, match="optim.scale_lr"):
        scaled_lr(1e-3, 1024, 512, "cubic")
    with pytest.raises(ValueError, match="ref_batch"):
        scaled_lr(1e-3, 1024, 0, "linear")


def test_warmup_factor():
    # of the scaled lr (k = 4): from the unscaled lr (1/4) up by 3/16 a step to 1 at step 4
    assert [warmup_factor(s, 4, 4.0) for s in range(6)] == pytest.approx([0.25, 0.4375, 0.625, 0.8125, 1.0, 1.0])
    assert [warmup_factor(s, 0, 4.0) for s in range(3)] == [1.0, 1.0, 1.0]
    assert [warmup_factor(s, 4, 1.0) for s in range(3)] == [1.0, 1.0, 1.0]  # nothing scaled, nothing to warm


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.lin = nn.Linear(4, 1)

    def forward(self, ids):
        return self.lin(self.emb(ids)).sum()


def test_warmup_schedule_and_embedding_group_step_by_step():
    model = Tiny()
    # lr 0.01 tuned at 512, batch 2048, linear: 0.04; embeddings at 2x: 0.08; warm-up from 0.01 over 4 steps
    conf = build_optimizer(model, 0.01, batch=2048, scale_lr="linear", ref_batch=512, warmup_steps=4,
                           embed_lr_scale=2.0)
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "step"
    rest, embed = opt.param_groups
    assert [id(p) for p in embed["params"]] == [id(model.emb.weight)]
    assert {id(p) for p in rest["params"]} == {id(model.lin.weight), id(model.lin.bias)}
    seen = []
    for _ in range(6):
        seen.append((rest["lr"], embed["lr"]))
        model(torch.tensor([1, 2])).backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    expected = [(0.01, 0.02), (0.0175, 0.035), (0.025, 0.05), (0.0325, 0.065), (0.04, 0.08), (0.04, 0.08)]
    assert seen == [pytest.approx(e, rel=1e-12) for e in expected]


def test_defaults_are_the_plain_fused_adamw():
    opt = build_optimizer(Tiny(), 0.01, weight_decay=0.1, batch=8192)
    assert isinstance(opt, torch.optim.AdamW) and len(opt.param_groups) == 1
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[0]["weight_decay"] == 0.1
    assert opt.defaults["fused"]


def test_lightning_follows_the_recipe(prepared):
    """The module's configure_optimizers under pl.Trainer.fit: lr per optimizer step, hand-computed."""
    root, manifest = prepared
    pl.seed_everything(0)
    # lr 0.01 tuned at 32, batch 64 (data.batch_size), sqrt: 0.01 * sqrt(2); warm-up from 0.01 over 3 steps
    module = MultiTaskModule(MODEL, asdict(InputSpec.from_manifest(manifest)), TASKS, manifest["task_stats"],
                             manifest["cohorts"], lr=0.01, data={"dir": str(root), "batch_size": 64},
                             scale_lr="sqrt", ref_batch=32, warmup_steps=3)
    lrs = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = pl.Trainer(max_steps=5, logger=False, accumulate_grad_batches=1, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, callbacks=[Record()])
    dm = EventDataModule({"dir": str(root)}, batch_size=64)
    dm.setup()
    trainer.fit(module, train_dataloaders=dm.train_dataloader())
    base, step = 0.01 * math.sqrt(2), 0.01 * (math.sqrt(2) - 1) / 3  # from 0.01 to base in 3 equal steps
    assert lrs == pytest.approx([0.01, 0.01 + step, 0.01 + 2 * step, base, base], rel=1e-9)


def test_the_scaled_batch_is_the_global_one(prepared):
    """2 accumulated batches of 64 are one optimizer step of 128: linear from 32 gives 4x the lr."""
    _, manifest = prepared
    module = MultiTaskModule(MODEL, asdict(InputSpec.from_manifest(manifest)), TASKS, manifest["task_stats"],
                             manifest["cohorts"], lr=0.01, batch_size=64, scale_lr="linear", ref_batch=32)
    assert module.configure_optimizers().param_groups[0]["lr"] == pytest.approx(0.02)  # no trainer: 64
    module.trainer = pl.Trainer(accumulate_grad_batches=2, logger=False, enable_progress_bar=False)
    assert module.configure_optimizers().param_groups[0]["lr"] == pytest.approx(0.04)


@pytest.mark.parametrize("optim, key", [({"scale_lr": "cubic"}, "optim.scale_lr"), ({"ref_batch": 0}, "optim.ref_batch"),
                                        ({"warmup_steps": -1}, "optim.warmup_steps"),
                                        ({"embed_lr_scale": 0}, "optim.embed_lr_scale")])
def test_bad_recipe_names_the_key(optim, key):
    with pytest.raises(ConfigError, match=key):
        check_config({"model": MODEL, "data": {"tasks": {"click": {"kind": "binary"}}}, "optim": optim})


CONF = Path(CONF_DIR)


@pytest.mark.parametrize("overrides", [[f"data={p.stem}"] for p in sorted((CONF / "data").glob("*.yaml"))]
                         + [[f"experiment={p.stem}"] for p in sorted((CONF / "experiment").glob("*.yaml"))]
                         + [["model=mose"], ["model=poso"]])
def test_the_default_recipe_leaves_every_shipped_config_at_its_lr(overrides):
    """Every data config, experiment and model config trains at optim.lr (its batch is at most its data's
    ref_batch), so the default recipe changes no documented run; a larger batch scales it."""
    cfg = compose_train(overrides)
    optim, batch = cfg.optim, cfg.data.batch_size
    assert optim.scale_lr == "linear" and optim.warmup_steps > 0
    assert scaled_lr(optim.lr, batch, optim.ref_batch, optim.scale_lr) == optim.lr
    big = compose_train([*overrides, f"data.batch_size={4 * optim.ref_batch}"])
    assert scaled_lr(big.optim.lr, big.data.batch_size, big.optim.ref_batch, big.optim.scale_lr) == 4 * optim.lr

