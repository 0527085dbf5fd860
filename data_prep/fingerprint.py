"""A content fingerprint of a prepared dataset's fitted vocabularies and task set.

Computed from the fitted state (:meth:`data_prep.fit.FittedState.fingerprint`: its vocabularies
``(col, "count")`` in index order and its task specs), written to ``manifest.json`` (``fingerprint``)
and stored in every checkpoint (``MultiTaskModule`` hparam ``fingerprint``). ``mose-eval``,
``mose-predict`` and ``resume=`` compare the two with :func:`differences`, so a model never scores
ids that now mean other users or items.

    {"vocab": {"user_id": {"size": 302, "dtype": "integer", "sha": ..., "set_sha": ..., "counts_sha": ...}, "item_id": ...},
     "tasks": {"click": {"kind": "binary", "transform": "none"}, ...}}
"""

from __future__ import annotations

import hashlib

import polars as pl

from data_prep.schema import ITEM, USER, EventSpec, id_kind
from data_prep.vocab import FIRST

CHUNK = 1 << 20  # values hashed per step (bounded memory for large vocabularies)


def _sha(prefix: str, values: pl.Series) -> str:
    """Hash of ``values`` in order, as text (bounded memory: :data:`CHUNK` values per step)."""
    h = hashlib.sha256(prefix.encode())
    text = values.cast(pl.String)
    for start in range(0, len(text), CHUNK):
        h.update(text.slice(start, CHUNK).str.join("\x1f").item().encode())
        h.update(b"\x1e")
    return h.hexdigest()[:16]


def vocab_digest(vocab: pl.DataFrame, col: str) -> dict:
    """``{size, dtype, sha, set_sha, counts_sha}`` of one fitted vocabulary ``(col, "count")`` in index order:
    its values in that order (``sha``), as a set (``set_sha``: sorted) and their train counts
    (``counts_sha``: ids permuted among users change it). ``size`` counts PAD and OOV."""
    kind = id_kind(vocab.schema[col])
    return {"size": vocab.height + FIRST, "dtype": kind, "sha": _sha(kind, vocab[col]),
            "set_sha": _sha(kind, vocab[col].sort()), "counts_sha": _sha("counts", vocab["count"])}


def fingerprint(vocabs: dict[str, pl.DataFrame], spec: EventSpec) -> dict:
    """The fingerprint of a dataset from its fitted vocabularies ``{col: (col, "count")}`` (user, item, each
    categorical; :attr:`data_prep.fit.FittedState.vocabs`) and its task specs (names, kinds, transforms;
    not the loss weights)."""
    return {"vocab": {col: vocab_digest(v, col) for col, v in vocabs.items()},
            "tasks": {t.name: {"kind": t.kind, "transform": t.transform} for t in spec.tasks}}


def vocab_name(col: str) -> str:
    """How errors name a vocabulary: ``user ids (user_id)``, ``item ids (item_id)``, ``categorical 'device'``."""
    return {USER: f"user ids ({USER})", ITEM: f"item ids ({ITEM})"}.get(col, f"categorical '{col}'")


def _tasks(tasks: dict) -> str:
    return ", ".join(f"{t} ({s['kind']}{'' if s.get('transform', 'none') == 'none' else ', ' + s['transform']})"
                     for t, s in tasks.items())


def differences(trained: dict, current: dict) -> list[str]:
    """What differs between a checkpoint's fingerprint ``trained`` and a dataset's ``current``, by name."""
    out = []
    old, new = trained.get("vocab", {}), current.get("vocab", {})
    for col in dict.fromkeys([*old, *new]):
        a, b = old.get(col), new.get(col)
        if a is None or b is None:
            out.append(f"{vocab_name(col)}: only the {'dataset' if a is None else 'checkpoint'} has this vocabulary")
        elif a["dtype"] != b["dtype"]:
            out.append(f"{vocab_name(col)}: {a['dtype']} ids in the checkpoint, {b['dtype']} ids in the dataset")
        elif a.get("set_sha", a["sha"]) != b.get("set_sha", b["sha"]):
            out.append(f"{vocab_name(col)}: other ids ({a['size']:,} vocabulary entries in the checkpoint, "
                       f"{b['size']:,} in the dataset)")
        elif a["sha"] != b["sha"]:
            out.append(f"{vocab_name(col)}: the same ids at other indices (the training events changed order, "
                       "e.g. ids permuted among users)")
        elif "counts_sha" in a and "counts_sha" in b and a["counts_sha"] != b["counts_sha"]:
            out.append(f"{vocab_name(col)}: the same ids and indices, but other train event counts per id "
                       "(ids permuted among users or items, or other train events)")
    if trained.get("tasks") != current.get("tasks"):
        out.append(f"task set: {_tasks(trained.get('tasks', {}))} in the checkpoint, "
                   f"{_tasks(current.get('tasks', {}))} in the dataset")
    return out
