"""The one LightningModule that trains any model on any task set."""

from __future__ import annotations

import inspect
import logging
import math
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn

from data_prep.vocab import PAD
from mose.metrics import GateUsage, MultiTaskMetrics, undefined_auc_tasks
from mose.nn.carry import carry_states
from mose.nn.embeddings import ID_DROPOUT, InputSpec
from mose.nn.mixture import competitive_nll, mixture_logits
from mose.nn.task_chain import TaskChain
from mose.optim import RECIPE_KEYS, build_optimizer
from mose.plots import gate_heatmap
from mose.weighting import Fixed, shared_parameters

log = logging.getLogger(__name__)


def stacked_logits(out: dict, tasks: list[str], binary: torch.Tensor) -> torch.Tensor:
    """A model output's task logits ``(..., T)``; a competitive mixture's are its mixture prediction."""
    aux = out.get("aux", {})
    if "expert_logits" in aux:
        return mixture_logits(aux["expert_logits"], aux["gates"], binary)
    return torch.stack([out[t] for t in tasks], dim=-1)


def to_predictions(logits: torch.Tensor, binary: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Logits ``(..., T)`` -> probabilities (binary) or target-scale predictions (regression)."""
    return torch.where(binary, torch.sigmoid(logits), logits * std + mean)


def scalar_tag(split: str, key: str) -> str:
    """The logged name of a metric: ``<split>/<task>/<metric>`` (TensorBoard's first groups), cohort and gate
    metrics under their own top level, ``<split>_cohort/...`` and ``<split>_gates/...``."""
    group, _, rest = key.partition("/")
    return f"{split}_{group}/{rest}" if group in ("cohort", "gates") and rest else f"{split}/{key}"


class MultiTaskModule(pl.LightningModule):
    """Losses, loss weights, metrics, logging and the optimizer around a model from ``mose.models``.

    All constructor arguments are plain data (they are stored in checkpoints):
    ``model`` a Hydra config with ``_target_``; ``input_spec`` the fields of :class:`InputSpec`;
    ``tasks`` ``{name: {kind, weight, transform, after}}``; ``task_stats`` train mean/std of each
    regression target after its transform; ``cohorts`` ``{cohort: [value names]}``; ``data`` the
    data config the model was trained on (used by ``mose-eval``); ``weighting`` a Hydra config of a
    :mod:`mose.weighting` method (default: fixed task weights); ``fingerprint`` the prepared dataset's
    vocabulary and task fingerprint (``manifest["fingerprint"]``, :mod:`data_prep.fingerprint`), checked by
    ``mose-eval``, ``mose-predict`` and ``resume=`` against the data they run on; ``id_dropout``
    ``{user: p, item: q, history: r}`` the share of ids replaced in training batches (:meth:`drop_ids`).
    ``scale_lr`` / ``ref_batch`` / ``warmup_steps`` / ``embed_lr_scale``: the optimizer recipe of
    :mod:`mose.optim` (lr scaled from ``ref_batch`` to ``batch_size``, default ``data["batch_size"]``).
    Binary tasks train with BCE on logits, regression tasks with MSE on the standardised target; a
    model that returns ``aux["expert_logits"]`` (Jacobs et al.'s competitive mixture, see
    :mod:`mose.models.omoe`) trains with the mixture's negative log-likelihood instead. ``aux["loss"]``
    (e.g. load balancing) is added to the training loss.

    A task declared ``after`` a parent (``data.tasks.convert.after=click``) is trained and scored, for
    every model, as the joint event: its label is ``parent AND task`` (:class:`TaskChain`), so the
    model's output for it, and ``p_<task>`` in eval, predict and export, is ``P(parent, task)``.
    A model whose constructor takes ``after`` (ESMM, AITM) is given ``{task: parent}``.
    """

    def __init__(self, model: dict[str, Any], input_spec: dict, tasks: dict, task_stats: dict | None = None,
                 cohorts: dict | None = None, lr: float = 1e-3, weight_decay: float = 0.0,
                 data: dict | None = None, weighting: dict | None = None, fingerprint: dict | None = None,
                 id_dropout: dict | None = None, scale_lr: str = "none", ref_batch: int = 512,
                 warmup_steps: int = 0, embed_lr_scale: float = 1.0, batch_size: int | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.tasks = list(tasks)
        kinds = {t: tasks[t].get("kind", "binary") for t in self.tasks}
        task_stats = task_stats or {}
        self.register_buffer("weights", torch.tensor([float(tasks[t].get("weight", 1.0)) for t in self.tasks]))
        self.register_buffer("binary", torch.tensor([kinds[t] == "binary" for t in self.tasks]))
        self.register_buffer("log1p", torch.tensor([tasks[t].get("transform", "none") == "log1p" for t in self.tasks]))
        self.register_buffer("mean", torch.tensor([task_stats.get(t, {}).get("mean", 0.0) for t in self.tasks]))
        self.register_buffer("std", torch.tensor([task_stats.get(t, {}).get("std", 1.0) for t in self.tasks]))
        spec = InputSpec(**{**input_spec, "cat_vocab": tuple(input_spec["cat_vocab"]),
                            "cat_names": tuple(input_spec.get("cat_names", ()))})
        after = {t: tasks[t]["after"] for t in self.tasks if tasks[t].get("after")}
        self.chain = TaskChain(self.tasks, after)
        factory = instantiate(model, _partial_=True, _convert_="all")
        extra = {"after": after} if "after" in inspect.signature(factory).parameters else {}
        self.model = factory(input_spec=spec, tasks=self.tasks, **extra)
        binary = [kinds[t] == "binary" for t in self.tasks]
        self.weighting = (instantiate(weighting, _convert_="all", tasks=self.tasks, binary=binary) if weighting
                          else Fixed(self.tasks, binary))
        self.metrics = nn.ModuleDict({s: MultiTaskMetrics(kinds, cohorts or {}) for s in ("val", "test")})
        self.gate_usage = nn.ModuleDict()  # per split, created at the first batch of a gated model
        self.scored_splits: set[str] = set()  # the eval splits with a scored step this epoch
        self.results: dict[str, dict[str, float]] = {}
        self.per_user: dict[str, dict] = {}  # split -> MultiTaskMetrics.per_user of its last evaluation
        self._undefined_auc: set[tuple[str, str]] = set()  # (split, task) already reported
        self.id_dropout = {k: float(v) for k, v in (id_dropout or {}).items() if v}  # batch key -> probability
        # per task: training labels 1 whose parent's label is 0 (counted as negatives of the joint), epoch 0
        self.register_buffer("_orphans", torch.zeros(len(self.tasks), dtype=torch.long), persistent=False)

    def drop_ids(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training only: each id of ``id_dropout[key]``'s batch column replaced with that probability
        (:data:`mose.nn.embeddings.ID_DROPOUT`): ``user`` and ``item`` ids by ``OOV``, so the OOV row
        (unseen and rare ids) is trained even when every train id is known; ``history`` tokens by
        ``PAD``, so a model cannot lean on any one earlier event. Padding (``PAD``) stays."""
        if not self.id_dropout:
            return batch
        out = dict(batch)
        for key, p in self.id_dropout.items():
            column, replacement = ID_DROPOUT[key]
            ids = batch[column]
            drop = (torch.rand(ids.shape, device=ids.device) < p) & (ids != PAD)
            out[column] = torch.where(drop, torch.full_like(ids, replacement), ids)
        return out

    def outputs(self, batch: dict[str, torch.Tensor]) -> dict:
        """``self.model(batch)``; a batch of carried-state lanes (``reset``, ``data.prep.carry_state``)
        continues every LSTM from its lanes' previous chunk (``mose.nn.carry``)."""
        carry_states(self.model, batch.get("reset"))
        return self.model(batch)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict:
        """The model's outputs; a competitive mixture's task logits are its mixture prediction."""
        out = self.outputs(batch)
        if "expert_logits" in out.get("aux", {}):
            mixed = stacked_logits(out, self.tasks, self.binary)  # (..., T)
            out = {**out, **{t: mixed[..., i] for i, t in enumerate(self.tasks)}}
        return out

    def transformed(self, labels: torch.Tensor) -> torch.Tensor:
        """Labels ``(M, T)`` on each task's target scale (log1p applied where configured; a dependent
        task's label times its ancestors', see :class:`TaskChain`)."""
        labels = self.chain.joint_labels(labels)
        return torch.where(self.log1p, torch.log1p(labels.clamp_min(0)), labels)

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits ``(M, T)`` -> probabilities (binary) or target-scale predictions (regression)."""
        return to_predictions(logits, self.binary, self.mean, self.std)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int = 0) -> torch.Tensor:
        """Predictions ``(M, T)`` of the batch's M scored events (per-stream: the ``mask``-ed steps)."""
        logits = stacked_logits(self.outputs(batch), self.tasks, self.binary).float()  # (B, [S,] T)
        if "mask" in batch:
            logits = logits[batch["mask"]]
        return self.predictions(logits)

    def _step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, dict, dict]:
        """Per-task losses ``(T,)``, logits ``(M, T)`` of the M scored events, their batch rows, aux.

        A per-stream batch ``(B, S, ...)`` carries ``mask (B, S)``: only its scored steps count.
        """
        out = self.outputs(batch)
        logits = torch.stack([out[t] for t in self.tasks], dim=-1).float()
        rows = {k: batch[k] for k in ("labels", "user_key", "cohorts") if k in batch}  # train: labels only
        if "mask" in batch:
            logits, rows = logits[batch["mask"]], {k: v[batch["mask"]] for k, v in rows.items()}
        z = (self.transformed(rows["labels"]) - self.mean) / self.std
        aux = out.get("aux", {})
        if "expert_logits" in aux:  # competitive mixture of whole predictors (Jacobs et al. 1991)
            experts, gates = aux["expert_logits"], aux["gates"]
            if "mask" in batch:
                experts, gates = experts[batch["mask"]], gates[batch["mask"]]
            return (competitive_nll(experts, gates, z, self.binary).mean(0),
                    mixture_logits(experts, gates, self.binary), rows, aux)
        bce = F.binary_cross_entropy_with_logits(logits, z, reduction="none")
        losses = torch.where(self.binary, bce, (logits - z) ** 2).mean(0)
        return losses, logits, rows, aux

    def _grad_scale(self) -> float:
        """The AMP grad scaler's current scale (16-mixed), else 1."""
        try:
            scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        except RuntimeError:  # not attached to a trainer
            return 1.0
        return float(scaler.get_scale()) if scaler is not None else 1.0

    def combined_loss(self, losses: torch.Tensor, aux: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Training loss from the per-task losses ``(T,)`` by ``self.weighting``, plus ``aux["loss"]``;
        also the effective task weights ``(T,)``."""
        params, shared = [], []
        if self.weighting.needs_gradients:
            params = [p for p in self.model.parameters() if p.requires_grad]
        if self.weighting.needs_shared:
            shared = shared_parameters(self.model)
        loss, weights = self.weighting(losses, self.weights, params, shared, self._grad_scale())
        return loss + aux.get("loss", 0.0), weights

    def _logs_this_step(self) -> bool:
        """Whether Lightning writes this training step's logs (every ``trainer.log_every_n_steps``).

        ``self.log`` costs ~2 ms a call on CPU even when nothing is written; 11 calls a step were
        ~40% of an MMoE step (bench/README.md, docs/performance.md). Skipping them between writes
        changes no logged value: training logs are on_step only.
        """
        try:
            return bool(self.trainer._logger_connector.should_update_logs)
        except (RuntimeError, AttributeError):  # not attached to a trainer
            return True

    def on_fit_start(self) -> None:
        """Every counting part of the model (``fit_counts``: :class:`mose.models.popularity.Popularity`, the
        model itself or MMoE's ``item_prior``) counts the train split once."""
        counters = [m for m in self.model.modules() if hasattr(m, "fit_counts")]

        def batches():
            for batch in self.trainer.datamodule.train_dataloader():
                item, labels = batch["item"], batch["labels"]
                if "mask" in batch:
                    item, labels = item[batch["mask"]], labels[batch["mask"]]
                yield item, (self.transformed(labels.to(self.device)) - self.mean) / self.std  # binary: 0/1
        for counter in counters:
            counter.fit_counts(batches(), self.binary)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        losses, logits, rows, aux = self._step(self.drop_ids(batch))
        if not len(logits):  # carried-state lanes of context only (nothing scored): the states moved on
            return None
        if self.chain.any and self.current_epoch == 0:
            labels = rows["labels"]
            self._orphans += ((labels > 0) & (self.chain.joint_labels(labels) == 0)).sum(0)
        loss, task_weights = self.combined_loss(losses, aux)
        from mose.callbacks import nonfinite_batch  # NaN/inf loss: raise (stop) or True (skip the batch)
        if nonfinite_batch(self, loss, losses, self.tasks):
            return None
        if not self._logs_this_step():
            return loss
        size = len(logits)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log_dict({f"train/{t}/loss": losses[i] for i, t in enumerate(self.tasks)}, batch_size=size)
        self.log_dict({f"train/{t}/weight": task_weights[i] for i, t in enumerate(self.tasks)}, batch_size=size)
        if "loss" in aux:
            self.log("train/aux_loss", aux["loss"], batch_size=size)
        try:  # the lr of this step, as the recipe scaled and warmed it up (mose/optim.py)
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=size)
        except (RuntimeError, IndexError):  # not attached to a trainer, or no optimizer: nothing to log
            pass
        return loss

    def on_train_epoch_end(self) -> None:
        """After the first epoch, warn once per dependent task with positives whose parent is negative."""
        if not self.chain.any or self.current_epoch != 0:
            return
        for i, t in enumerate(self.tasks):
            if int(self._orphans[i]):
                log.warning("task '%s' is declared after '%s', but %d of its positive training labels have "
                            "'%s' = 0: they count as negatives of the joint label %s AND %s (what p_%s means)",
                            t, self.chain.after[t], int(self._orphans[i]), self.chain.after[t],
                            self.chain.after[t], t, t)

    def _eval_step(self, batch: dict[str, torch.Tensor], split: str) -> None:
        losses, logits, rows, aux = self._step(batch)
        if not len(logits):  # carried-state lanes of context only (earlier splits' chunks): nothing to score
            return
        self.scored_splits.add(split)
        self.log(f"{split}/loss", (self.weights * losses).sum(), batch_size=len(logits), sync_dist=True)
        self.metrics[split].update(self.predictions(logits), self.transformed(rows["labels"]),
                                   rows["user_key"], rows["cohorts"])
        if "gates" in aux:
            gates = aux["gates"][batch["mask"]] if "mask" in batch else aux["gates"]  # (M, T, E)
            if split not in self.gate_usage:
                sizes = [len(v) for v in (self.hparams.cohorts or {}).values()]
                self.gate_usage[split] = GateUsage(*gates.shape[-2:], sizes).to(self.device)
            self.gate_usage[split].update(gates, rows["cohorts"])

    def _eval_epoch_end(self, split: str) -> None:
        if split not in self.scored_splits:  # e.g. the sanity check's first carried-state batches: all context
            return
        self.scored_splits.discard(split)
        values = self.metrics[split].compute()
        self.per_user[split] = self.metrics[split].per_user  # per-user AUCs for mose-report --ci
        self.metrics[split].reset()
        if split in self.gate_usage:
            values |= self._gate_diagnostics(split)
        self._report_undefined_auc(split, values)
        self.results[split] = values
        self.log_dict({scalar_tag(split, k): v for k, v in values.items() if not k.startswith("gates/cohort/")},
                      prog_bar=False)  # per-cohort gate usage: the gates_by_cohort heatmap and metrics.json

    def _report_undefined_auc(self, split: str, values: dict[str, float]) -> None:
        """Warn once per split and task whose AUC is NaN (one class among its labels); not in the sanity check."""
        trainer = getattr(self, "_trainer", None)
        if trainer is not None and trainer.sanity_checking:
            return
        for task in undefined_auc_tasks(values, self.metrics[split].tasks):
            if (split, task) not in self._undefined_auc:
                self._undefined_auc.add((split, task))
                log.warning("task '%s': AUC and GAUC are undefined on the %s split (one class only among its "
                            "labels, e.g. no positives): reported as nan and left out of %s/auc_mean%s",
                            task, split, split, "" if not math.isnan(values.get("auc_mean", 0.0)) else
                            f"; no task has a defined AUC, so {split}/auc_mean is nan and checkpoint selection "
                            "and early stopping have nothing to go by")

    def _gate_diagnostics(self, split: str) -> dict[str, float]:
        """Gate diagnostics as flat metrics (see :class:`GateUsage`); heatmaps go to TensorBoard.

        ``gates/<task>/e<i>`` expert utilization, ``gates/<task>/entropy``, ``gates/<task>/load_cv``,
        ``gates/load_cv`` (load over all tasks), ``gates/<task>/routed_mean`` (mean fraction of
        events an expert gets a non-zero weight for), ``gates/cohort/<c>=<v>/<task>/e<i>`` and
        ``.../entropy`` per cohort value.
        """
        d = {k: v.float().cpu() for k, v in self.gate_usage[split].results().items()}
        self.gate_usage[split].reset()
        usage, n_experts = d["usage"], d["usage"].shape[1]
        out: dict[str, float] = {}
        for i, t in enumerate(self.tasks):
            out |= {f"gates/{t}/e{e}": float(usage[i, e]) for e in range(n_experts)}
            out |= {f"gates/{t}/entropy": float(d["entropy"][i]), f"gates/{t}/load_cv": float(d["load_cv"][i]),
                    f"gates/{t}/routed_mean": float(d["routed"][i].mean())}
        out["gates/load_cv"] = float(d["load_cv_all"])
        rows, labels = [], []
        v = 0
        for cohort, values in (self.hparams.cohorts or {}).items():
            for value in values:
                if not bool(d["cohort_usage"][v].isnan().any()):
                    for i, t in enumerate(self.tasks):
                        key = f"gates/cohort/{cohort}={value}/{t}"
                        out |= {f"{key}/e{e}": float(d["cohort_usage"][v, i, e]) for e in range(n_experts)}
                        out[f"{key}/entropy"] = float(d["cohort_entropy"][v, i])
                        rows.append(d["cohort_usage"][v, i])
                        labels.append(f"{cohort}={value}/{t}")
                v += 1
        if isinstance(self.logger, TensorBoardLogger) and self.trainer.is_global_zero:
            tb = self.logger.experiment
            tb.add_figure(f"{split}/gates", gate_heatmap(usage.numpy(), self.tasks, f"{split} expert utilization"),
                          global_step=self.global_step)
            if rows:
                fig = gate_heatmap(torch.stack(rows).numpy(), labels, f"{split} expert utilization per cohort")
                tb.add_figure(f"{split}/gates_by_cohort", fig, global_step=self.global_step)
        return out

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def configure_optimizers(self) -> torch.optim.Optimizer | dict:
        """Fused AdamW with the recipe of :mod:`mose.optim` (defaults: ``lr`` as given, no warm-up). The batch
        the lr is scaled to is the global one: the per-device batch x devices x accumulated batches."""
        h = self.hparams
        batch = h.get("batch_size") or (h.get("data") or {}).get("batch_size")
        try:
            trainer = self.trainer
        except RuntimeError:  # not attached to a trainer (benchmarks' raw loops)
            trainer = None
        if batch and trainer is not None:
            batch *= trainer.world_size * trainer.accumulate_grad_batches
        return build_optimizer(self, h.lr, h.weight_decay, batch=batch, **{k: h[k] for k in RECIPE_KEYS})
