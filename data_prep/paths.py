"""Locations inside the repository (the Hydra config folder every entry point composes from), and the
``${mose.pid:}`` config resolver that keeps run folders apart."""

import os
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = str(ROOT / "conf")

# Run folders are outputs/runs/<date>/<time>-<pid>: two runs started in the same second get their own.
# Cached like Hydra's ${now:}, so a sweep's jobs (copies of the launcher's config cache) share one value.
OmegaConf.register_new_resolver("mose.pid", lambda: str(os.getpid()), use_cache=True, replace=True)
