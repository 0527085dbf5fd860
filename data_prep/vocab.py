"""Vocabularies and normalisation statistics, fitted on the train split only."""

from __future__ import annotations

import polars as pl

PAD, OOV = 0, 1  # index 0 pads histories, 1 holds ids unseen in train; known ids start at 2


def fit_vocab(train: pl.DataFrame, col: str, min_count: int = 1) -> pl.DataFrame:
    """Map each train value of ``col`` seen at least ``min_count`` times to an index >= 2, in first-seen order.

    Rarer values share the OOV index with unseen ones, so OOV is trained and stands for
    "rare or new". Returns a frame ``(col, "<col>_idx", "<col>_count")`` (the train count, part of
    the dataset's fingerprint) to join onto events.
    """
    counts = train.group_by(col, maintain_order=True).len()
    values = counts.filter(pl.col("len") >= min_count).select(col, pl.col("len").cast(pl.Int64).alias(f"{col}_count"))
    return values.select(col, pl.int_range(2, values.height + 2, dtype=pl.Int64).alias(f"{col}_idx"), f"{col}_count")


def encode(df: pl.DataFrame, vocab: pl.DataFrame, col: str) -> pl.Series:
    """Vocabulary index of every row of ``df[col]``; values missing from ``vocab`` map to OOV."""
    out = df.select(col).join(vocab.select(col, f"{col}_idx"), on=col, how="left", maintain_order="left")
    return out[f"{col}_idx"].fill_null(OOV).alias(f"{col}_idx")


def fit_standardizer(train: pl.DataFrame, cols: list[str]) -> dict[str, tuple[float, float]]:
    """Mean and standard deviation (>0) of each numeric column on train."""
    stats = {}
    for c in cols:
        x = train[c].cast(pl.Float64)
        mean, std = x.mean(), x.std()
        stats[c] = (float(mean or 0.0), float(std) if std and std > 0 else 1.0)
    return stats
