"""bench/gpu_bench.py: ``--quick`` runs end to end on CPU and writes its section; the section replaces only itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_bench


def test_quick_writes_its_table(tmp_path):
    doc, res = tmp_path / "performance.md", tmp_path / "gpu.json"
    doc.write_text("# Performance\n\n## 1. Preparation\n\nkept\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "bench/gpu_bench.py", "--quick", "--threads", "1", "--models", "mmoe",
                           "mose", "--out", str(doc), "--json", str(res)],
                          check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = doc.read_text()
    assert text.startswith("# Performance\n\n## 1. Preparation\n\nkept\n\n## GPU benchmark (`python bench/gpu_bench.py")
    assert "Device: **CPU (1 thread(s))**" in text and "Matmul peak" in text
    for model in ("mmoe", "mose"):
        for batch in (256, 512):
            row = next(line for line in text.splitlines() if line.startswith(f"| {model} | 32-true | {batch} |"))
            train, infer = (float(c.replace(",", "")) for c in row.split("|")[4:6])
            assert train > 0 and infer > 0
    assert "16-mixed" not in text.split("| model |", 1)[1]  # CPU: fp32 only
    loader = [line for line in text.splitlines() if line.startswith(("| per_event |", "| per_stream |"))]
    assert len(loader) == 4 and all(line.rstrip(" |").endswith("x") for line in loader)
    saved = json.loads(res.read_text())
    assert {r["model"] for r in saved["rows"]} == {"mmoe", "mose"}
    assert 0 < next(r for r in saved["rows"] if r["model"] == "mmoe")["peak_fraction"]
    assert gpu_bench.section_lines(res)[0].startswith("## GPU benchmark")


def test_write_section_replaces_only_its_own(tmp_path):
    doc = tmp_path / "p.md"
    doc.write_text("# P\n\n## GPU benchmark (old)\n\nold table\n\n## Targets\n\nkept\n")
    gpu_bench.write_section(doc, ["## GPU benchmark (new)", "", "new table", ""])
    assert doc.read_text() == "# P\n\n## GPU benchmark (new)\n\nnew table\n\n## Targets\n\nkept\n"
    gpu_bench.write_section(doc, ["## GPU benchmark (newer)", "", "t", ""])
    assert doc.read_text().count("## GPU benchmark") == 1


def test_table_marks_oom_and_skipped_rows():
    res = {"device": "X", "peaks": {"float32": 1e12}, "peak_n": 8, "steps": 1, "warmup": 1, "n_events": 10,
           "environment": "env", "date": "d",
           "rows": [{"model": "mmoe", "layout": "per_event", "precision": "32-true", "batch": 4096,
                     "train_events_per_s": 1e6, "infer_events_per_s": 4e6, "train_step_s": 4096 / 1e6,
                     "flops_per_step": 2e9, "achieved_flops": 2e9 / (4096 / 1e6), "peak_fraction": 0.4883},
                    {"model": "mmoe", "layout": "per_event", "precision": "16-mixed", "batch": 65536, "oom": True},
                    {"model": "ple", "layout": "per_event", "precision": "32-true", "batch": 4096, "skipped": True}],
           "loader": [{"layout": "per_event", "batch": 4096, "events_per_s": 6e6}]}
    text = "\n".join(gpu_bench.lines(res))
    assert "| mmoe | 32-true | 4096 | 1,000,000 | 4,000,000 | 2.00 | 0.488 | 48.8% |" in text
    assert "| mmoe | 16-mixed | 65536 | OOM | OOM | - | - | - |" in text
    assert "| ple | 32-true | 4096 | skipped (time budget) |" in text
    assert "| per_event | 4096 | 6,000,000 | 1,000,000 (mmoe, 32-true) | 6.0x |" in text
