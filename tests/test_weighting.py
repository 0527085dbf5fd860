"""Loss balancing: each method's gradient on a hand-made two-task case, against a hand computation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from torch import nn

from data_prep.paths import CONF_DIR
from mose.config_checks import ConfigError, check_config
from mose.nn.embeddings import InputSpec
from mose.nn.experts import GroupedLinear
from mose.nn.grouped_lstm import GroupedLSTM
from mose.weighting import (
    Fixed,
    GradNorm,
    PCGrad,
    Uncertainty,
    pcgrad_coefficients,
    shared_parameters,
    task_gradients,
)

TASKS = ["click", "watch"]
BINARY = [True, False]


def two_tasks(c1=(1.0, 0.0), c2=(-1.0, 1.0)):
    """Shared ``theta (2,)`` at 0 and linear losses ``L_t = 3 + t + c_t . theta``: gradients ``g_t = c_t``."""
    theta = nn.Parameter(torch.zeros(2))
    c1, c2 = torch.tensor(c1), torch.tensor(c2)
    losses = torch.stack([3.0 + theta @ c1, 4.0 + theta @ c2])
    return theta, losses, c1, c2


def grad_of(weighting, base=(1.0, 1.0), **kw):
    theta, losses, c1, c2 = two_tasks(**kw)
    loss, w = weighting(losses, torch.tensor(base), [theta], [theta])
    loss.backward()
    return theta.grad, w, (c1, c2)


def test_fixed():
    g, w, (c1, c2) = grad_of(Fixed(TASKS, BINARY), base=(1.0, 0.5))
    assert torch.allclose(g, c1 + 0.5 * c2) and torch.allclose(w, torch.tensor([1.0, 0.5]))
    g, w, _ = grad_of(Fixed(TASKS, BINARY, weights={"watch": 2.0}), base=(1.0, 0.5))
    assert torch.allclose(g, c1 + 2.0 * c2)


def test_uncertainty():
    weighting = Uncertainty(TASKS, BINARY)
    with torch.no_grad():
        weighting.log_var.copy_(torch.tensor([0.5, -1.0]))
    g, w, (c1, c2) = grad_of(weighting)
    s1, s2 = 0.5, -1.0
    # L = exp(-s1) L1 + s1/2 + 1/2 exp(-s2) L2 + s2/2  (click binary, watch regression)
    assert torch.allclose(g, math.exp(-s1) * c1 + 0.5 * math.exp(-s2) * c2)
    assert torch.allclose(w, torch.tensor([math.exp(-s1), 0.5 * math.exp(-s2)]))
    expected_ds = torch.tensor([-math.exp(-s1) * 3.0 + 0.5, -0.5 * math.exp(-s2) * 4.0 + 0.5])
    assert torch.allclose(weighting.log_var.grad, expected_ds)


def test_pcgrad_conflicting():
    g, w, _ = grad_of(PCGrad(TASKS, BINARY))
    # g1=(1,0), g2=(-1,1), g1.g2=-1: g1~ = g1 + g2/2 = (0.5, 0.5); g2~ = g2 + g1 = (0, 1); sum (0.5, 1.5)
    assert torch.allclose(g, torch.tensor([0.5, 1.5]))
    assert torch.allclose(w, torch.tensor([2.0, 1.5]))  # a_1 = 1 + 1 (from g2~), a_2 = 1 + 1/2 (from g1~)


def test_pcgrad_no_conflict_is_plain_sum():
    g, w, (c1, c2) = grad_of(PCGrad(TASKS, BINARY), c2=(1.0, 1.0))
    assert torch.allclose(g, c1 + c2) and torch.allclose(w, torch.ones(2))


def test_pcgrad_three_tasks_against_direct_projection():
    torch.manual_seed(0)
    grads = torch.randn(3, 5)
    order = torch.tensor([[2, 0, 1], [0, 2, 1], [1, 0, 2]])
    direct = []
    for i in range(3):  # the original algorithm on explicit vectors
        gi = grads[i].clone()
        for j in order[i].tolist():
            if j != i and gi @ grads[j] < 0:
                gi = gi - (gi @ grads[j]) / (grads[j] @ grads[j]) * grads[j]
        direct.append(gi)
    a = pcgrad_coefficients(grads @ grads.T, order).float()
    assert torch.allclose(a @ grads, torch.stack(direct).sum(0), atol=1e-5)


def test_gradnorm_weight_update():
    weighting = GradNorm(TASKS, BINARY, alpha=1.5, lr=0.1)
    # step 1: losses at their initial values (r = 1); |g1| = 1, |g2| = sqrt(2)
    g, w, (c1, c2) = grad_of(weighting)
    assert torch.allclose(g, c1 + c2) and torch.allclose(w, torch.ones(2))  # the loss uses w before the update
    n = torch.tensor([1.0, math.sqrt(2)])
    target = n.mean()  # mean(w n) * 1^alpha
    w1 = torch.ones(2) - 0.1 * torch.sign(n - target) * n
    w1 = w1 * 2 / w1.sum()
    assert torch.allclose(weighting.task_weights, w1)
    assert torch.allclose(weighting.initial_losses, torch.tensor([3.0, 4.0]))
    # step 2: task 1's loss fell to half, task 2's stayed: r = (0.5, 1) / 0.75
    theta = nn.Parameter(torch.zeros(2))
    losses = torch.stack([1.5 + theta @ c1, 4.0 + theta @ c2])
    loss, w = weighting(losses, torch.ones(2), [theta], [theta])
    loss.backward()
    assert torch.allclose(theta.grad, w1[0] * c1 + w1[1] * c2)
    r = torch.tensor([0.5, 1.0]) / 0.75
    target = (w1 * n).mean() * r ** 1.5
    w2 = w1 - 0.1 * torch.sign(w1 * n - target) * n
    assert torch.allclose(weighting.task_weights, w2 * 2 / w2.sum())


def test_gradient_methods_are_scale_invariant_and_run_in_float32():
    """AMP: per-task gradients of ``scale * L_t`` give the same weights; bf16 autocast does not leak in."""
    for make in (lambda: PCGrad(TASKS, BINARY), lambda: GradNorm(TASKS, BINARY, lr=0.1)):
        out = []
        for scale in (1.0, 1024.0):
            weighting = make()
            theta, losses, _, _ = two_tasks()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss, w = weighting(losses, torch.ones(2), [theta], [theta], grad_scale=scale)
            assert loss.dtype == torch.float32
            loss.backward()
            out.append((theta.grad.clone(), w.detach().clone(), getattr(weighting, "task_weights", w).clone()))
        for a, b in zip(*out):
            assert torch.allclose(a, b)


def test_task_gradients_unused_params_are_zero():
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(3))
    losses = torch.stack([a.sum() * 2, (b ** 2).sum()])
    g = task_gradients(losses, [a, b])
    assert torch.allclose(g, torch.tensor([[2.0, 2, 0, 0, 0], [0, 0, 2, 2, 2]]))


def test_eval_mode_makes_no_update():
    weighting = GradNorm(TASKS, BINARY).eval()
    grad_of(weighting)
    assert torch.equal(weighting.task_weights, torch.ones(2))
    with torch.no_grad():
        theta, losses, _, _ = two_tasks()
        loss, _ = PCGrad(TASKS, BINARY)(losses, torch.ones(2), [theta], [theta])
    assert loss.item() == pytest.approx(7.0)


def _ddp_worker(rank: int, world: int, port: int, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        # this rank's task gradients: conflicting on rank 0, not on rank 1, conflicting on average
        c = torch.tensor([[[1.0, 0.0], [-3.0, 1.0]], [[1.0, 1.0], [-1.0, 2.0]]])[rank]
        out = []
        for weighting in (PCGrad(TASKS, BINARY), GradNorm(TASKS, BINARY, lr=0.1)):
            theta = nn.Parameter(torch.zeros(2))
            losses = torch.stack([3.0 + theta @ c[0], 4.0 + theta @ c[1]]) * (1 + rank)
            loss, w = weighting(losses, torch.ones(2), [theta], [theta])
            loss.backward()
            grad = theta.grad.clone()
            dist.all_reduce(grad)  # what DDP does with the backward gradients
            # plain lists: a tensor in the queue is shared through a file descriptor that dies with this process
            out.append(((grad / world).tolist(), getattr(weighting, "task_weights", w).tolist()))
        queue.put((rank, out))
    finally:
        dist.destroy_process_group()


def test_weights_under_ddp_use_the_global_gradients():
    """Two gloo processes with different task gradients: both get the weights of the averaged gradients."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = {rank: [tuple(torch.tensor(x) for x in pair) for pair in out]
               for rank, out in (queue.get(timeout=60) for _ in procs)}
    for p in procs:
        p.join(timeout=30)
    # global task gradients: mean over ranks of (1 + rank) * c_rank
    g1 = (torch.tensor([1.0, 0.0]) + 2 * torch.tensor([1.0, 1.0])) / 2
    g2 = (torch.tensor([-3.0, 1.0]) + 2 * torch.tensor([-1.0, 2.0])) / 2
    assert g1 @ g2 < 0
    gram = torch.stack([g1, g2]) @ torch.stack([g1, g2]).T
    a = pcgrad_coefficients(gram).float()
    assert not torch.allclose(a, torch.ones(2))  # the projection is active
    expected = a[0] * g1 + a[1] * g2
    for rank in (0, 1):
        (pc_grad, pc_w), (gn_grad, gn_w) = results[rank]
        assert torch.allclose(pc_grad, expected, atol=1e-5)
        assert torch.allclose(pc_w, a)
    assert torch.allclose(results[0][1][1], results[1][1][1])  # GradNorm weights identical on both ranks
    n = torch.stack([g1.norm(), g2.norm()])
    w = torch.ones(2) - 0.1 * torch.sign(n - n.mean()) * n
    assert torch.allclose(results[0][1][1], w * 2 / w.sum(), atol=1e-6)


