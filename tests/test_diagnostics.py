"""Gate diagnostics: utilization per task and cohort, entropy, load imbalance; through a real run."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import compose_with_output
from hydra.core.global_hydra import GlobalHydra
from test_train_e2e import data_overrides

from mose.metrics import GateUsage, cv
from mose.plots import gate_heatmap


def test_gate_usage_entropy_cv_and_cohorts():
    gu = GateUsage(1, 2, cohort_sizes=[2, 3])
    gates = torch.tensor([[[1.0, 0.0]], [[0.5, 0.5]], [[0.0, 1.0]], [[0.5, 0.5]]])  # (M=4, T=1, E=2)
    cohorts = torch.tensor([[0, 2], [0, 2], [1, 0], [1, 0]])  # cohort A (2 values), cohort B (3 values)
    gu.update(gates[:2], cohorts[:2])
    gu.update(gates[2:], cohorts[2:])
    d = gu.compute()
    assert torch.allclose(d["usage"], torch.tensor([[0.5, 0.5]], dtype=torch.double))
    assert torch.allclose(d["entropy"], torch.tensor([math.log(2) / 2], dtype=torch.double))  # 0, ln2, 0, ln2
    assert torch.allclose(d["load_cv"], torch.zeros(1, dtype=torch.double))
    assert torch.allclose(d["routed"], torch.tensor([[0.75, 0.75]], dtype=torch.double))
    cu = d["cohort_usage"]  # rows: A=0, A=1, B=0, B=1, B=2
    assert cu.shape == (5, 1, 2)
    assert torch.allclose(cu[0, 0], torch.tensor([0.75, 0.25], dtype=torch.double))  # A=0: rows 0, 1
    assert torch.allclose(cu[1, 0], torch.tensor([0.25, 0.75], dtype=torch.double))  # A=1: rows 2, 3
    assert torch.allclose(cu[2, 0], cu[1, 0]) and torch.allclose(cu[4, 0], cu[0, 0])
    assert cu[3].isnan().all() and d["cohort_entropy"][3].isnan().all()  # B=1: no rows
    assert torch.allclose(d["cohort_entropy"][0], torch.tensor([math.log(2) / 2], dtype=torch.double))


def test_load_cv_hand_computed():
    usage = torch.tensor([[0.7, 0.1, 0.1, 0.1]])
    mean, std = 0.25, math.sqrt(((0.45 ** 2) + 3 * (0.15 ** 2)) / 4)
    assert cv(usage).item() == pytest.approx(std / mean)
    gu = GateUsage(2, 4)
    gu.update(torch.tensor([[[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]]]))
    d = gu.compute()
    assert d["load_cv"][0].item() == pytest.approx(std / mean) and d["load_cv"][1].item() == pytest.approx(0.0)
    load = torch.tensor([0.95, 0.35, 0.35, 0.35])
    assert d["load_cv_all"].item() == pytest.approx(cv(load).item())


def test_heatmap_accepts_any_row_labels():
    fig = gate_heatmap(torch.rand(4, 3).numpy(), ["a=1/click", "a=1/like", "a=2/click", "a=2/like"])
    assert len(fig.axes[0].get_yticklabels()) == 4


def test_gated_run_writes_diagnostics_and_trains_with_pcgrad(events_parquet, tmp_path):
    """PLE + PCGrad through the real Hydra config: gate diagnostics in metrics.json and TensorBoard."""
    from mose.train import train

    run_dir = tmp_path / "run"
    cfg = compose_with_output("train", data_overrides(events_parquet, tmp_path / "data") + [
        "model=ple", "model.embed_dim=4", "model.expert=[8]", "model.tower=[4]", "weighting=pcgrad",
        "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "seed=0",
    ], run_dir)
    try:
        test = train(cfg)
    finally:
        GlobalHydra.instance().clear()
    metrics = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert metrics == pytest.approx(test)
    n_experts = 3 * 1 + 2  # 3 tasks x 1 specific + 2 shared
    for t in ("click", "like", "watch_time"):
        usage = [metrics[f"gates/{t}/e{e}"] for e in range(n_experts)]
        assert sum(usage) == pytest.approx(1.0, abs=1e-5)
        assert 0 <= metrics[f"gates/{t}/entropy"] <= math.log(3) + 1e-6  # own expert + 2 shared
        assert metrics[f"gates/{t}/load_cv"] >= 0
    assert metrics["gates/click/e1"] == 0.0 and metrics["gates/like/e0"] == 0.0  # other tasks' experts
    for g in ("a", "b"):
        assert f"gates/cohort/user_group={g}/click/e0" in metrics
        assert f"gates/cohort/user_group={g}/like/entropy" in metrics
    assert "gates/load_cv" in metrics
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(next((run_dir / "tensorboard").rglob("events.out.tfevents.*")).parent))
    acc.Reload()
    assert {"test/gates", "test/gates_by_cohort"} <= set(acc.Tags()["images"])
    scalars = acc.Tags()["scalars"]
    assert "test_gates/click/entropy" in scalars and "test/click/auc" in scalars  # gates: their own top level
    assert "test_cohort/user_group=a/click/auc" in scalars
    assert not [t for t in scalars if "/gates/" in t or t.startswith(("test/cohort", "test_gates/cohort"))], scalars
    assert "train/click/weight" in acc.Tags()["scalars"] and "train/lr" in acc.Tags()["scalars"]


def _fake_run(root, name, model, seed, test, rho=None):
    import yaml

    d = root / name
    (d / ".hydra").mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"model": model, "data": "synthetic", "seed": seed, "test": test}))
    (d / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": {"model": model}}}}))
    (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"data": {"source": {"task_correlation": rho}}}))


def test_report_negative_transfer_and_by_key(tmp_path):
    from mose.report import load_runs, main, markdown_table, negative_transfer_table

    for seed, (a, m) in enumerate([(0.70, 0.50), (0.72, 0.52)]):
        _fake_run(tmp_path, f"st{seed}", "single_task", seed, {"click/auc": a, "w/mse": m}, rho=0.5)
        _fake_run(tmp_path, f"mm{seed}", "mmoe", seed, {"click/auc": a + 0.02, "w/mse": m + 0.1}, rho=0.5)
        _fake_run(tmp_path, f"sb{seed}", "shared_bottom", seed, {"click/auc": a - 0.01, "w/mse": m - 0.1}, rho=1.0)
    runs = load_runs(tmp_path)
    nt = negative_transfer_table(runs)
    mmoe_row = next(line for line in nt.splitlines() if line.startswith("| mmoe"))
    # paired by seed: the same difference at both seeds, so a spread of 0
    assert "+0.0200 ± 0.0000 (0.7300)" in mmoe_row and "+0.1000 ± 0.0000 ▼ (0.6100)" in mmoe_row
    assert mmoe_row.endswith("| 1/2 |")
    sb_row = next(line for line in nt.splitlines() if line.startswith("| shared_bottom"))
    assert "-0.0100 ± 0.0000 ▼" in sb_row and "-0.1000 ± 0.0000 (0.4100)" in sb_row
    table = markdown_table(runs, ("auc", "mse"), by="data.source.task_correlation")
    assert "| synthetic | 1.0 | shared_bottom | 2 |" in table and "| synthetic | 0.5 | mmoe | 2 |" in table
    png = tmp_path / "plot.png"
    main([str(tmp_path), "--negative-transfer", "--by", "data.source.task_correlation", "--plot", str(png),
          "--plot-metric", "click/auc,w/mse", "--baseline", "single_task"])
    assert png.stat().st_size > 1000 and "Negative transfer" in (tmp_path / "report.md").read_text()


def test_negative_transfer_spread_is_over_same_seed_differences(tmp_path):
    from mose.report import load_runs, negative_transfer_table

    for seed, (base, model) in enumerate([(0.70, 0.71), (0.72, 0.75), (0.74, 0.74)]):
        _fake_run(tmp_path, f"st{seed}", "single_task", seed, {"click/auc": base})
        _fake_run(tmp_path, f"es{seed}", "esmm", seed, {"click/auc": model})
    _fake_run(tmp_path, "one", "pepnet", 0, {"click/auc": 0.69})  # one seed: no spread
    nt = negative_transfer_table(load_runs(tmp_path))
    # same-seed differences 0.01, 0.03, 0.00: mean 0.0133, std sqrt(((1/300)^2 + (5/300)^2 + (4/300)^2) / 2)
    std = (((1 / 300) ** 2 + (5 / 300) ** 2 + (4 / 300) ** 2) / 2) ** 0.5
    assert f"+0.0133 ± {std:.4f} (0.7333)" in next(r for r in nt.splitlines() if r.startswith("| esmm"))
    assert "-0.0300 ▼ (0.6900)" in next(r for r in nt.splitlines() if r.startswith("| pepnet"))
