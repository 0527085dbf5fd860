"""Open a TensorBoard log folder in a real browser (headless Chromium) and screenshot its tabs.

    python bench/tb_screenshots.py outputs/multirun/<date>/<time> --out docs/img/tensorboard
    python bench/tb_screenshots.py <logdir> --out /tmp/tb --tabs timeseries images hparams custom_scalars

Starts ``tensorboard --logdir <logdir>`` on 127.0.0.1, waits until it lists the runs, prints what its
HTTP API serves (run names, scalar tags per top-level group, image tags), and writes one PNG per tab
(``<out>/<tab>.png``) with ``chromium --headless --screenshot``. Needs Chromium (Debian: ``apt-get
install chromium``; ``--browser`` names another binary). Look at the PNGs: the run names
(``<model>/seed<k>`` in a multirun), the order of the scalar groups, the gate heatmaps' labels.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

TABS = ("timeseries", "scalars", "images", "hparams", "custom_scalars")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:  # 127.0.0.1 only
        return json.loads(r.read())


def wait_for_runs(base: str, timeout: float = 120.0) -> list[str]:
    """The run names TensorBoard serves, once it serves any (it loads event files in the background)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            runs = get_json(f"{base}/data/runs")
            tags = get_json(f"{base}/data/plugin/scalars/tags")
            if runs and tags:
                return runs
        except OSError:
            pass
        time.sleep(1.0)
    raise SystemExit(f"error: TensorBoard at {base} served no runs within {timeout:.0f}s")


def summary(base: str) -> dict:
    """Runs, scalar tag counts per top-level group, image tags: what the tabs will show."""
    scalars = get_json(f"{base}/data/plugin/scalars/tags")
    images = get_json(f"{base}/data/plugin/images/tags")
    out = {}
    for run, tags in scalars.items():
        groups = Counter(t.split("/", 1)[0] for t in tags)
        out[run] = {"scalar_tags": len(tags), "groups": dict(sorted(groups.items())),
                    "images": sorted(images.get(run, {}))}
    return out


def screenshot(browser: str, url: str, path: Path, size: str, budget_ms: int) -> None:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--window-size={size}", f"--virtual-time-budget={budget_ms}", f"--screenshot={path}", url]
    subprocess.run(cmd, check=True, capture_output=True, timeout=180)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tb_screenshots", description=__doc__.splitlines()[0])
    parser.add_argument("logdir")
    parser.add_argument("--out", default="outputs/tb_screenshots")
    parser.add_argument("--tabs", nargs="+", default=["timeseries", "images", "hparams", "custom_scalars"],
                        choices=TABS)
    parser.add_argument("--browser", default=shutil.which("chromium") or shutil.which("chromium-browser")
                        or "chromium")
    parser.add_argument("--size", default="1600,1100", help="window size W,H in pixels")
    parser.add_argument("--budget-ms", type=int, default=20000, help="virtual time the page gets to render")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    tb = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", args.logdir, "--host", "127.0.0.1",
                           "--port", str(port), "--reload_interval", "0"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        runs = wait_for_runs(base)
        info = summary(base)
        print(json.dumps({"runs": runs, "per_run": info}, indent=1))
        for tab in args.tabs:
            path = out / f"{tab}.png"
            screenshot(args.browser, f"{base}/#{tab}", path, args.size, args.budget_ms)
            print(f"{tab}: {path}")
    finally:
        tb.terminate()
        tb.wait(timeout=30)


if __name__ == "__main__":
    main()
