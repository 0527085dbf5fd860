"""``mose-report`` on a multirun folder: the markdown table (a row per model, every run counted) and the PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

MODELS = {"single_task": None, "shared_bottom": None, "mmoe": 4}  # model -> experts (None: no gates)
SEEDS = (0, 1)


def fake_multirun(root: Path) -> int:
    """A multirun folder of ``metrics.json`` files like ``mose-train -m`` writes (models x seeds)."""
    rng = np.random.default_rng(0)
    job = 0
    for model, experts in MODELS.items():
        for seed in SEEDS:
            test = {}
            for task in ("click", "like"):
                test |= {f"{task}/auc": 0.7 + 0.05 * rng.random(), f"{task}/gauc": 0.6, f"{task}/logloss": 0.5}
                for cohort in ("new", "regular"):
                    test[f"cohort/new_user={cohort}/{task}/auc"] = 0.6 + 0.1 * rng.random()
                if experts:
                    w = rng.dirichlet(np.ones(experts))
                    test |= {f"gates/{task}/e{e}": float(w[e]) for e in range(experts)}
            test["watch_time/mse"] = 0.3 + 0.1 * rng.random()
            test["auc_mean"] = (test["click/auc"] + test["like/auc"]) / 2
            run = root / str(job)
            run.mkdir(parents=True)
            (run / "metrics.json").write_text(json.dumps({"model": model, "data": "synthetic", "seed": seed,
                                                          "test": test}))
            job += 1
    return job


def test_report_writes_table_and_plots(tmp_path, capsys):
    from mose.report import main

    n_runs = fake_multirun(tmp_path / "multirun")
    main([str(tmp_path / "multirun")])
    report = (tmp_path / "multirun" / "report.md").read_text()
    main_table, _, rest = report.partition("\n## ")
    rows = [line for line in main_table.splitlines() if line.startswith("| synthetic |")]
    assert [r.split("|")[2].strip() for r in rows] == list(MODELS)  # one row per model (seeds averaged)
    assert sum(int(r.split("|")[3]) for r in rows) == n_runs  # every run counted
    assert "click/auc" in report and "±" in rows[0]
    for name in ("metric_auc", "metric_mse", "cohort_new_vs_regular", "gates_mmoe"):
        png = tmp_path / "multirun" / f"{name}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert not (tmp_path / "multirun" / "gates_single_task.png").exists()  # no gates, no heatmap
    assert "plot: " in capsys.readouterr().out
    # the PNGs embedded; a GAUC table beside the AUC one; model x cohort x task with each run counted
    assert "![metric_auc](metric_auc.png)" in report and "![gates_mmoe](gates_mmoe.png)" in report
    assert rest.startswith("GAUC")
    gauc = rest.split("\n## ")[0]
    assert "click/gauc" in gauc and "0.6000 ± 0.0000" in gauc
    cohort = [line.split("|")[1:5] for line in report.split("## Per cohort")[1].splitlines()
              if line.startswith("| synthetic |")]
    assert len(cohort) == len(MODELS) * 2 and all(int(c[3]) == len(SEEDS) for c in cohort)  # x (new, regular)
    assert ["synthetic", "mmoe", "new_user=new", "2"] in [[x.strip() for x in c] for c in cohort]
    # --metrics sets the plots too
    main([str(tmp_path / "multirun"), "--metrics", "auc,logloss", "--out", str(tmp_path / "m" / "r.md")])
    assert (tmp_path / "m" / "metric_logloss.png").is_file() and not (tmp_path / "m" / "metric_mse.png").exists()


def test_report_no_plots_and_out(tmp_path):
    from mose.report import main

    fake_multirun(tmp_path / "runs")
    (tmp_path / "docs").mkdir()
    main([str(tmp_path / "runs"), "--out", str(tmp_path / "docs" / "r.md"), "--no-plots"])
    assert (tmp_path / "docs" / "r.md").is_file() and not list((tmp_path / "docs").glob("*.png"))
    main([str(tmp_path / "runs"), "--out", str(tmp_path / "docs" / "r.md")])
    assert (tmp_path / "docs" / "metric_auc.png").is_file()  # beside the markdown


def test_gate_usage_is_the_mean_over_runs():
    from mose.report_plots import gate_usage

    runs = [{"test": {"gates/click/e0": 0.2, "gates/click/e1": 0.8}},
            {"test": {"gates/click/e0": 0.4, "gates/click/e1": 0.6}}]
    tasks, usage = gate_usage(runs)
    assert tasks == ["click"]
    np.testing.assert_allclose(usage, [[0.3, 0.7]])
    assert gate_usage([{"test": {"click/auc": 0.7}}]) is None


def test_plots_skip_what_the_runs_lack(tmp_path):
    from mose.report_plots import render_plots

    run = {"model": "mmoe", "data": "synthetic", "test": {"click/auc": 0.7, "auc_mean": 0.7}}
    assert [p.name for p in render_plots([run], tmp_path)] == ["metric_auc.png"]
