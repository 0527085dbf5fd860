"""PEPNet (Chang et al., KDD 2023): parameter and embedding personalized network.

Both halves are Gate NUs, ``delta(x) = gamma * sigmoid(W2 relu(W1 x + b1) + b2)`` in ``(0, gamma)``
(:class:`~mose.nn.poso.PersonalizedGate`, POSO's gate; ``gamma = gate_scale = 2``), fed personalized
prior features beside a stop-gradient (``detach``) copy of what they gate, so the gates adapt to
the input without pulling the main network towards them:

- **EPNet** gates the shared embedding ``E (B, D)`` elementwise:
  ``O_ep = delta_domain(E(F_d) ++ sg(E)) * E``, ``F_d`` the domain-side features: the categorical
  columns ``domain_features`` (e.g. ``[device]``, KuaiRand's ``[tab]`` in the official layout) and the
  user-side personalization code (``batch["pcode"]``: prior-activity bucket, new-user flag and
  ``data.prep.personalization`` columns, as POSO reads it).
- **PPNet** gates every hidden layer of every task tower:
  ``H_{l+1} = delta_task^l(O_prior ++ sg(O_ep)) * relu(W_l H_l + b_l)``, ``H_0 = O_ep``, where the
  prior is the user and item id embeddings and the personalization code; one Gate NU per layer
  gives all ``T`` towers' scales (``(B, T * H_l)``). Towers run as one batched op
  (:class:`~mose.nn.poso.PosoGroupedMLP`: MLP-POSO's layer gating, with PPNet's gate input).

The relation to MLP-POSO (``model=poso_mlp``): the same gate function and the same per-layer
scaling of the hidden units; POSO gates the experts and towers of an MMoE from the
personalization code alone, PEPNet has no experts and gates the embedding (EPNet) and the towers
from a wider prior (ids, domain, and a stop-gradient copy of the gated input). With both gates'
last layers zeroed (:meth:`zero_gates`) every gate is ``gamma / 2 = 1`` and PEPNet is exactly its
base network: ``embed -> a tower per task``.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from mose.nn.embeddings import FeatureEmbedding, InputSpec
from mose.nn.poso import PersonalizationCode, PersonalizedGate, PosoGroupedMLP
from mose.nn.towers import task_logits

log = logging.getLogger(__name__)


class PEPNet(nn.Module):
    """``embed -> EPNet gate -> PPNet-gated tower per task``.

    ``aux["epnet_gates"] (B, D)``: the embedding gate; the tower gates are not returned.
    """

    def __init__(self, input_spec: InputSpec, tasks: list[str], embed_dim: int = 16,
                 tower: list[int] = (128, 64, 32), dropout: float = 0.0, domain_features: list[str] = (),
                 gate_hidden: int = 64, gate_scale: float = 2.0, pc_dim: int = 8, norm: str | None = None) -> None:
        super().__init__()
        self.tasks = list(tasks)
        names = list(input_spec.cat_names)
        present = [f for f in domain_features if f in names]
        if len(present) < len(domain_features):
            log.warning("PEPNet: domain features %s not in the data's categorical columns %s; EPNet uses %s",
                        [f for f in domain_features if f not in names], names, present)
        self.domain_cols = [names.index(f) for f in present]  # of batch["cat"]'s C columns
        self.embed = FeatureEmbedding(input_spec, embed_dim)
        self.pc = PersonalizationCode(tuple(input_spec.pcode_vocab), pc_dim)
        dim = self.embed.out_dim
        domain_dim = embed_dim * len(present) + self.pc.out_dim
        prior_dim = 2 * embed_dim + self.pc.out_dim  # user and item ids, personalization code
        self.epnet = PersonalizedGate(domain_dim + dim, dim, gate_hidden, gate_scale)
        self.towers = PosoGroupedMLP(len(self.tasks), dim, [*tower, 1], prior_dim + dim, dropout,
                                     last_activation=False, gate_hidden=gate_hidden, scale=gate_scale, norm=norm)

    def zero_gates(self) -> None:
        """Every gate's last layer to zero: each gate is ``gate_scale / 2``."""
        for gate in (self.epnet, *self.towers.gates):
            gate.zero_last()

    def shared_parameters(self) -> list[nn.Parameter]:
        """The last layer every task shares (GradNorm's ``W``): the EPNet gate's output layer."""
        return list(self.epnet.net[-1].parameters())

    def domain_input(self, batch: dict[str, torch.Tensor], e: torch.Tensor, pc: torch.Tensor) -> torch.Tensor:
        """EPNet's gate input ``E(F_d) ++ sg(E)``: domain features, personalization code, detached embedding."""
        domain = [self.embed.cat[c](batch["cat"][..., c]) for c in self.domain_cols]
        return torch.cat([*domain, pc, e.detach()], -1)

    def prior_input(self, batch: dict[str, torch.Tensor], o_ep: torch.Tensor, pc: torch.Tensor) -> torch.Tensor:
        """PPNet's gate input ``O_prior ++ sg(O_ep)``: user and item ids, personalization code, detached O_ep."""
        return torch.cat([self.embed.user(batch["user"]), self.embed.item(batch["item"]), pc, o_ep.detach()], -1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict:
        e = self.embed(batch)  # (B, D)
        pc = self.pc(batch["pcode"])  # (B, P * pc_dim)
        gate = self.epnet(self.domain_input(batch, e, pc))  # (B, D)
        o_ep = gate * e
        logits = self.towers(o_ep, self.prior_input(batch, o_ep, pc)).squeeze(-1)  # (B, T)
        return {**task_logits(logits, self.tasks), "aux": {"epnet_gates": gate}}
