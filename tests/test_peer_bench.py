"""bench/peer_bench.py's seed-noise verdict and tables (what bench/run_all.py's targets read), on hand-made runs."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import peer_bench


def test_worse_means_beyond_both_half_ranges_and_the_floor():
    assert peer_bench.worse([0.60, 0.62], [0.70, 0.70])           # 0.09 below, noise 0.01 + 0 + 0.005
    assert not peer_bench.worse([0.60, 0.70], [0.70, 0.70])       # 0.05 below, noise 0.05 + 0.005
    assert not peer_bench.worse([0.696, 0.696], [0.70, 0.70])     # within the 0.005 floor
    assert not peer_bench.worse([0.80], [0.70])                   # better is never worse
    assert peer_bench.spread([0.60, 0.62, 0.70]) == "0.6400 ± 0.0500"


def run(model, batch, seed, threads, ours_auc, peer_auc, ours_eps=300.0, peer_eps=100.0):
    side = lambda auc, eps, **kw: {"test_auc": {"click": auc}, "events_per_s": eps, "data_share": 0.1, **kw}
    return {"model": model, "batch": batch, "seed": seed, "threads": threads,
            "ours": side(ours_auc, ours_eps, lr_used=0.005 * batch / 512, test_events_per_s=1000.0),
            "peer": side(peer_auc, peer_eps, inference_events_per_s=500.0)}


def test_tables_group_by_model_batch_and_threads():
    runs = [run("mmoe", 512, s, 2, 0.70 + 0.01 * s, 0.69, ours_eps=300.0 + s) for s in range(3)]
    runs += [run("mmoe", 2048, s, 2, 0.60, 0.71) for s in range(3)]
    runs += [run("mmoe", 512, 0, 1, 0.70, 0.69, ours_eps=200.0)]  # the 1-thread speed run
    res = {"runs": runs, "threads": [2, 1], "seeds": [0, 1, 2], "epochs": 3, "overrides": [],
           "venv": {"torch_rechub": "0.9.0", "torch": "2.13.0"}}
    speed = peer_bench.speed_table(res)
    assert speed[2] == "| mmoe | 512 | 2 | 3 | 0.005 | 301 (10%) | 100 (10%) | **3.0x** | 1,000 | 500 |"  # medians
    assert speed[3].startswith("| mmoe | 2048 | 2 | 3 | 0.02 |")
    assert speed[4].startswith("| mmoe | 512 | 1 | 1 | 0.005 | 200 (10%)") and "**2.0x**" in speed[4]
    auc = peer_bench.auc_table(res)  # every-seed runs only: the 1-thread run is not in it
    assert auc[0] == "| model | task | mose @ 512 | rechub @ 512 | mose @ 2048 | rechub @ 2048 |"
    assert auc[2] == "| mmoe | click | 0.7100 ± 0.0100 | 0.6900 ± 0.0000 | 0.6000 ± 0.0000 | 0.7100 ± 0.0000 |"
    assert "| mmoe | 2048 |" in "\n".join(peer_bench.table(res))
    res["baseline"] = {"click": 0.55}
    assert peer_bench.auc_table(res)[-1] == "| popularity | click | 0.5500 | - | 0.5500 | - |"


def test_run_all_targets_read_the_runs():
    import run_all

    runs = [run("mmoe", 512, s, 2, 0.70 + 0.01 * s, 0.69, ours_eps=300.0 + s) for s in range(3)]
    runs += [run("mmoe", 2048, s, 2, 0.60, 0.71) for s in range(3)]
    runs += [run("mmoe", 8192, s, 2, 0.70 + 0.01 * s, 0.70) for s in range(3)]
    runs += [run("mmoe", 512, 0, 1, 0.70, 0.69, ours_eps=200.0)]
    peer = {"runs": runs, "threads": [2, 1]}
    lines = run_all.findings({"exponents": {}}, {"rows": []}, peer, None)
    assert "- **mmoe @ 512, 2 thread(s): >= 3x torch-rechub's training events/s**: holds (3.01x)" in lines
    assert "- **mmoe @ 512, 1 thread(s): >= 3x torch-rechub's training events/s**: not met (2.00x)" in lines
    assert not any("@ 8192, 2 thread" in line for line in lines)  # 8192 is not a speed batch
    large = [line for line in lines if "beyond seed noise**" in line]
    assert len(large) == 2
    assert large[0].startswith("- **mmoe @ 2048:") and large[0].endswith(
        "not met on click 0.6000 vs mose @ 512 0.7100; click 0.6000 vs torch-rechub @ 2048 0.7100")
    assert large[1].startswith("- **mmoe @ 8192:") and large[1].endswith("holds")
