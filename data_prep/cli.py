"""``mose-prep``: raw events -> prepared dataset, as configured by ``conf/prep.yaml`` and its data group.

    mose-prep data=events data.source.path=day1.csv                      # fit on train, transform
    mose-prep data=events data.source.path=day2.csv data.dir=outputs/data/day2 fit_from=outputs/data/events

``fit_from=<prepared folder>`` transforms the log with that folder's fitted state (vocabularies,
stats): every event is in the test split and ids unseen by the fit map to OOV, so ``mose-eval
ckpt_path=... data_dir=outputs/data/day2`` scores a model trained on the first folder on all of it.

Bad input stops with ``error: <what, which column, which rows>`` on stderr and exit status 2
(set ``MOSE_TRACEBACK=1`` to see the traceback as well); see :func:`data_prep.errors.cli_errors`.
"""

from __future__ import annotations

import hydra
import polars as pl
from omegaconf import DictConfig, OmegaConf

from data_prep.build import ensure_prepared
from data_prep.dataset import read_manifest
from data_prep.paths import CONF_DIR
from data_prep.schema import SchemaError
from data_prep.errors import ConfigError, InputError, cli_errors


@hydra.main(config_path=CONF_DIR, config_name="prep", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    with cli_errors():  # in the job too: Hydra would add its own 'Error executing job' line
        try:
            data = OmegaConf.to_container(cfg.data, resolve=True)
            out = ensure_prepared(data, force=cfg.force, fit_from=cfg.get("fit_from"))
        except (ValueError, pl.exceptions.PolarsError) as err:  # what Polars and the prep raise on bad input
            if isinstance(err, (SchemaError, ConfigError, InputError)):
                raise
            text = "\n".join(str(err).strip().splitlines()[:3])
            raise InputError(f"{type(err).__name__}: {text}") from err
    m = read_manifest(out)
    print(f"prepared {m['n_events']:,} events at {out}: splits {m['splits']}, vocab {m['vocab_sizes']}")


def main() -> None:
    """``mose-prep``: errors as ``error: ...`` and exit 2."""
    with cli_errors():
        hydra_main()


if __name__ == "__main__":
    main()
