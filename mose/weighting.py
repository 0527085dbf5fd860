"""Loss balancing: how the per-task losses ``L_t`` become the one training loss.

Every method is an ``nn.Module`` called as ``weighting(losses (T,), base (T,), params, shared, grad_scale)``
and returns ``(loss (), weights (T,))``: the scalar to back-propagate and the effective weight of
each task (for logging). ``base`` are the fixed task weights from the data config
(``data.tasks.<task>.weight``); ``params`` every trainable parameter of the model; ``shared`` the
model's last shared layer (GradNorm's ``W``, ``model.shared_parameters()``: every model with a
layer shared by its tasks names it; an embedding table never counts).

* :class:`Fixed` ``sum_t w_t L_t``.
* :class:`Uncertainty` (Kendall, Gal & Cipolla, CVPR 2018): learned ``s_t = log sigma_t^2``;
  ``sum_t c_t exp(-s_t) L_t + s_t / 2`` with ``c = 1`` for classification and ``1/2`` for regression.
* :class:`GradNorm` (Chen et al., ICML 2018): task weights ``w_t`` (sum ``T``) moved so that the
  gradient norms ``G_t = ||grad_W w_t L_t||`` approach ``mean(G) r_t^alpha`` (``r_t`` the relative
  inverse training rate ``(L_t / L_t(0)) / mean``), by a gradient step on
  ``sum_t |G_t - target_t|`` w.r.t. ``w`` (target held constant) and renormalisation.
* :class:`PCGrad` (Yu et al., NeurIPS 2020): each task's gradient (over all parameters) is
  projected off every other task's gradient it conflicts with (negative dot product), in a
  random order; the sum of the projected gradients is trained. The projection is computed on the
  Gram matrix of the task gradients as coefficients ``a`` with ``sum_t g~_t = sum_t a_t g_t``, and
  ``sum_t a_t L_t`` (``a`` constant) is returned, so the ordinary backward pass (and DDP's
  gradient averaging, and the AMP grad scaler) produce exactly the PCGrad gradient.

Mixed precision: the weighting math runs in float32 outside autocast; the extra per-task gradients
(GradNorm, PCGrad) are taken of ``grad_scale * L_t`` (the AMP scaler's scale, so fp16 gradients do
not underflow) and unscaled; a non-finite result skips the update (GradNorm) or falls back to the
plain sum (PCGrad), as the scaler then skips the step anyway. DDP: the per-task gradients and
losses are averaged over processes before use, so every process computes the same weights from
the global gradients.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def all_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over DDP processes (identity without a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        x = x.clone()
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return x


def shared_parameters(model: nn.Module) -> list[torch.Tensor]:
    """GradNorm's ``W``: ``model.shared_parameters()``, the model's last shared layer (a dense layer every
    task's loss reaches: the experts' output layer of a gated model, the bottom's last layer of a
    shared-bottom one). A model without one (the single-task baselines share nothing) is an error."""
    params = [p for p in (model.shared_parameters() if hasattr(model, "shared_parameters") else [])
              if p.requires_grad]
    if not params:
        raise ValueError(f"weighting=gradnorm needs the model's last shared layer, and {type(model).__name__} "
                         "names none (shared_parameters()): it shares no layer between tasks; use "
                         "weighting=fixed, uncertainty or pcgrad")
    return params


def task_gradients(losses: torch.Tensor, params: list[torch.Tensor], grad_scale: float = 1.0) -> torch.Tensor:
    """Flattened gradient of each task loss w.r.t. ``params``: ``(T,) -> (T, n_params)`` float32,
    DDP-averaged."""
    rows = []
    for t in range(len(losses)):
        grads = torch.autograd.grad(losses[t] * grad_scale, params, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).float().flatten()
                               for g, p in zip(grads, params)]))
    return all_mean(torch.stack(rows)) / grad_scale


class Weighting(nn.Module):
    """Base: ``tasks`` names and ``binary`` (per task) are given by the module.

    ``needs_gradients``: whether ``combine`` reads ``params`` / ``shared``; when False the module
    passes empty lists (collecting the parameters every step costs ~0.2 ms on CPU). ``needs_shared``:
    whether it reads ``shared`` (the model's last shared layer, :func:`shared_parameters`).
    """

    needs_gradients = False
    needs_shared = False

    def __init__(self, tasks: list[str], binary: list[bool]) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.register_buffer("binary", torch.tensor(list(binary), dtype=torch.bool), persistent=False)

    def forward(self, losses: torch.Tensor, base: torch.Tensor, params: list[torch.Tensor],
                shared: list[torch.Tensor], grad_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(losses.device.type, enabled=False):
            return self.combine(losses.float(), base.float(), params, shared, grad_scale)

    def combine(self, losses, base, params, shared, grad_scale):
        raise NotImplementedError


class Fixed(Weighting):
    """``sum_t w_t L_t``; ``weights`` ``{task: w}`` overrides the data config's task weights."""

    def __init__(self, tasks: list[str], binary: list[bool], weights: dict[str, float] | None = None) -> None:
        super().__init__(tasks, binary)
        self.override = dict(weights or {})
        # the overrides as a mask and values: one torch.where per step instead of a Python loop
        self.register_buffer("overridden", torch.tensor([t in self.override for t in self.tasks]), persistent=False)
        self.register_buffer("override_values", torch.tensor([float(self.override.get(t, 0.0)) for t in self.tasks]),
                             persistent=False)

    def combine(self, losses, base, params, shared, grad_scale):
        w = torch.where(self.overridden, self.override_values, base)
        return (w * losses).sum(), w


class Uncertainty(Weighting):
    """Homoscedastic-uncertainty weighting; ``log_var`` (``s_t``) is trained with the model."""

    def __init__(self, tasks: list[str], binary: list[bool], init_log_var: float = 0.0) -> None:
        super().__init__(tasks, binary)
        self.log_var = nn.Parameter(torch.full((len(tasks),), float(init_log_var)))

    def combine(self, losses, base, params, shared, grad_scale):
        c = torch.where(self.binary, 1.0, 0.5)
        w = base * c * torch.exp(-self.log_var)
        return (w * losses + base * self.log_var / 2).sum(), w.detach()


class GradNorm(Weighting):
    """GradNorm with asymmetry ``alpha`` and weight learning rate ``lr`` (plain gradient steps)."""

    needs_gradients = needs_shared = True

    def __init__(self, tasks: list[str], binary: list[bool], alpha: float = 1.5, lr: float = 0.025) -> None:
        super().__init__(tasks, binary)
        self.alpha, self.lr = alpha, lr
        self.register_buffer("task_weights", torch.ones(len(tasks)))
        self.register_buffer("initial_losses", torch.zeros(len(tasks)))

    def combine(self, losses, base, params, shared, grad_scale):
        weighted = base * losses
        w = self.task_weights.clone()
        loss = (w * weighted).sum()
        if torch.is_grad_enabled() and self.training:
            self.update(weighted, shared, grad_scale)
        return loss, base * w

    @torch.no_grad()
    def update(self, weighted: torch.Tensor, shared: list[torch.Tensor], grad_scale: float = 1.0) -> None:
        with torch.enable_grad():
            norms = task_gradients(weighted, shared, grad_scale).norm(dim=1)  # ||grad_W L_t||, (T,)
        current = all_mean(weighted.detach())
        if not (torch.isfinite(norms).all() and torch.isfinite(current).all()):
            return
        if not (self.initial_losses > 0).all():
            self.initial_losses.copy_(current.clamp_min(1e-12))
        ratio = current / self.initial_losses
        target = (self.task_weights * norms).mean() * (ratio / ratio.mean()) ** self.alpha
        grad = torch.sign(self.task_weights * norms - target) * norms  # d/dw_t sum |w_t n_t - target_t|
        w = (self.task_weights - self.lr * grad).clamp_min(1e-3)
        self.task_weights.copy_(w * len(w) / w.sum())


def pcgrad_coefficients(gram: torch.Tensor, order: torch.Tensor | None = None) -> torch.Tensor:
    """PCGrad in coefficient space: ``gram (T, T)`` of the task gradients -> ``a (T,)`` with
    ``sum_i g~_i = sum_t a_t g_t``. ``order`` ``(T, T)``: row ``i`` the order in which task ``i``
    visits the others (default ``0..T-1``)."""
    n = gram.shape[0]
    gram = gram.double()
    coef = torch.eye(n, dtype=torch.double, device=gram.device)  # g~_i = sum_k coef[i, k] g_k
    for i in range(n):
        for j in (order[i].tolist() if order is not None else range(n)):
            if j == i or gram[j, j] <= 0:
                continue
            dot = coef[i] @ gram[:, j]  # g~_i . g_j
            if dot < 0:
                coef[i, j] -= dot / gram[j, j]
    return coef.sum(0)


class PCGrad(Weighting):
    """Projecting conflicting gradients; ``seed`` fixes the random task orders (same on every process)."""

    needs_gradients = True

    def __init__(self, tasks: list[str], binary: list[bool], seed: int = 0) -> None:
        super().__init__(tasks, binary)
        self.seed = seed
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def combine(self, losses, base, params, shared, grad_scale):
        weighted = base * losses
        if not (torch.is_grad_enabled() and self.training and weighted.requires_grad):
            return weighted.sum(), base
        grads = task_gradients(weighted, params, grad_scale)
        grads = grads.double()
        gram = grads @ grads.T
        if not torch.isfinite(gram).all():
            return weighted.sum(), base
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.steps))
        self.steps += 1
        n = len(losses)
        order = torch.stack([torch.randperm(n, generator=gen) for _ in range(n)])
        a = pcgrad_coefficients(gram, order).to(weighted.dtype)
        return (a * weighted).sum(), base * a
