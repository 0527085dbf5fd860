"""The prep options (``data.prep``) as one frozen, checked value.

    options = PrepOptions.from_config(data.get("prep"))   # errors name data.prep.<key>

Every prep path (in-memory, partitioned, ``fit_from``) and the fitted state carry one of these;
the checks live here only (``mose.config_checks`` calls :meth:`PrepOptions.from_config` too).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from data_prep.schema import SchemaError


def check_number(path: str, value: Any, integer: bool = True, allow_zero: bool = False,
                 error: type[Exception] = SchemaError) -> None:
    """Raise ``error("<path>=<value>: must be ...")`` unless ``value`` is a finite number > 0 (>= 0 with ``allow_zero``)."""
    kind = int if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        what = "an integer" if integer else "a number"
        raise error(f"{path}={value}: must be {what} {'>= 0' if allow_zero else '> 0'}")


ENGINES = ("local", "processes", "ray")
RUN_KEYS = ("engine", "workers", "ray_address", "rows_per_partition")


@dataclass(frozen=True)
class PrepOptions:
    """How events become arrays: history and stream lengths, split fractions, id and cohort cuts.

    ``history_len`` K items per per-event history; ``val_frac`` / ``test_frac`` the global time
    quantiles of the split; ``new_user_max_prior`` the prior-event count below which a user is
    "new"; ``stream_len`` / ``stream_overlap`` the per-stream chunks; ``min_count`` the train count
    below which a user / item id shares the OOV index; ``activity_buckets`` ascending prior-event
    counts of the ``activity`` cohort; ``personalization`` extra columns of the POSO code;
    ``new_user_train_fraction`` the share of new-user train events kept (the rest stay in histories,
    untrained: :func:`data_prep.split.downsample_new_users`). ``carry_state`` serves each user's
    chunks in time order and carries the LSTM states from one chunk to the next (``mose.data.lanes``,
    ``mose.nn.carry``); its chunks do not overlap (the carried state is their context), so
    ``stream_overlap`` is then unused.

    How the prep runs (never what it writes: not in :meth:`to_dict`, the manifest or the config hash):
    ``engine`` ``local`` (one process), ``processes`` (a process pool of ``workers``, default all
    cores) or ``ray`` (Ray tasks: the running Ray instance, or ``ray.init(address=ray_address)``;
    ``auto`` joins a started cluster); ``rows_per_partition`` the user-hash partition size of the
    partitioned prep (``null`` with ``engine=local``: the in-memory prep; default 2,000,000 otherwise).
    """

    history_len: int = 20
    val_frac: float = 0.1
    test_frac: float = 0.1
    new_user_max_prior: int = 20
    stream_len: int = 32
    stream_overlap: int = 8
    min_count: int = 1
    activity_buckets: tuple[int, ...] = ()
    personalization: tuple[str, ...] = ()
    new_user_train_fraction: float = 1.0
    engine: str = "local"
    workers: int | None = None
    ray_address: str | None = None
    rows_per_partition: int | None = None
    carry_state: bool = False

    @property
    def chunk_overlap(self) -> int:
        """The overlap the stream chunks are cut with: 0 with ``carry_state``, else ``stream_overlap``."""
        return 0 if self.carry_state else self.stream_overlap

    def __post_init__(self) -> None:
        object.__setattr__(self, "activity_buckets", tuple(self.activity_buckets or ()))
        object.__setattr__(self, "personalization", tuple(self.personalization or ()))
        for key in ("history_len", "stream_len", "min_count"):
            check_number(f"data.prep.{key}", getattr(self, key))
        for key in ("new_user_max_prior", "stream_overlap"):
            check_number(f"data.prep.{key}", getattr(self, key), allow_zero=True)
        for key in ("val_frac", "test_frac"):
            check_number(f"data.prep.{key}", getattr(self, key), integer=False, allow_zero=True)
        check_number("data.prep.new_user_train_fraction", self.new_user_train_fraction, integer=False)
        if not isinstance(self.carry_state, bool):
            raise SchemaError(f"data.prep.carry_state={self.carry_state}: must be true or false")
        if self.new_user_train_fraction > 1:
            raise SchemaError(f"data.prep.new_user_train_fraction={self.new_user_train_fraction}: must be in (0, 1]")
        if self.stream_overlap >= self.stream_len and not self.carry_state:  # carried states: no overlap
            raise SchemaError(f"data.prep.stream_overlap={self.stream_overlap}: must be less than "
                              f"data.prep.stream_len={self.stream_len}")
        if self.val_frac + self.test_frac >= 1:
            raise SchemaError(f"data.prep.val_frac + data.prep.test_frac = {self.val_frac + self.test_frac}: "
                              "must be < 1")
        bounds = self.activity_buckets
        if not all(isinstance(b, int) and not isinstance(b, bool) for b in bounds) or \
                list(bounds) != sorted(set(bounds)) or (bounds and bounds[0] <= 0):
            raise SchemaError(f"data.prep.activity_buckets={list(bounds)}: must be ascending positive counts")
        if self.engine not in ENGINES:
            raise SchemaError(f"data.prep.engine={self.engine}: must be one of {', '.join(ENGINES)}")
        for key in ("workers", "rows_per_partition"):
            if getattr(self, key) is not None:
                check_number(f"data.prep.{key}", getattr(self, key))
        if self.ray_address is not None and not (isinstance(self.ray_address, str) and self.ray_address):
            raise SchemaError(f"data.prep.ray_address={self.ray_address}: must be an address (host:port, ray://..., "
                              "auto) or null")
        if not all(isinstance(c, str) and c for c in self.personalization):
            raise SchemaError(f"data.prep.personalization={list(self.personalization)}: must be column names")

    @classmethod
    def from_config(cls, prep: Mapping | None) -> PrepOptions:
        """From the plain ``data.prep`` mapping (missing keys take the defaults; unknown keys are refused)."""
        prep = dict(prep or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(prep) - set(known))
        if unknown:
            raise SchemaError(f"data.prep.{unknown[0]}: unknown key (data.prep has {', '.join(known)})")
        return cls(**prep)

    @property
    def partitioned(self) -> bool:
        """Whether ``mose-prep`` takes the partitioned prep (any engine but local, or a partition size)."""
        return self.engine != "local" or self.rows_per_partition is not None

    def to_dict(self) -> dict:
        """Plain data (lists, not tuples): what the manifest, the fitted state and the config hash store (the
        options that shape the arrays; not :data:`RUN_KEYS`, how the prep runs). ``carry_state`` only when
        on, so the datasets prepared before it existed keep their hash."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()
                if k not in RUN_KEYS and (k != "carry_state" or v)}
