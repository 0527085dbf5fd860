"""From a batch of prepared features to one dense vector per event."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from data_prep.vocab import OOV, PAD

# id_dropout.<key> (conf/train.yaml): the batch column whose training ids are dropped, and what replaces them:
# user and item ids the OOV row (so it is trained for unseen ids), history tokens PAD (masked out: item and labels)
ID_DROPOUT = {"user": ("user", OOV), "item": ("item", OOV), "history": ("hist_item", PAD)}

EMBED_INIT_STD = 0.05


def id_embedding(n: int, dim: int, padding_idx: int | None = None) -> nn.Embedding:
    """An id table initialised ``N(0, EMBED_INIT_STD)`` (padding row 0), not torch's ``N(0, 1)``.

    Unit-variance ids swamp the numeric and context inputs at the start and move ~lr per Adam
    step, so most of a short training is spent shrinking them: on KuaiRand MMoE test AUC
    (3 epochs, 3 seeds) rose from 0.677 to 0.687 on is_click, 0.644 to 0.662 on long_view and
    0.645 to 0.79 on is_follow; on the synthetic default from 0.717 to 0.770 on click
    (docs/performance.md). Any std from 1e-4 to 0.05 did as well.
    """
    table = nn.Embedding(n, dim, padding_idx=padding_idx)
    nn.init.normal_(table.weight, 0.0, EMBED_INIT_STD)
    table._fill_padding_idx_with_zero()
    return table


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
    pcode_vocab: tuple[int, ...] = ()  # sizes of the POSO personalization-code columns (batch["pcode"])
    cat_names: tuple[str, ...] = ()  # names of the categorical columns (batch["cat"] order), if known

    @classmethod
    def from_manifest(cls, manifest: dict) -> InputSpec:
        v, spec = manifest["vocab_sizes"], manifest["spec"]
        return cls(
            n_users=v["user_id"], n_items=v["item_id"], cat_vocab=tuple(v[c] for c in spec["categorical"]),
            n_numeric=len(spec["numeric"]), history_len=manifest["history_len"],
            n_history_labels=len(manifest["history_labels"]), n_prior_buckets=manifest["prior_buckets"],
            pcode_vocab=tuple(manifest.get("pcode", {}).get("sizes", ())),
            cat_names=tuple(spec["categorical"]),
        )


class FeatureEmbedding(nn.Module):
    """Embeds user, item, categorical context and personalization bucket; concatenates numerics.

    Works on any leading shape ``(*)``: ``(B,)`` events or ``(B, S)`` stream steps.
    ``history=True`` adds the history: the mean of its items' embeddings plus a projection of
    their labels (one item table embeds both the candidate and the history).
    ``pool_history=False`` keeps the history tokens (:meth:`history`) out of the output, for a
    model that fuses them itself (attention); the output is then the non-sequential part only.
    ``history_by_label=True`` (with ``history``; also when ``pool_history=False``) adds, per history label ``l``, the mean embedding
    of the history items with ``l = 1`` and its product with the candidate item: the plain mean pool
    adds the labels' mean to the items' mean, which cannot tell *which* items the user clicked or
    liked, so it carries no taste (docs/poso.md, "Is it the data?").
    ``previous_labels=True`` adds the labels of the user's previous event (stream steps).
    The elementwise products user x item (and history x item) are added as interaction
    features, as in NeuMF's generalized matrix factorization: an MLP learns dot products poorly.
    Batch keys: user, item, prior_bucket ``(*)``; cat ``(*, C)``; num ``(*, F)``;
    hist_item ``(*, K)``; hist_label ``(*, K, L)``; prev_label ``(*, L)``. Output ``(*, out_dim)``.
    """

    def __init__(self, spec: InputSpec, dim: int = 16, history: bool = True, previous_labels: bool = False,
                 pool_history: bool = True, history_by_label: bool = False) -> None:
        super().__init__()
        self.user = id_embedding(spec.n_users, dim)
        self.item = id_embedding(spec.n_items, dim, padding_idx=PAD)
        self.cat = nn.ModuleList(id_embedding(n, dim) for n in spec.cat_vocab)
        self.prior = id_embedding(spec.n_prior_buckets, dim)
        n_labels = spec.n_history_labels
        self.feedback = nn.Linear(n_labels, dim, bias=False) if n_labels and (history or previous_labels) else None
        self.pool = history and pool_history
        self.previous_labels = previous_labels
        self.by_label = n_labels if history and history_by_label else 0
        self.out_dim = (dim * (4 + 2 * self.pool + 2 * self.by_label + previous_labels + len(spec.cat_vocab))
                        + spec.n_numeric)

    def history(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """History tokens ``(B, K, D)`` (``D = dim``) and their mask ``(B, K)``."""
        tokens = self.item(batch["hist_item"])
        if self.feedback is not None:
            tokens = tokens + self.feedback(batch["hist_label"].to(tokens.dtype))
        return tokens, batch["hist_item"] != PAD

    def history_items(self, hist: torch.Tensor) -> torch.Tensor:
        """The item embeddings ``(B, K, D)`` of history ids ``(B, K)``, gathered with ``index_select``."""
        return self.item.weight.index_select(0, hist.reshape(-1)).view(*hist.shape, -1)

    def pooled_history(self, batch: dict[str, torch.Tensor], dtype: torch.dtype,
                       items: torch.Tensor | None = None) -> torch.Tensor:
        """The masked mean of :meth:`history`'s tokens ``(B, D)``, computed without them.

        The label projection is linear, so it is applied to the mean labels ``(B, L)`` instead of
        to every token; the items are gathered with ``index_select``, whose backward (an
        ``index_add``) is ~2x faster on CPU than the embedding's. Same values (to rounding) as
        ``MeanPool()(*self.history(batch))``; ~7% of a KuaiRand MMoE step. ``items``: the
        :meth:`history_items` of the batch, when the caller has gathered them already.
        """
        hist = batch["hist_item"]
        mask = (hist != PAD).unsqueeze(-1).to(dtype)  # (B, K, 1)
        count = mask.sum(-2).clamp_min(1.0)
        items = self.history_items(hist) if items is None else items
        pooled = (items * mask).sum(-2) / count
        if self.feedback is not None:
            pooled = pooled + self.feedback((batch["hist_label"].to(dtype) * mask).sum(-2) / count)
        return pooled

    def history_by_label(self, batch: dict[str, torch.Tensor], dtype: torch.dtype,
                         items: torch.Tensor | None = None) -> torch.Tensor:
        """Per history label, the mean embedding of the history items carrying it ``(B, L, D)`` (zeros where
        none does); ``items`` as in :meth:`pooled_history`."""
        hist = batch["hist_item"]
        labels = batch["hist_label"].to(dtype) * (hist != PAD).unsqueeze(-1).to(dtype)  # (B, K, L)
        items = self.history_items(hist) if items is None else items  # (B, K, D)
        return torch.einsum("...kl,...kd->...ld", labels, items) / labels.sum(-2).clamp_min(1.0).unsqueeze(-1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        user, item = self.user(batch["user"]), self.item(batch["item"])
        parts = [user, item, user * item, self.prior(batch["prior_bucket"])]
        items = self.history_items(batch["hist_item"]) if self.pool and self.by_label else None  # gathered once
        if self.pool:
            interest = self.pooled_history(batch, user.dtype, items)
            parts += [interest, interest * item]
        if self.by_label:
            liked = self.history_by_label(batch, user.dtype, items)  # (*, L, D)
            parts += [liked.flatten(-2), (liked * item.unsqueeze(-2)).flatten(-2)]
        if self.previous_labels:
            prev = batch["prev_label"].to(parts[0].dtype)
            parts.append(self.feedback(prev) if self.feedback is not None else parts[0].new_zeros(parts[0].shape))
        parts += [emb(batch["cat"][..., i]) for i, emb in enumerate(self.cat)]
        parts.append(batch["num"].to(parts[0].dtype))
        return torch.cat(parts, dim=-1)
