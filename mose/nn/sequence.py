"""Per-step sequence blocks: grouped LSTMs, or their feed-forward counterpart for baselines."""

from __future__ import annotations

import torch
from torch import nn

from mose.nn.experts import GroupedMLP
from mose.nn.grouped_lstm import GroupedLSTM, LSTMList

CELLS = ("lstm", "ff")
FUSED_MAX_WIDTH = 64  # G*H up to which one masked kernel beats G nn.LSTM calls on CPU (bench/stream_throughput.py)


class GroupedSequence(nn.Module):
    """``G`` sequence networks over the steps: ``(B, S, in_dim) | (B, S, G, in_dim) -> (B, S, G, hidden)``.

    ``cell="lstm"``: causal LSTMs (step s reads steps <= s). ``cell="ff"``: an MLP of
    ``num_layers`` layers applied to each step on its own (the feed-forward baseline).
    ``fused`` picks the LSTM kernel: one block-diagonal :class:`GroupedLSTM` call or ``G`` separate
    LSTMs; ``None`` chooses the fused one while ``G*H <= FUSED_MAX_WIDTH``.
    """

    def __init__(self, groups: int, in_dim: int, hidden: int, num_layers: int = 1, cell: str = "lstm",
                 dropout: float = 0.0, shared_input: bool = True, fused: bool | None = None) -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {CELLS}, got '{cell}'")
        self.cell, self.out_dim = cell, hidden
        if cell == "lstm":
            fused = groups * hidden <= FUSED_MAX_WIDTH if fused is None else fused
            self.net = (GroupedLSTM if fused else LSTMList)(groups, in_dim, hidden, num_layers, dropout, shared_input)
        else:
            self.net = GroupedMLP(groups, in_dim, [hidden] * num_layers, dropout)

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """The parameters of the last layer of every group (a model's last shared layer, for GradNorm)."""
        if self.cell == "ff":
            return list(self.net.layers[-1].parameters())
        if isinstance(self.net, GroupedLSTM):
            return list(self.net.weights[-4:])  # the last layer's w_ih, w_hh, b_ih, b_hh
        last = self.net.lstms[0].num_layers - 1
        return [getattr(lstm, f"{name}_l{last}") for lstm in self.net.lstms
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cell == "lstm":
            return self.net(x)
        b, s = x.shape[:2]
        return self.net(x.flatten(0, 1)).unflatten(0, (b, s))
