"""``mose-prep``: raw events -> prepared dataset, as configured by ``conf/prep.yaml`` and its data group."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from data_prep.build import ensure_prepared
from data_prep.prepare import read_manifest
from data_prep.schema import SchemaError
from mose.paths import CONF_DIR


@hydra.main(config_path=CONF_DIR, config_name="prep", version_base="1.3")
def main(cfg: DictConfig) -> None:
    data = OmegaConf.to_container(cfg.data, resolve=True)
    try:
        out = ensure_prepared(data, force=cfg.force)
    except SchemaError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    m = read_manifest(out)
    print(f"prepared {m['n_events']:,} events at {out}: splits {m['splits']}, vocab {m['vocab_sizes']}")


if __name__ == "__main__":
    main()
