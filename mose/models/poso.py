"""MMoE with multi-head attention fusion and POSO (Dai et al., 2021) personalized cold-start modules.

As in the Kwai model the POSO paper describes: the non-sequential embeddings (user, candidate item,
context) query a multi-head attention over the history tokens (padding masked); its output is
concatenated with the non-sequential embeddings and fed to an MMoE. Each POSO module is a switch:

- ``mlp_poso``: a personalized gate on every hidden layer of the experts and the towers;
- ``mha_poso``: the attention's keys gated (light gate) and its values mixed per user group;
- ``mmoe_poso``: each expert's output scaled by its personalized gate times the task gate.

All off is the plain MMoE+MHA baseline; ``mha=False`` mean-pools the history instead (then, with
POSO off, the model is the plain :class:`mose.models.mmoe.MMoE`). The gates read the
personalization code ``batch["pcode"] (B, P)`` (past-only; see ``data_prep/transform.py``);
``code`` picks what they read, for the paper's controls: ``pcode`` (default), ``shuffled`` (the
batch's codes permuted across its events, so the code says nothing about the event's user: should
gain ~0) or ``features`` (the code's embedding with every input embedding, the paper's Table 6
"all features as code": should hurt).
"""

from __future__ import annotations

import torch
from torch import nn

from mose.nn.attention import TargetAttention
from mose.nn.embeddings import FeatureEmbedding, InputSpec
from mose.nn.experts import GroupedMLP
from mose.nn.gates import SoftmaxGates, mix
from mose.nn.poso import PersonalizationCode, PersonalizedGate, PosoAttention, PosoGroupedMLP, poso_mix
from mose.nn.towers import task_logits

CODES = ("pcode", "shuffled", "features")  # model.code: what the personalized gates read


class PosoMMoE(nn.Module):
    """``(B,)`` events -> ``{task: (B,) logits}``; ``aux["gates"]`` task gates ``(B, T, E)``,
    ``aux["poso_gates"]`` the MMoE-POSO expert gates ``(B, E)`` when on."""

    def __init__(self, input_spec: InputSpec, tasks: list[str], embed_dim: int = 16, n_experts: int = 4,
                 expert: list[int] = (128, 64), tower: list[int] = (32,), dropout: float = 0.0,
                 mha: bool = True, attn_dim: int = 32, attn_heads: int = 2, n_values: int = 4,
                 mlp_poso: bool = False, mha_poso: bool = False, mmoe_poso: bool = False,
                 gate_scale: float = 2.0, gate_hidden: int = 32, pc_dim: int = 8, norm: str | None = None,
                 code: str = "pcode", history_by_label: bool = False) -> None:
        super().__init__()
        if mha_poso and not mha:
            raise ValueError("model.mha_poso needs model.mha=true (attention fusion)")
        if code not in CODES:
            raise ValueError(f"model.code={code}: must be one of {', '.join(CODES)}")
        self.code = code
        self.tasks, self.mha = list(tasks), mha
        n_tasks = len(self.tasks)
        self.embed = FeatureEmbedding(input_spec, embed_dim, history=True, pool_history=not mha,
                                      history_by_label=history_by_label)
        in_dim = self.embed.out_dim
        self.pc = None
        code_dim = 0
        if mlp_poso or mha_poso or mmoe_poso:
            self.pc = PersonalizationCode(tuple(input_spec.pcode_vocab), pc_dim)
            code_dim = self.pc.out_dim + (in_dim if code == "features" else 0)
        if mha:
            attn = TargetAttention(in_dim, embed_dim, attn_dim, attn_heads, n_values, embed_dim)
            self.attn = PosoAttention(attn, code_dim, gate_hidden, scale=gate_scale) if mha_poso else attn
            in_dim += 2 * embed_dim  # attention output and its product with the candidate item
        gate_args = dict(gate_hidden=gate_hidden, scale=gate_scale)
        if mlp_poso:
            self.experts = PosoGroupedMLP(n_experts, in_dim, list(expert), code_dim, dropout, norm=norm, **gate_args)
            self.towers = PosoGroupedMLP(n_tasks, self.experts.out_dim, [*tower, 1], code_dim, dropout,
                                         last_activation=False, norm=norm, **gate_args)
        else:
            self.experts = GroupedMLP(n_experts, in_dim, list(expert), dropout, norm=norm)
            self.towers = GroupedMLP(n_tasks, self.experts.out_dim, [*tower, 1], dropout, last_activation=False, norm=norm)
        self.gates = SoftmaxGates(in_dim, n_tasks, n_experts)
        self.expert_gate = PersonalizedGate(code_dim, n_experts, gate_hidden, gate_scale) if mmoe_poso else None
        self.mlp_poso, self.mha_poso = mlp_poso, mha_poso

    def shared_parameters(self) -> list[nn.Parameter]:
        """The last shared layer (GradNorm's ``W``): the experts' output layer."""
        experts = self.experts.base if self.mlp_poso else self.experts
        return list(experts.layers[-1].parameters())

    def features(self, batch: dict[str, torch.Tensor], pc: torch.Tensor | None) -> torch.Tensor:
        """The MMoE input ``(B, in_dim)``: non-sequential embeddings ++ attention over the history."""
        x = self.embed(batch)
        if not self.mha:
            return x
        tokens, mask = self.embed.history(batch)
        a = self.attn(x, tokens, mask, pc) if self.mha_poso else self.attn(x, tokens, mask)
        return torch.cat([x, a, a * self.embed.item(batch["item"])], dim=-1)

    def personal_code(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """What the personalized gates read ``(B, code_dim)`` (``model.code``), None without POSO modules."""
        if self.pc is None:
            return None
        codes = batch["pcode"]
        if self.code == "shuffled":
            codes = codes[torch.randperm(codes.size(0), device=codes.device)]  # size(0): traced, not a constant
        pc = self.pc(codes)
        return torch.cat([pc, self.embed(batch)], dim=-1) if self.code == "features" else pc

    def forward(self, batch: dict[str, torch.Tensor]) -> dict:
        pc = self.personal_code(batch)
        x = self.features(batch, pc)
        gates = self.gates(x)  # (B, T, E)
        experts = self.experts(x, pc) if self.mlp_poso else self.experts(x)  # (B, E, H)
        aux = {"gates": gates}
        if self.expert_gate is not None:
            aux["poso_gates"] = personal = self.expert_gate(pc)  # (B, E)
            mixed = poso_mix(experts, gates, personal)
        else:
            mixed = mix(experts, gates)  # (B, T, H)
        logits = (self.towers(mixed, pc) if self.mlp_poso else self.towers(mixed)).squeeze(-1)
        return {**task_logits(logits, self.tasks), "aux": aux}
