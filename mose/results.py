"""Test results: ``metrics.json`` and the short per-task summary printed after a run."""

from __future__ import annotations

import json
import math
from pathlib import Path

COLUMNS = ("auc", "gauc", "logloss", "mse")


def write_metrics(path: str | Path, test: dict[str, float], **info) -> Path:
    """Write ``{"test": {...flat metrics...}, **info}`` atomically to ``path``."""
    path = Path(path)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**info, "test": test}, indent=2, sort_keys=False))
    tmp.replace(path)
    return path


def summary(test: dict[str, float], tasks: list[str]) -> str:
    """A per-task table of the test metrics (plus the new-user cohort's AUC when present)."""
    cohort = [k.split("/")[1] for k in test if k.startswith("cohort/new_user=new/") and k.endswith("/auc")]
    header = ["task", *COLUMNS] + (["auc new users", "auc regular"] if cohort else [])
    rows = []
    for t in tasks:
        row = [t] + [test.get(f"{t}/{c}", math.nan) for c in COLUMNS]
        if cohort:
            row += [test.get(f"cohort/new_user={v}/{t}/auc", math.nan) for v in ("new", "regular")]
        rows.append(row)
    fmt = lambda v: v if isinstance(v, str) else ("-" if math.isnan(v) else f"{v:.4f}")
    table = [header] + [[fmt(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in table]
    return "\n".join(lines + [f"mean test AUC {test.get('auc_mean', math.nan):.4f}"])
