"""Locations inside the repository (the Hydra config folder every entry point composes from)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = str(ROOT / "conf")
