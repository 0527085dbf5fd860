"""bench/gpu_bench.py: ``--quick`` runs end to end on CPU and writes its section; the section replaces only itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_bench  # noqa: E402


def test_quick_writes_its_table(tmp_path):
    doc, res = tmp_path / "performance.md", tmp_path / "gpu.json"
    doc.write_text("# Performance\n\n## 1. Preparation\n\nkept\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "bench/gpu_bench.py", "--quick", "--threads", "1", "--models", "mmoe",
                           "mose", "--out", str(doc), "--json", str(res)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
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
