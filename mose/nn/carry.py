"""LSTM states carried from one chunk of a user's stream to the next (truncated BPTT).

With ``data.prep.carry_state=true`` every batch lane holds one user's chunks in time order
(``mose.data.lanes``) and every batch carries ``reset (B,)``: the lanes whose state starts afresh
(a new user, or an empty lane). :func:`carry_states` tells every :class:`CarriedState` block of a
model (the LSTMs of ``mose.nn.grouped_lstm``) to start from the state its lanes reached at the end
of the previous chunk (zeros where ``reset``), and to keep its final state, detached, for the next
chunk; ``reset=None`` (every batch without lanes) runs each chunk from zeros, keeping nothing.

    carry_states(model, batch["reset"])   # before model(batch): what MultiTaskModule does
"""

from __future__ import annotations

import torch
from torch import nn


class CarriedState:
    """Mixin of a recurrent block: ``initial`` state ``(layers, B, width)`` x 2 and ``keep`` the final one."""

    carried: tuple[torch.Tensor, torch.Tensor] | None = None
    reset: torch.Tensor | None = None  # (B,) bool while carrying, else None

    def begin_chunk(self, reset: torch.Tensor | None) -> None:
        self.reset = reset
        if reset is None:
            self.carried = None

    def initial(self, layers: int, batch: int, width: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The state to start this chunk from: the carried one where the lane continues, else zeros."""
        zeros = like.new_zeros(layers, batch, width)
        if self.reset is None or self.carried is None or self.carried[0].shape != zeros.shape:
            return zeros, zeros
        keep = (~self.reset).to(like.device, like.dtype)[None, :, None]
        return self.carried[0] * keep, self.carried[1] * keep

    def keep(self, h: torch.Tensor, c: torch.Tensor) -> None:
        """Keep the final state ``(layers, B, width)`` for the next chunk (detached: BPTT stops here). A
        chunk's call consumes its ``begin_chunk``: a later call without one runs from zeros."""
        if self.reset is not None:
            self.carried = (h.detach(), c.detach())
        self.reset = None


def carry_states(model: nn.Module, reset: torch.Tensor | None) -> None:
    """Before a chunk: every :class:`CarriedState` of ``model`` continues its lanes (zeros where ``reset``),
    or, with ``reset=None``, starts from zeros and carries nothing."""
    for module in model.modules():
        if isinstance(module, CarriedState):
            module.begin_chunk(reset)
