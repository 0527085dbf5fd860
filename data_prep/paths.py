"""Locations inside the repository (the Hydra config folder every entry point composes from), and the
config resolvers: ``${mose.pid:}`` keeps run folders apart; ``${source_key:...}`` names a
prepared-data folder after its source; ``${resume_run_dir:...}`` is the run folder of
``mose-train resume=<run dir>`` (it continues there).

    dir: ${paths.data_dir}/${data.name}-${source_key:${data.source},${data.prep},${data.split}}   # conf/data/*.yaml

so two logs (or two prep settings) used in turn each keep their own cached dataset instead of
re-preparing each other's folder; ``data.dir=...`` still names a folder by hand.
"""

import hashlib
import json
import os
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = str(ROOT / "conf")

# Run folders are outputs/runs/<date>/<time>-<pid>: two runs started in the same second get their own.
# Cached like Hydra's ${now:}, so a sweep's jobs (copies of the launcher's config cache) share one value.
OmegaConf.register_new_resolver("mose.pid", lambda: str(os.getpid()), use_cache=True, replace=True)

KEY_LEN = 8


def _plain(node):
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _absolute(value):
    """Existing file paths as absolute paths (the same relative path from another folder is another log)."""
    if isinstance(value, dict):
        return {k: _absolute(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_absolute(v) for v in value]
    return os.path.abspath(value) if isinstance(value, str) and value and os.path.exists(value) else value


def source_key(*parts) -> str:
    """A short hash (8 hex digits) of config nodes, e.g. ``data.source`` and ``data.prep``: file paths
    that exist count as absolute paths; a missing value (``???``) hashes as itself; a mapping's
    :data:`data_prep.options.RUN_KEYS` (``data.prep.engine`` ...: how the prep runs, not what it writes) are
    left out, so every engine finds the same dataset."""
    from data_prep.options import RUN_KEYS

    plain = [_absolute(_plain(p)) for p in parts]
    plain = [{k: v for k, v in p.items() if k not in RUN_KEYS} if isinstance(p, dict) else p for p in plain]
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:KEY_LEN]


def resume_run_dir(resume, default: str) -> str:
    """``hydra.run.dir`` of ``mose-train resume=...``: the run folder being resumed (``resume=<run dir>``, or
    ``resume=<run dir>/checkpoints/<x>.ckpt`` of a mose-train run), so a resumed run continues in it;
    ``default`` (a new timestamped folder) for no resume, ``auto`` or a checkpoint outside a run folder."""
    path = Path(str(resume)) if resume not in (None, "", "null", "auto") else None
    if path is not None and path.is_file() and path.parent.name == "checkpoints":
        path = path.parent.parent
    if path is not None and path.is_dir() and ((path / "checkpoints").is_dir() or (path / ".hydra").is_dir()):
        return str(path)
    return default


for _name, _fn in (("source_key", source_key), ("resume_run_dir", resume_run_dir)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn)
