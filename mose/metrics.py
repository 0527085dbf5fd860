"""Multi-task evaluation: AUC, GAUC, logloss and MSE per task, overall and per user cohort.

:data:`METRICS` is the one table of the per-task metrics: a new metric is one row there, and
``metrics.json``, the logged scalars, the cohort breakdown, the printed summary, TensorBoard's
hparams tab, the progress bar and ``mose-report`` all read it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from data_prep.schema import TASK_KINDS

EPS = 1e-7
BINARY, REGRESSION = TASK_KINDS


def grouped_auc(scores: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact ROC AUC of ``scores`` against 0/1 ``labels`` within each group, ties counted as 1/2.

    ``(N,), (N,), (N,) -> auc (n_groups,), n (n_groups,), valid (n_groups,)`` over the distinct
    groups in ascending order; ``valid`` is False (and ``auc`` NaN) for groups with one class only.
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


def undefined_auc_tasks(values: dict[str, float], tasks: dict[str, str]) -> list[str]:
    """The binary tasks of ``tasks`` (``{name: kind}``) whose AUC in ``values`` is NaN: one class only among
    the scored labels (e.g. no positives in the split). ``auc_mean`` / ``gauc_mean`` leave them out."""
    return [t for t, kind in tasks.items() if kind == "binary" and math.isnan(values.get(f"{t}/auc", 0.0))]


def logloss(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean binary cross-entropy of probabilities ``(N,)`` (clamped to ``[EPS, 1 - EPS]``)."""
    p = probs.double().clamp(EPS, 1 - EPS)
    y = labels.double()
    return float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())


