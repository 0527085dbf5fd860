"""One extraction level of PLE (Tang et al., RecSys 2020): task-specific and shared experts, gated per task."""

from __future__ import annotations

import torch
from torch import nn

from mose.nn.experts import GroupedLinear, GroupedMLP
from mose.nn.gates import gate_softmax, mix


class ExtractionLayer(nn.Module):
    """``T`` tasks with ``n_specific`` experts each plus ``n_shared`` shared experts, all one batched op.

    Experts are ordered task-major: task ``t`` owns ``[t * n_specific, (t + 1) * n_specific)``, the
    shared ones come last.
    Task ``t``'s gate reads task ``t``'s input and weighs only its own and the shared experts
    (the others are masked to weight 0, hence zero gradient). With ``shared_gate`` (every level of
    PLE but the last) a shared gate over all experts makes the next level's shared input.

    Input ``task_x (B, T, D)`` (or ``(B, D)`` shared by all) and ``shared_x (B, D)``; output
    ``task_out (B, T, H)``, ``shared_out (B, H) | None`` and gates ``(B, T[+1], E)``.
    """

    def __init__(self, n_tasks: int, in_dim: int, hidden: list[int], n_specific: int = 1, n_shared: int = 1,
                 shared_gate: bool = False, dropout: float = 0.0, norm: str | None = None) -> None:
        super().__init__()
        self.n_tasks, self.n_specific, self.n_shared = n_tasks, n_specific, n_shared
        self.n_experts = n_tasks * n_specific + n_shared
        self.experts = GroupedMLP(self.n_experts, in_dim, list(hidden), dropout, norm=norm)
        self.n_gates = n_tasks + shared_gate
        self.gates = GroupedLinear(self.n_gates, in_dim, self.n_experts)
        owner = torch.arange(self.n_experts) // n_specific  # task of each expert; >= n_tasks: shared
        allowed = (owner[None, :] == torch.arange(n_tasks)[:, None]) | (owner[None, :] >= n_tasks)
        if shared_gate:
            allowed = torch.cat([allowed, torch.ones(1, self.n_experts, dtype=torch.bool)])
        self.register_buffer("allowed", allowed, persistent=False)  # (T[+1], E)
        self.out_dim = self.experts.out_dim

    def forward(self, task_x: torch.Tensor, shared_x: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        if task_x.dim() == 2:  # first level: one input for all
            experts, gate_in = self.experts(task_x), task_x
        else:
            per_expert = torch.cat([task_x.repeat_interleave(self.n_specific, 1),
                                    shared_x.unsqueeze(1).expand(-1, self.n_shared, -1)], 1)  # (B, E, D)
            experts = self.experts(per_expert)
            gate_in = task_x if self.n_gates == self.n_tasks else torch.cat([task_x, shared_x.unsqueeze(1)], 1)
        logits = self.gates(gate_in).float().masked_fill(~self.allowed, float("-inf"))
        gates = gate_softmax(logits)  # (B, T[+1], E), exactly 0 off the task's own + shared experts
        out = mix(experts, gates.to(experts.dtype))
        shared_out = out[:, self.n_tasks] if self.n_gates > self.n_tasks else None
        return out[:, :self.n_tasks], shared_out, gates
