"""id_dropout: training batches replace a share of user / item ids by OOV, so the OOV row is learned, and
mask a share of history tokens (PAD)."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import pytorch_lightning as pl
import torch
from conftest import TASKS, load

from data_prep.vocab import OOV, PAD
from mose.config_checks import ConfigError, check_config
from mose.data.datamodule import EventDataModule
from mose.module import MultiTaskModule
from mose.nn.embeddings import InputSpec

MODEL = {"_target_": "mose.models.mmoe.MMoE", "embed_dim": 8, "n_experts": 2, "expert": [16], "tower": [8]}


def trained(prepared, id_dropout: dict | None) -> tuple[MultiTaskModule, torch.Tensor]:
    """One epoch of MMoE on the conftest dataset (min_count=1: every train user has its own row); the module
    and its user OOV row before training."""
    root, manifest = prepared
    pl.seed_everything(0)
    module = MultiTaskModule(MODEL, asdict(InputSpec.from_manifest(manifest)), TASKS, manifest["task_stats"],
                             manifest["cohorts"], lr=0.02, id_dropout=id_dropout)
    before = module.model.embed.user.weight[OOV].detach().clone()
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    dm = EventDataModule({"dir": str(root)}, batch_size=64)
    dm.setup()  # the dataset is prepared already
    trainer.fit(module, train_dataloaders=dm.train_dataloader())
    return module, before


def test_drop_ids_replaces_the_share_asked_and_keeps_padding():
    module = MultiTaskModule.__new__(MultiTaskModule)
    torch.nn.Module.__init__(module)
    module.id_dropout = {"user": 0.25}
    ids = torch.arange(2, 40_002)
    ids[:100] = PAD
    torch.manual_seed(0)
    out = module.drop_ids({"user": ids, "item": ids.clone()})
    dropped = out["user"] == OOV
    assert abs(dropped.float().mean().item() - 0.25) < 0.01
    assert (out["user"][:100] == PAD).all() and torch.equal(out["user"][~dropped], ids[~dropped])
    assert torch.equal(out["item"], ids)  # no item dropout asked


def test_history_dropout_masks_tokens_not_padding():
    module = MultiTaskModule.__new__(MultiTaskModule)
    torch.nn.Module.__init__(module)
    module.id_dropout = {"history": 0.5}
    hist = torch.randint(2, 50, (20_000, 20))
    hist[:, :5] = PAD  # short histories: their padding stays padding
    torch.manual_seed(0)
    out = module.drop_ids({"hist_item": hist, "user": torch.arange(20_000)})
    masked = (out["hist_item"] == PAD) & (hist != PAD)
    assert abs(masked[:, 5:].float().mean().item() - 0.5) < 0.01
    assert (out["hist_item"][:, :5] == PAD).all() and torch.equal(out["hist_item"][~masked], hist[~masked])
    assert not (out["hist_item"] == OOV).any() and torch.equal(out["user"], torch.arange(20_000))


def test_the_oov_row_is_trained_only_with_id_dropout_and_unseen_users_get_it(prepared):
    root, _ = prepared
    split, user = load(root, "split"), load(root, "user")
    assert (user[split == 0] != OOV).all() and (user[split == 2] == OOV).any()  # every train user known
    plain, before = trained(prepared, None)
    torch.testing.assert_close(plain.model.embed.user.weight[OOV], before)  # never trained: still the init
    dropped, before = trained(prepared, {"user": 0.3})
    after = dropped.model.embed.user.weight[OOV].detach()
    assert (after - before).norm() > 1.5 * before.norm()  # the row moved further than its N(0, 0.05) init
    # unseen test users are scored with the trained row: their scores differ from the untrained row's
    dm = EventDataModule({"dir": str(root)}, batch_size=10_000)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    unseen = batch["user"] == OOV
    dropped.eval()
    with torch.no_grad():
        trained_scores = torch.sigmoid(dropped(batch)["click"][unseen])
        dropped.model.embed.user.weight[OOV] = before
        init_scores = torch.sigmoid(dropped(batch)["click"][unseen])
    assert ((trained_scores - init_scores).abs() > 1e-4).float().mean() > 0.8 and (trained_scores - init_scores).abs().mean() > 3e-3


@pytest.mark.parametrize(("value", "match"), [({"user": 1.0}, r"id_dropout\.user=1\.0"),
                                              ({"users": 0.1}, r"id_dropout\.users: unknown key"),
                                              ({"history": -0.1}, r"id_dropout\.history=-0\.1")])
def test_bad_id_dropout_names_the_key(value, match):
    with pytest.raises(ConfigError, match=match):
        check_config({"model": MODEL, "data": {"tasks": {"click": {"kind": "binary"}}}, "id_dropout": value})


def test_history_dropout_is_refused_for_the_per_stream_models():
    with pytest.raises(ConfigError, match=r"id_dropout\.history: the per-stream models"):
        check_config({"model": MODEL, "data": {"tasks": {"click": {"kind": "binary"}}, "layout": "per_stream"},
                      "id_dropout": {"history": 0.2}})
