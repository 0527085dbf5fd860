"""Several independent LSTMs run as one fused LSTM kernel call.

``G`` LSTMs of hidden size ``H`` are one LSTM of hidden size ``G*H`` whose recurrent weights
(and, for per-group inputs or upper layers, input weights) are masked block-diagonal, so no
group ever reads another group's state: exactly ``G`` separate LSTMs, in one kernel call
instead of ``G``. The masked blocks cost ``G`` times the recurrent FLOPs of separate LSTMs,
which pays off while ``G*H`` is small (see bench/); ``groups=1`` is a plain LSTM.
:class:`LSTMList` is the same layer as ``G`` separate ``nn.LSTM`` calls, faster for large ``G*H``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mose.nn.carry import CarriedState


def _block_mask(groups: int, rows_per_group: int, cols_per_group: int, gates: int = 4) -> torch.Tensor:
    """``(gates*G*rows, G*cols)`` 0/1 mask; rows are laid out gate-major as in ``nn.LSTM`` (i, f, g, o)."""
    block = torch.block_diag(*[torch.ones(rows_per_group, cols_per_group)] * groups)
    return block.repeat(gates, 1)


class GroupedLSTM(CarriedState, nn.Module):
    """``G`` LSTMs over the same steps: ``(B, S, in_dim) | (B, S, G, in_dim) -> (B, S, G, hidden)``.

    With a shared input ``(B, S, in_dim)`` every group reads all of it (experts over one stream);
    with ``(B, S, G, in_dim)`` group ``g`` reads only ``x[:, :, g]`` (a tower per task).
    """

    def __init__(self, groups: int, in_dim: int, hidden: int, num_layers: int = 1, dropout: float = 0.0,
                 shared_input: bool = True) -> None:
        super().__init__()
        self.groups, self.hidden, self.num_layers, self.dropout = groups, hidden, num_layers, dropout
        self.shared_input = shared_input
        gh, bound = groups * hidden, 1 / math.sqrt(hidden)
        self.weights = nn.ParameterList()
        for layer in range(num_layers):
            layer_in = (in_dim if shared_input else groups * in_dim) if layer == 0 else gh
            for shape in ((4 * gh, layer_in), (4 * gh, gh), (4 * gh,), (4 * gh,)):
                self.weights.append(nn.Parameter(torch.empty(shape).uniform_(-bound, bound)))
            in_mask = None if layer == 0 and shared_input else _block_mask(
                groups, hidden, in_dim if layer == 0 else hidden)
            self.register_buffer(f"in_mask{layer}", in_mask, persistent=False)
        self.register_buffer("hh_mask", _block_mask(groups, hidden, hidden), persistent=False)

    def flat_weights(self) -> list[torch.Tensor]:
        """Per layer ``[w_ih, w_hh, b_ih, b_hh]`` with the block masks applied."""
        out = []
        for layer in range(self.num_layers):
            w_ih, w_hh, b_ih, b_hh = self.weights[4 * layer: 4 * layer + 4]
            in_mask = getattr(self, f"in_mask{layer}")
            out += [w_ih if in_mask is None else w_ih * in_mask, w_hh * self.hh_mask, b_ih, b_hh]
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.shared_input:
            x = x.flatten(-2)  # (B, S, G * in_dim)
        h0, c0 = self.initial(self.num_layers, x.shape[0], self.groups * self.hidden, x)  # carried or zeros
        out, h, c = torch._VF.lstm(x, (h0, c0), self.flat_weights(), True, self.num_layers,
                                   self.dropout, self.training, False, True)
        self.keep(h, c)
        return out.unflatten(-1, (self.groups, self.hidden))


class LSTMList(CarriedState, nn.Module):
    """``G`` separate ``nn.LSTM``: same contract as :class:`GroupedLSTM`, ``G`` kernel calls."""

    def __init__(self, groups: int, in_dim: int, hidden: int, num_layers: int = 1, dropout: float = 0.0,
                 shared_input: bool = True) -> None:
        super().__init__()
        self.shared_input, self.hidden, self.num_layers = shared_input, hidden, num_layers
        self.lstms = nn.ModuleList(nn.LSTM(in_dim, hidden, num_layers, batch_first=True,
                                           dropout=dropout if num_layers > 1 else 0.0) for _ in range(groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs = [x] * len(self.lstms) if self.shared_input else x.unbind(-2)
        h0, c0 = self.initial(self.num_layers, x.shape[0], len(self.lstms) * self.hidden, x)  # (L, B, G*H)
        outs, hs, cs = [], [], []
        for g, (lstm, xg) in enumerate(zip(self.lstms, inputs)):
            part = slice(g * self.hidden, (g + 1) * self.hidden)
            out, (h, c) = lstm(xg, (h0[..., part].contiguous(), c0[..., part].contiguous()))
            outs.append(out), hs.append(h), cs.append(c)
        self.keep(torch.cat(hs, -1), torch.cat(cs, -1))
        return torch.stack(outs, dim=-2)
