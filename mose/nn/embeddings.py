"""From a batch of prepared features to one dense vector per event."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mose.nn.encoders import MeanPool


@dataclass(frozen=True)
class InputSpec:
    """Sizes of a prepared dataset's features, as a model needs them."""

    n_users: int
    n_items: int
    cat_vocab: tuple[int, ...]
    n_numeric: int
    history_len: int
    n_history_labels: int
    n_prior_buckets: int

    @classmethod
    def from_manifest(cls, manifest: dict) -> InputSpec:
        v, spec = manifest["vocab_sizes"], manifest["spec"]
        return cls(
            n_users=v["user_id"], n_items=v["item_id"], cat_vocab=tuple(v[c] for c in spec["categorical"]),
            n_numeric=len(spec["numeric"]), history_len=manifest["history_len"],
            n_history_labels=len(manifest["history_labels"]), n_prior_buckets=manifest["prior_buckets"],
        )


class FeatureEmbedding(nn.Module):
    """Embeds user, item, categorical context, personalization bucket and history; concatenates numerics.

    The history is the mean of its items' embeddings plus a projection of their labels
    (the shared item table embeds both the candidate and the history).
    Batch keys: user, item (B,); cat (B, C); num (B, F); prior_bucket (B,);
    hist_item (B, K); hist_label (B, K, L). Output ``(B, out_dim)``.
    """

    def __init__(self, spec: InputSpec, dim: int = 16) -> None:
        super().__init__()
        self.user = nn.Embedding(spec.n_users, dim)
        self.item = nn.Embedding(spec.n_items, dim, padding_idx=0)
        self.cat = nn.ModuleList(nn.Embedding(n, dim) for n in spec.cat_vocab)
        self.prior = nn.Embedding(spec.n_prior_buckets, dim)
        self.feedback = nn.Linear(spec.n_history_labels, dim, bias=False) if spec.n_history_labels else None
        self.pool = MeanPool()
        self.out_dim = dim * (4 + len(spec.cat_vocab)) + spec.n_numeric

    def history(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """History tokens ``(B, K, dim)`` and their mask ``(B, K)``."""
        tokens = self.item(batch["hist_item"])
        if self.feedback is not None:
            tokens = tokens + self.feedback(batch["hist_label"].to(tokens.dtype))
        return tokens, batch["hist_item"] > 0

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens, mask = self.history(batch)
        parts = [self.user(batch["user"]), self.item(batch["item"]), self.prior(batch["prior_bucket"]),
                 self.pool(tokens, mask)]
        parts += [emb(batch["cat"][:, i]) for i, emb in enumerate(self.cat)]
        parts.append(batch["num"].to(parts[0].dtype))
        return torch.cat(parts, dim=-1)
