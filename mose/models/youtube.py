"""YouTube's multitask ranker (Zhao et al., RecSys 2019): MMoE over a shared layer plus a shallow bias tower.

* A shared hidden layer sits below the MMoE experts (the paper's cost saving).
* A shallow tower reads the selection-bias features (``bias_features``: categorical columns such
  as ``position`` and ``device``) and adds its logit to every task's logit, in training and at
  serving. The position feature (``position_feature``) is the one unknown at serving: in
  ``eval()`` (validation, test, ``mose-eval``, ``mose-predict``, ``mose-export``) it is replaced by
  the missing index (OOV) for every row, while ``device`` and any other bias feature keep their
  values, so the served logit is ``main(x) + bias(position=missing, device)``. In training,
  ``position_dropout`` (default 0.1, as in the paper) of the rows get the missing position too, so
  the tower learns the missing-position embedding and the model does not over-rely on position;
  rows whose position is already unknown (index 0 or 1) count as missing.
* The main model never sees the position feature (it is set to the missing index before the
  embedding); it sees every other input, the other bias features included.
* The ranking score is a weighted product of the task predictions,
  ``prod_t sigmoid(logit_t) ** w_t`` over ``score_weights`` (``aux["score"] (B,)``).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from data_prep.vocab import OOV
from mose.nn.embeddings import FeatureEmbedding, InputSpec, id_embedding
from mose.nn.experts import GroupedMLP
from mose.nn.gates import SoftmaxGates, mix
from mose.nn.mlp import MLP
from mose.nn.towers import Towers, task_logits

log = logging.getLogger(__name__)


class YouTubeRanker(nn.Module):
    """``aux["gates"] (B, T, E)``, ``aux["bias_logits"] (B, T)`` (when the data has bias features),
    ``aux["score"] (B,)``."""

    def __init__(self, input_spec: InputSpec, tasks: list[str], embed_dim: int = 16, shared: list[int] = (128,),
                 n_experts: int = 4, expert: list[int] = (64,), tower: list[int] = (32,), dropout: float = 0.0,
                 bias_features: list[str] = ("position", "device"), position_feature: str = "position",
                 position_dropout: float = 0.1, bias_dim: int = 8, bias_hidden: list[int] = (),
                 score_weights: dict[str, float] | None = None, norm: str | None = None) -> None:
        super().__init__()
        if not 0.0 <= position_dropout < 1.0:
            raise ValueError(f"model.position_dropout must be in [0, 1), got {position_dropout}")
        self.tasks = list(tasks)
        names = list(input_spec.cat_names)
        present = [f for f in bias_features if f in names]
        if len(present) < len(bias_features):
            log.warning("YouTubeRanker: bias features %s not in the data's categorical columns %s; "
                        "the bias tower uses %s", [f for f in bias_features if f not in names], names, present)
        if present and position_feature not in present:
            log.warning("YouTubeRanker: position_feature '%s' is not among the bias features %s: nothing is "
                        "treated as missing at serving and there is no position dropout", position_feature, present)
        # index of the position column among the C categorical columns; -1: none
        self.position_col = names.index(position_feature) if position_feature in present else -1
        self.register_buffer("position_index", torch.tensor([max(self.position_col, 0)]), persistent=False)
        self.position_dropout = float(position_dropout)
        self.register_buffer("bias_cols", torch.tensor([names.index(f) for f in present], dtype=torch.long),
                             persistent=False)
        self.embed = FeatureEmbedding(input_spec, embed_dim)
        self.shared = MLP(self.embed.out_dim, list(shared), dropout, norm)
        self.experts = GroupedMLP(n_experts, self.shared.out_dim, list(expert), dropout, norm=norm)
        self.gates = SoftmaxGates(self.shared.out_dim, len(self.tasks), n_experts)
        self.towers = Towers(len(self.tasks), self.experts.out_dim, list(tower), dropout, norm)
        self.bias_tower = None
        if present:
            self.bias_embed = nn.ModuleList(id_embedding(input_spec.cat_vocab[names.index(f)], bias_dim)
                                            for f in present)
            mlp = MLP(bias_dim * len(present), list(bias_hidden))
            self.bias_tower = nn.Sequential(mlp, nn.Linear(mlp.out_dim, len(self.tasks)))
        weights = score_weights if score_weights is not None else {t: 1.0 for t in self.tasks}
        unknown = set(weights) - set(self.tasks)
        if unknown:
            raise ValueError(f"model.score_weights names unknown tasks {sorted(unknown)}; tasks: {self.tasks}")
        self.register_buffer("score_weights", torch.tensor([float(weights.get(t, 0.0)) for t in self.tasks]),
                             persistent=False)

    def shared_parameters(self) -> list[nn.Parameter]:
        """The last shared layer (GradNorm's ``W``): the MMoE experts' output layer."""
        return list(self.experts.layers[-1].parameters())

    def inputs(self, cat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The categorical columns ``(B, C)`` the main model and the bias tower read.

        Main model: position always missing. Bias tower: position missing at serving (``eval()``) and
        in training for a ``position_dropout`` share of the rows (and where it is unknown already).
        """
        if self.position_col < 0:
            return cat, cat
        col = self.position_col
        main = cat.index_fill(-1, self.position_index, OOV)
        if not self.training:
            return main, main
        pos = cat[..., col]  # PAD (0) and OOV (1) both mean unknown
        drop = (pos <= OOV) | (torch.rand(pos.shape, device=pos.device) < self.position_dropout)
        biased = cat.clone()
        biased[..., col] = torch.where(drop, OOV, pos)
        return main, biased

    def bias_logits(self, cat: torch.Tensor) -> torch.Tensor:
        """The shallow tower's logits ``(B, T)`` of the categorical columns ``(B, C)``."""
        cats = cat[..., self.bias_cols]  # (B, Cb): the bias features of the C columns
        return self.bias_tower(torch.cat([emb(cats[..., i]) for i, emb in enumerate(self.bias_embed)], -1))

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        """Ranking score ``prod_t sigmoid(logit_t) ** w_t``: ``(B, T) -> (B,)``."""
        return torch.exp((F.logsigmoid(logits.float()) * self.score_weights).sum(-1))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict:
        main = biased = batch.get("cat")
        if main is not None:
            main, biased = self.inputs(main)
        h = self.shared(self.embed({**batch, "cat": main} if main is not None else batch))
        gates = self.gates(h)
        logits = self.towers(mix(self.experts(h), gates))  # (B, T)
        aux = {"gates": gates}
        if self.bias_tower is not None and biased is not None:
            aux["bias_logits"] = bias = self.bias_logits(biased)
            logits = logits + bias
        aux["score"] = self.score(logits)
        return {**task_logits(logits, self.tasks), "aux": aux}
