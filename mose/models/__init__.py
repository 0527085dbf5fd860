"""One architecture per file, each composed from ``mose.nn`` blocks.

A model is an ``nn.Module`` built as ``Model(input_spec, tasks, **hparams)`` that maps a batch dict
to ``{task: logits (B,), ..., "aux": {...}}`` (per-stream models: ``(B, S)`` logits, one per step);
it knows nothing of Lightning. Shapes use the legend of :mod:`mose.nn`.
"""
