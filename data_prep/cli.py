"""``mose-prep``: raw events -> prepared dataset, as configured by ``conf/prep.yaml`` and its data group.

    mose-prep data=events data.source.path=day1.csv                      # fit on train, transform
    mose-prep data=events data.source.path=day2.csv data.dir=outputs/data/day2 fit_from=outputs/data/events

``fit_from=<prepared folder>`` transforms the log with that folder's fitted state (vocabularies,
stats): every event is in the test split and ids unseen by the fit map to OOV, so ``mose-eval
ckpt_path=... data_dir=outputs/data/day2`` scores a model trained on the first folder on all of it.

Bad input stops with ``error: <what, which column, which rows>`` on stderr and exit status 2
(set ``MOSE_TRACEBACK=1`` to see the traceback as well).
"""

from __future__ import annotations

import os
import sys

import hydra
import polars as pl
from omegaconf import DictConfig, OmegaConf

from data_prep.build import ensure_prepared
from data_prep.dataset import read_manifest
from data_prep.paths import CONF_DIR
from data_prep.schema import SchemaError

EXIT_BAD_INPUT = 2


def fail(err: BaseException) -> None:
    """Print ``error: ...`` (the first lines of ``err``) and exit with :data:`EXIT_BAD_INPUT`."""
    if os.environ.get("MOSE_TRACEBACK"):
        raise err
    text = str(err).strip()
    if not isinstance(err, SchemaError):
        text = f"{type(err).__name__}: {chr(10).join(text.splitlines()[:3])}"
    print(f"error: {text}", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)


@hydra.main(config_path=CONF_DIR, config_name="prep", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        data = OmegaConf.to_container(cfg.data, resolve=True)
        out = ensure_prepared(data, force=cfg.force, fit_from=cfg.get("fit_from"))
    except (SchemaError, ValueError, pl.exceptions.PolarsError, OSError) as err:
        fail(err)
    m = read_manifest(out)
    print(f"prepared {m['n_events']:,} events at {out}: splits {m['splits']}, vocab {m['vocab_sizes']}")


if __name__ == "__main__":
    main()