# --- GradNorm's W: every model's last shared layer ------------------------------------------------

MODEL_NAMES = sorted(p.stem for p in (Path(CONF_DIR) / "model").glob("*.yaml"))
# no dense layer shared by the tasks: the single-task baselines, popularity (counts, no layers) and
# ESMM / AITM (towers over a shared embedding)
SHARES_NOTHING = {"single_task", "stream_single_task_ff", "stream_single_task_lstm", "popularity", "esmm", "aitm"}
DENSE = (nn.Linear, GroupedLinear, GroupedLSTM, nn.LSTM)  # layers with weight matrices; never nn.Embedding


def train_config(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("name", [m for m in MODEL_NAMES if m not in SHARES_NOTHING])
def test_gradnorm_layer_is_a_dense_layer_every_task_reaches(name):
    """``shared_parameters()`` of every multi-task model of conf/model/: the weights of a dense layer (never
    an embedding table), and each task's output has a non-zero gradient there (it is shared)."""
    from tests.test_poso import SPEC, TASKS, make_batch

    torch.manual_seed(0)
    cfg = train_config(f"model={name}")
    spec = InputSpec(**{**SPEC.__dict__, "cat_names": ("position", "device")})
    model = instantiate(cfg.model, _partial_=True, _convert_="all")(input_spec=spec, tasks=TASKS).train()
    shared = shared_parameters(model)
    dense = [m for m in model.modules() if isinstance(m, DENSE)]
    assert shared and all(any(any(p is q for q in m.parameters()) for m in dense) for p in shared)
    if name == "youtube":  # the experts' output layer, not the shared layer below the experts
        assert shared == list(model.experts.layers[-1].parameters())
    embedding = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    assert not any(id(p) in embedding for p in shared)
    out = model(make_batch(steps=5 if cfg.data.get("layout") == "per_stream" else None))
    for t in TASKS:
        grads = torch.autograd.grad(out[t].sum(), shared, retain_graph=True, allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads), t


def test_gradnorm_needs_a_shared_layer():
    from mose.models.single_task import SingleTask
    from tests.test_poso import SPEC, TASKS

    with pytest.raises(ValueError, match="SingleTask.*shares no layer"):
        shared_parameters(SingleTask(SPEC, TASKS))
    with pytest.raises(ConfigError, match=r"^weighting._target_=mose.weighting.GradNorm: .*single_task"):
        check_config(train_config("model=single_task", "weighting=gradnorm"))
    check_config(train_config("model=single_task", "weighting=pcgrad"))  # PCGrad reads every parameter
    check_config(train_config("model=shared_bottom", "weighting=gradnorm"))
