"""Target attention: one query per event attends over that event's history tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mose.nn.experts import GroupedLinear


class TargetAttention(nn.Module):
    """Multi-head attention with a single query per row, padding masked.

    ``query (B, Dq)`` (the non-sequential embeddings: user, candidate item, context),
    ``tokens (B, K, Dt)`` (history), ``mask (B, K)`` (True = real token) -> ``(B, out_dim)``.
    Rows without any real token give ``out(0)``: padded tokens never reach the output.

    Hooks for MHA-POSO (:class:`mose.nn.poso.PosoAttention`): ``key_scale (B, dim)`` multiplies the
    keys; the values come from ``n_values`` projections averaged with weights ``value_mix (B,
    n_values)`` (default all ones: a plain mean, i.e. one ordinary linear value map).

    >>> TargetAttention(8, 4, 16, heads=2)(torch.zeros(3, 8), torch.zeros(3, 5, 4), torch.ones(3, 5, dtype=torch.bool)).shape
    torch.Size([3, 16])
    """

    def __init__(self, query_dim: int, token_dim: int, dim: int = 32, heads: int = 2, n_values: int = 1,
                 out_dim: int | None = None) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention dim {dim} must be divisible by heads {heads}")
        self.heads, self.dim, self.n_values = heads, dim, n_values
        self.q = nn.Linear(query_dim, dim)
        self.k = nn.Linear(token_dim, dim)
        self.v = GroupedLinear(n_values, token_dim, dim)
        self.out = nn.Linear(dim, out_dim or dim)
        self.out_dim = out_dim or dim

    def forward(self, query: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                key_scale: torch.Tensor | None = None, value_mix: torch.Tensor | None = None) -> torch.Tensor:
        b, k_len, _ = tokens.shape
        h, dh = self.heads, self.dim // self.heads
        q = self.q(query).view(b, 1, h, dh).transpose(1, 2)  # (B, heads, 1, dim / heads)
        k = self.k(tokens)  # (B, K, dim)
        if key_scale is not None:
            k = k * key_scale.unsqueeze(1)
        values = self.v(tokens.flatten(0, 1)).unflatten(0, (b, k_len))  # (B, K, n_values, dim)
        if value_mix is None:
            value_mix = values.new_ones(b, self.n_values)
        v = torch.einsum("bknd,bn->bkd", values, value_mix) / self.n_values  # (B, K, dim)
        k = k.view(b, k_len, h, dh).transpose(1, 2)
        v = v.view(b, k_len, h, dh).transpose(1, 2)
        has = mask.any(-1)  # (B,)
        allowed = (mask | ~has.unsqueeze(-1))[:, None, None, :]  # empty rows attend anywhere, zeroed below
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # (B, heads, 1, dim / heads)
        o = o.transpose(1, 2).reshape(b, self.dim) * has.unsqueeze(-1).to(o.dtype)
        return self.out(o)