def mse(preds: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean squared error ``(N,), (N,) -> float`` (in float64)."""
    return float(((preds.double() - targets.double()) ** 2).mean())


# Where a metric is shown besides metrics.json and the logged val/test scalars (which hold every
# metric of the table, per task and per cohort value):
SUMMARY = "summary"    # the per-task table printed after mose-train / mose-eval (mose.results.summary)
HPARAMS = "hparams"    # TensorBoard's hparams tab: test/<task>/<name>, test/<name>_mean (mose.tb_callbacks)
REPORT = "report"      # mose-report's default columns and metric_<name>.png (mose.report, mose.report_plots)
PROGRESS = "progress"  # the progress bar's latest validation value per task (mose.progress)
COHORTS = "cohorts"    # new vs regular users: summary columns and cohort_new_vs_regular.png
OUTPUTS = (SUMMARY, HPARAMS, REPORT, PROGRESS, COHORTS)


@dataclass(frozen=True)
class MetricSpec:
    """One per-task metric: ``fn(preds (N,), targets (N,), users (N,)) -> float`` for the tasks of ``kinds``.

    ``preds`` are probabilities (binary) or target-scale predictions (regression). ``mean``: also
    ``<name>_mean`` over those tasks (NaN ones skipped). ``higher_is_better`` sets the direction of
    ``mose-report --negative-transfer``; ``chance`` (a random predictor's value, e.g. 0.5 for AUC)
    sets the bottom of the report plots' axis. ``shown``: the outputs of :data:`OUTPUTS` it appears in.
    """

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], float]
    kinds: tuple[str, ...]
    higher_is_better: bool
    mean: bool = False
    chance: float | None = None
    shown: frozenset[str] = frozenset()


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("auc", lambda p, y, users: auc(p, y), (BINARY,), True, mean=True, chance=0.5,
               shown=frozenset({SUMMARY, HPARAMS, REPORT, PROGRESS, COHORTS})),
    MetricSpec("gauc", gauc, (BINARY,), True, mean=True, chance=0.5, shown=frozenset({SUMMARY, HPARAMS})),
    MetricSpec("logloss", lambda p, y, users: logloss(p, y), (BINARY,), False, shown=frozenset({SUMMARY, HPARAMS})),
    MetricSpec("mse", lambda p, y, users: mse(p, y), (REGRESSION,), False,
               shown=frozenset({SUMMARY, HPARAMS, REPORT, PROGRESS})),
)


def metric_spec(name: str) -> MetricSpec | None:
    """The row of :data:`METRICS` called ``name``, if any."""
    return next((m for m in METRICS if m.name == name), None)


def shown_in(output: str | None = None) -> tuple[str, ...]:
    """Names of the metrics shown in ``output`` (one of :data:`OUTPUTS`; None: all), in table order."""
    return tuple(m.name for m in METRICS if output is None or output in m.shown)


def monitor_mode(key: str) -> str:
    """``"max"`` or ``"min"``: the direction of a metric key a callback monitors (``callbacks.monitor``):
    ``min`` for a loss, else by the metric's ``higher_is_better`` (``val/gauc_mean``, ``val/click/logloss``,
    ``val/cohort/<c>=<v>/<task>/<metric>``). Which keys a run logs is checked by ``mose.config_checks``."""
    last = key.split("/")[-1]
    if last == "loss":
        return "min"
    spec = metric_spec(last.removesuffix("_mean"))
    if spec is None:
        raise ValueError(f"{key}: no metric '{last}' (metrics: {', '.join(shown_in())}, loss)")
    return "max" if spec.higher_is_better else "min"


def metric_keys(tasks: dict[str, str], output: str) -> list[str]:
    """The ``<task>/<name>`` keys then the ``<name>_mean`` keys that ``output`` shows for ``{task: kind}``."""
    shown = [m for m in METRICS if output in m.shown]
    keys = [f"{t}/{m.name}" for t, kind in tasks.items() for m in shown if kind in m.kinds]
    return keys + [f"{m.name}_mean" for m in shown if m.mean and any(k in m.kinds for k in tasks.values())]


class MultiTaskMetrics(Metric):
    """Accumulates predictions of every task and reports them per task and per cohort value.

    ``update(preds (M, T), targets (M, T), users (M,), cohorts (M, R))`` where ``preds`` are
    probabilities for binary tasks and predictions on the (transformed) target scale for
    regression tasks. ``compute()`` returns a flat dict of every metric of :data:`METRICS` for the
    tasks of its kinds, such as ``click/auc``, ``click/gauc``, ``click/logloss``, ``watch_time/mse``,
    ``auc_mean``, ``gauc_mean``, and the same under ``cohort/<name>=<value>/...`` (plus its
    ``n_events``). States are concatenated across processes under DDP.
    """

    full_state_update = False

    def __init__(self, tasks: dict[str, str], cohorts: dict[str, list[str]]) -> None:
        super().__init__()
        self.tasks, self.cohorts = dict(tasks), {k: list(v) for k, v in cohorts.items()}
        self.per_user: dict[str, list] = {}  # set by compute()
        for name in ("preds", "targets", "users", "cohort_codes"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, preds: torch.Tensor, targets: torch.Tensor, users: torch.Tensor,
               cohorts: torch.Tensor) -> None:
        self.preds.append(preds.detach().float())
        self.targets.append(targets.detach().float())
        self.users.append(users.detach())
        self.cohort_codes.append(cohorts.detach())

    def _scores(self, preds: torch.Tensor, targets: torch.Tensor, users: torch.Tensor) -> dict[str, float]:
        """Every metric of :data:`METRICS` per task of its kinds, then the means: ``(N, T), (N, T), (N,)``."""
        out: dict[str, float] = {}
        for i, (task, kind) in enumerate(self.tasks.items()):
            out |= {f"{task}/{m.name}": m.fn(preds[:, i], targets[:, i], users) for m in METRICS if kind in m.kinds}
        for m in METRICS:
            values = [out[f"{t}/{m.name}"] for t, kind in self.tasks.items() if kind in m.kinds]
            if m.mean and values:
                out[f"{m.name}_mean"] = float(torch.tensor(values, dtype=torch.double).nanmean())
        return out

    def _user_aucs(self, group: str, preds: torch.Tensor, targets: torch.Tensor, users: torch.Tensor) -> None:
        """Append each binary task's per-user AUC and event count (valid users only) of ``group`` to ``per_user``."""
        for i, (task, kind) in enumerate(self.tasks.items()):
            if kind != BINARY or not len(users):
                continue
            per_user, n, valid = grouped_auc(preds[:, i], targets[:, i], users)
            keys = torch.unique(users)  # grouped_auc's groups, ascending
            for col, v in (("group", [group] * int(valid.sum())), ("task", [task] * int(valid.sum())),
                           ("user_key", keys[valid].tolist()), ("auc", per_user[valid].tolist()),
                           ("n", n[valid].tolist())):
                self.per_user[col].extend(v)

    def compute(self) -> dict[str, float]:
        """The flat metrics; also sets ``per_user`` (``{group, task, user_key, auc, n}`` lists: each binary task's
        AUC per user with both classes, ``group`` "all" or ``<cohort>=<value>``), what GAUC averages."""
        preds, targets = dim_zero_cat(self.preds), dim_zero_cat(self.targets)
        users, codes = dim_zero_cat(self.users), dim_zero_cat(self.cohort_codes)
        self.per_user = {c: [] for c in ("group", "task", "user_key", "auc", "n")}
        out = self._scores(preds, targets, users)
        self._user_aucs("all", preds, targets, users)
        for j, (name, values) in enumerate(self.cohorts.items()):
            for code, value in enumerate(values):
                rows = codes[:, j] == code
                if rows.any():
                    scores = self._scores(preds[rows], targets[rows], users[rows])
                    out |= {f"cohort/{name}={value}/{k}": v for k, v in scores.items()}
                    out[f"cohort/{name}={value}/n_events"] = float(rows.sum())
                    self._user_aucs(f"{name}={value}", preds[rows], targets[rows], users[rows])
        return out


class GateUsage(Metric):
    """Gate diagnostics over the scored events: ``update(gates (M, T, E), cohorts (M, R) | None)``.

    ``compute()`` returns tensors: ``usage (T, E)`` mean gate weight per task and expert (expert
    utilization), ``entropy (T,)`` mean per-event gate entropy (nats; ``log E`` is uniform),
    ``load_cv (T,)`` coefficient of variation (std / mean over experts) of each task's expert load
    (``usage``), ``load_cv_all ()`` the same for the load summed over tasks, ``routed (T, E)`` the
    fraction of events with a non-zero weight on each expert (sparse gates), and per cohort value
    (``cohort_sizes`` the number of values of each cohort column) ``cohort_usage (V, T, E)``,
    ``cohort_entropy (V, T)`` with ``V = sum(cohort_sizes)`` (cohort-major), NaN for empty values.
    All states are sums, reduced over DDP processes. Read the results with :meth:`results` (it keeps
    these shapes with one task or one expert; torchmetrics' ``compute`` squeezes one-element tensors).
    """

    full_state_update = False

    def __init__(self, n_tasks: int, n_experts: int, cohort_sizes: list[int] | tuple[int, ...] = ()) -> None:
        super().__init__()
        self.cohort_sizes = list(cohort_sizes)
        offsets = torch.tensor([0, *self.cohort_sizes[:-1]], dtype=torch.long).cumsum(0)
        self.register_buffer("offsets", offsets[: len(self.cohort_sizes)], persistent=False)
        n_values = sum(self.cohort_sizes)
        dbl = dict(dtype=torch.double)
        self.add_state("total", default=torch.zeros(n_tasks, n_experts, **dbl), dist_reduce_fx="sum")
        self.add_state("entropy", default=torch.zeros(n_tasks, **dbl), dist_reduce_fx="sum")
        self.add_state("nonzero", default=torch.zeros(n_tasks, n_experts, **dbl), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), **dbl), dist_reduce_fx="sum")
        self.add_state("cohort_total", default=torch.zeros(n_values, n_tasks, n_experts, **dbl), dist_reduce_fx="sum")
        self.add_state("cohort_entropy", default=torch.zeros(n_values, n_tasks, **dbl), dist_reduce_fx="sum")
        self.add_state("cohort_count", default=torch.zeros(n_values, **dbl), dist_reduce_fx="sum")

    def update(self, gates: torch.Tensor, cohorts: torch.Tensor | None = None) -> None:
        g = gates.detach().double()
        ent = -(g * g.clamp_min(1e-12).log()).sum(-1)  # (M, T)
        self.total += g.sum(0)
        self.entropy += ent.sum(0)
        self.nonzero += (g > 0).double().sum(0)
        self.count += g.shape[0]
        if self.cohort_sizes and cohorts is not None:
            codes = cohorts.long() + self.offsets  # (M, R): flat index of each row's value per cohort
            valid = (cohorts >= 0) & (cohorts < torch.tensor(self.cohort_sizes, device=cohorts.device))
            for j in range(codes.shape[1]):  # a handful of cohort columns, not rows
                idx = codes[valid[:, j], j]
                self.cohort_total.index_add_(0, idx, g[valid[:, j]])
                self.cohort_entropy.index_add_(0, idx, ent[valid[:, j]])
                self.cohort_count.index_add_(0, idx, torch.ones_like(idx, dtype=torch.double))

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.count.clamp_min(1)
        usage = self.total / n
        load = usage.sum(0)
        cohort_n = self.cohort_count[:, None]
        empty = cohort_n == 0
        return {
            "usage": usage,
            "entropy": self.entropy / n,
            "load_cv": cv(usage),
            "load_cv_all": cv(load),
            "routed": self.nonzero / n,
            "cohort_usage": torch.where(empty[..., None], torch.nan, self.cohort_total / cohort_n.clamp_min(1)[..., None]),
            "cohort_entropy": torch.where(empty, torch.nan, self.cohort_entropy / cohort_n.clamp_min(1)),
        }


    def results(self) -> dict[str, torch.Tensor]:
        """:meth:`compute` with the documented shapes kept (a one-task ``entropy`` stays ``(1,)``)."""
        n_values, n_tasks, n_experts = self.cohort_total.shape
        shapes = {"usage": (n_tasks, n_experts), "entropy": (n_tasks,), "load_cv": (n_tasks,), "load_cv_all": (),
                  "routed": (n_tasks, n_experts), "cohort_usage": (n_values, n_tasks, n_experts),
                  "cohort_entropy": (n_values, n_tasks)}
        return {k: v.reshape(shapes[k]) for k, v in self.compute().items()}


def cv(x: torch.Tensor) -> torch.Tensor:
    """Coefficient of variation over the last dim (population std / mean); 0 when the mean is 0."""
    mean = x.mean(-1)
    return torch.where(mean > 0, x.std(-1, unbiased=False) / mean.clamp_min(1e-12), torch.zeros_like(mean))
