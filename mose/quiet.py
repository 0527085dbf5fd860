"""Quiet runs: drop the third-party lines a normal run prints that say nothing about the run.

    quiet_third_party()   # first thing in every console script (mose-train, -eval, -predict, -cli, -report)

Each filter matches one known message where it comes from (its logger or its warning text and
module); every other warning, Lightning's included, still shows:

* Lightning's "Tip: ... litlogger" advertisement (``rank_zero_info`` on each ``Trainer``);
* torch's ``FutureWarning`` that ``isinstance(treespec, LeafSpec)`` is deprecated, raised inside
  ``pytorch_lightning.utilities._pytree`` (Lightning's code, not ours; gone once Lightning updates).
"""

from __future__ import annotations

import logging
import warnings

TIP_LOGGERS = ("lightning_fabric.utilities.rank_zero", "pytorch_lightning.utilities.rank_zero")


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.msg)


_FILTER = _DropTips()


def quiet_third_party() -> None:
    """Install the filters (idempotent)."""
    for name in TIP_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning, module=r"pytorch_lightning\.utilities\._pytree")
