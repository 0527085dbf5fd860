"""YouTube's multitask ranker (Zhao et al., RecSys 2019): MMoE over a shared layer plus a shallow bias tower.

* A shared hidden layer sits below the MMoE experts (the paper's cost saving).
* A shallow tower reads only the selection-bias features (``bias_features``: categorical columns
  such as ``position`` and ``device``) and adds its logit to every task's logit during training.
  At serving (``eval()``) it is dropped, and in training it is dropped for rows whose first bias
  feature (``position``) is missing (the OOV / padding index): the main model then scores the
  debiased engagement. The main model never sees the bias features (they are set to the missing
  index before embedding), so training and serving see the same inputs.
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
    """``aux["gates"] (B, T, E)``, ``aux["bias_logits"] (B, T)`` (training only), ``aux["score"] (B,)``."""

    def __init__(self, input_spec: InputSpec, tasks: list[str], embed_dim: int = 16, shared: list[int] = (128,),
                 n_experts: int = 4, expert: list[int] = (64,), tower: list[int] = (32,), dropout: float = 0.0,
                 bias_features: list[str] = ("position", "device"), bias_dim: int = 8,
                 bias_hidden: list[int] = (), score_weights: dict[str, float] | None = None,
                 norm: str | None = None) -> None:
        super().__init__()
        self.tasks = list(tasks)
        names = list(input_spec.cat_names)
        present = [f for f in bias_features if f in names]
        if len(present) < len(bias_features):
            log.warning("YouTubeRanker: bias features %s not in the data's categorical columns %s; "
                        "the bias tower uses %s", [f for f in bias_features if f not in names], names, present)
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
        return list(self.shared.parameters())

    def bias_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The shallow tower's logits ``(B, T)``, 0 where position is missing; None at serving."""
        if self.bias_tower is None or not self.training or "cat" not in batch:
            return None
        cats = batch["cat"][..., self.bias_cols]  # (B, Cb): the bias features of the C columns
        h = torch.cat([emb(cats[..., i]) for i, emb in enumerate(self.bias_embed)], -1)
        present = (cats[..., 0] > OOV).unsqueeze(-1)  # PAD and OOV mean "unknown"
        return self.bias_tower(h) * present

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        """Ranking score ``prod_t sigmoid(logit_t) ** w_t``: ``(B, T) -> (B,)``."""
        return torch.exp((F.logsigmoid(logits.float()) * self.score_weights).sum(-1))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict:
        main = batch
        if len(self.bias_cols) and "cat" in batch:  # the main model is blind to the bias features
            main = {**batch, "cat": batch["cat"].index_fill(-1, self.bias_cols, OOV)}
        h = self.shared(self.embed(main))
        gates = self.gates(h)
        logits = self.towers(mix(self.experts(h), gates))  # (B, T)
        aux = {"gates": gates}
        bias = self.bias_logits(batch)
        if bias is not None:
            aux["bias_logits"] = bias
            logits = logits + bias
        aux["score"] = self.score(logits)
        return {**task_logits(logits, self.tasks), "aux": aux}
