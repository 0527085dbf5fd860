"""Multi-task evaluation: AUC, GAUC, logloss and MSE per task, overall and per user cohort."""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

EPS = 1e-7


def grouped_auc(scores: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact ROC AUC of ``scores`` against 0/1 ``labels`` within each group, ties counted as 1/2.

    ``(N,), (N,), (N,) -> auc (G,), n (G,), valid (G,)`` over the distinct groups in ascending
    order; ``valid`` is False (and ``auc`` NaN) for groups with one class only.
    Vectorised: one sort by (group, score), ranks averaged over ties (Mann-Whitney U).
    """
    scores, labels = scores.double(), labels.double()
    order = torch.argsort(scores, stable=True)
    order = order[torch.argsort(groups[order], stable=True)]
    g, s, y = groups[order], scores[order], labels[order]
    _, g_idx, g_count = torch.unique_consecutive(g, return_inverse=True, return_counts=True)
    g_start = torch.cumsum(g_count, 0) - g_count
    rank = (torch.arange(len(g), device=g.device) - g_start[g_idx] + 1).double()
    new_tie = torch.ones_like(g, dtype=torch.bool)
    new_tie[1:] = (g[1:] != g[:-1]) | (s[1:] != s[:-1])
    tie = torch.cumsum(new_tie.long(), 0) - 1
    tie_rank = torch.zeros(int(tie[-1]) + 1, dtype=torch.double, device=g.device).index_add_(0, tie, rank)
    rank = (tie_rank / torch.bincount(tie).double())[tie]
    n_groups = len(g_count)
    n_pos = torch.zeros(n_groups, dtype=torch.double, device=g.device).index_add_(0, g_idx, y)
    r_pos = torch.zeros(n_groups, dtype=torch.double, device=g.device).index_add_(0, g_idx, rank * y)
    n_neg = g_count.double() - n_pos
    valid = (n_pos > 0) & (n_neg > 0)
    auc = (r_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return torch.where(valid, auc, torch.nan), g_count, valid


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """ROC AUC; NaN when only one class is present."""
    return float(grouped_auc(scores, labels, torch.zeros_like(labels, dtype=torch.long))[0][0])


def gauc(scores: torch.Tensor, labels: torch.Tensor, users: torch.Tensor) -> float:
    """Per-user AUC averaged with the users' event counts as weights; one-class users skipped."""
    per_user, n, valid = grouped_auc(scores, labels, users)
    if not valid.any():
        return float("nan")
    n = n.double()[valid]
    return float((per_user[valid] * n).sum() / n.sum())


def logloss(probs: torch.Tensor, labels: torch.Tensor) -> float:
    p = probs.double().clamp(EPS, 1 - EPS)
    y = labels.double()
    return float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())


class MultiTaskMetrics(Metric):
    """Accumulates predictions of every task and reports them per task and per cohort value.

    ``update(preds (B, T), targets (B, T), users (B,), cohorts (B, G))`` where ``preds`` are
    probabilities for binary tasks and predictions on the (transformed) target scale for
    regression tasks. ``compute()`` returns a flat dict such as ``click/auc``, ``click/gauc``,
    ``click/logloss``, ``watch_time/mse``, ``auc_mean``, ``gauc_mean`` and the same under
    ``cohort/<name>=<value>/...``. States are concatenated across processes under DDP.
    """

    full_state_update = False

    def __init__(self, tasks: dict[str, str], cohorts: dict[str, list[str]]) -> None:
        super().__init__()
        self.tasks, self.cohorts = dict(tasks), {k: list(v) for k, v in cohorts.items()}
        for name in ("preds", "targets", "users", "cohort_codes"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, preds: torch.Tensor, targets: torch.Tensor, users: torch.Tensor,
               cohorts: torch.Tensor) -> None:
        self.preds.append(preds.detach().float())
        self.targets.append(targets.detach().float())
        self.users.append(users.detach())
        self.cohort_codes.append(cohorts.detach())

    def _scores(self, preds, targets, users) -> dict[str, float]:
        out: dict[str, float] = {}
        for i, (task, kind) in enumerate(self.tasks.items()):
            p, y = preds[:, i], targets[:, i]
            if kind == "binary":
                out[f"{task}/auc"] = auc(p, y)
                out[f"{task}/gauc"] = gauc(p, y, users)
                out[f"{task}/logloss"] = logloss(p, y)
            else:
                out[f"{task}/mse"] = float(((p.double() - y.double()) ** 2).mean())
        for stat in ("auc", "gauc"):
            values = torch.tensor([v for k, v in out.items() if k.endswith(f"/{stat}")], dtype=torch.double)
            if len(values):
                out[f"{stat}_mean"] = float(values.nanmean())
        return out

    def compute(self) -> dict[str, float]:
        preds, targets = dim_zero_cat(self.preds), dim_zero_cat(self.targets)
        users, codes = dim_zero_cat(self.users), dim_zero_cat(self.cohort_codes)
        out = self._scores(preds, targets, users)
        for j, (name, values) in enumerate(self.cohorts.items()):
            for code, value in enumerate(values):
                rows = codes[:, j] == code
                if rows.any():
                    scores = self._scores(preds[rows], targets[rows], users[rows])
                    out |= {f"cohort/{name}={value}/{k}": v for k, v in scores.items()}
                    out[f"cohort/{name}={value}/n_events"] = float(rows.sum())
        return out


class GateUsage(Metric):
    """Mean gate weight per task and expert over the scored events: ``update(gates (M, T, E))``."""

    full_state_update = False

    def __init__(self, n_tasks: int, n_experts: int) -> None:
        super().__init__()
        self.add_state("total", default=torch.zeros(n_tasks, n_experts, dtype=torch.double), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.double), dist_reduce_fx="sum")

    def update(self, gates: torch.Tensor) -> None:
        self.total += gates.detach().double().sum(0)
        self.count += gates.shape[0]

    def compute(self) -> torch.Tensor:
        return self.total / self.count.clamp_min(1)
