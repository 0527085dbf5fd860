"""``mose-export CKPT``: a trained model as a TorchScript (or ONNX) file that maps input tensors to predictions.

    mose-export outputs/runs/<date>/<time>/checkpoints/last.ckpt --out model.pt             # TorchScript
    mose-export outputs/runs/<date>/<time>/checkpoints/last.ckpt --format onnx --out model.onnx  # pip install '.[onnx]'

The exported graph takes the batch fields listed in ``<out>.json`` (``inputs``: name, dtype, shape
with ``B`` the batch axis), positionally in that order (ONNX: by ``onnx_name``, ``input_<field>``), and returns predictions ``(B, T)`` (per-stream
models: ``(B, S, T)``, read at the scored steps ``mask``): probabilities for binary tasks, target-scale
values for regression tasks (log1p scale where the task is log1p-transformed), tasks in ``tasks`` order.
Feed it the arrays ``data_prep.transform.transform`` builds (the preprocessing is not in the graph). The
fitted state ships beside it in ``<out>.vocab/`` (a copy of the prepared folder's ``fit/``: ``fit.json``
and one Parquet per vocabulary, columns ``value`` -> ``index``), so a serving process outside Python
can map raw ids to the indices the graph takes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from data_prep.dataset import FIT_DIR, load_fitted
from mose.atomic import atomic_path, write_file, write_text
from mose.data.datamodule import loader_settings
from mose.data.datasets import EventSplit, StreamSplit
from data_prep.errors import ConfigError, cli_errors
from mose.module import MultiTaskModule, stacked_logits, to_predictions
from mose.predict import load_module, prepared_root

FORMATS = ("torchscript", "onnx")


class ScoringModel(nn.Module):
    """A trained model as ``forward(*tensors) -> predictions (B, [S,] T)``, tensors in ``fields`` order."""

    def __init__(self, module: MultiTaskModule, fields: list[str]) -> None:
        super().__init__()
        self.model = module.model  # the plain nn.Module (a LightningModule does not trace outside a Trainer)
        self.tasks, self.fields = list(module.tasks), list(fields)
        for name in ("binary", "mean", "std"):
            self.register_buffer(name, getattr(module, name).clone())

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        batch = dict(zip(self.fields, tensors))
        logits = stacked_logits(self.model(batch), self.tasks, self.binary).float()  # (B, [S,] T)
        return to_predictions(logits, self.binary, self.mean, self.std)


def example_batch(module: MultiTaskModule, size: int = 64, split: str = "test") -> dict[str, torch.Tensor]:
    """A batch of ``size`` events (per-stream: windows) of the checkpoint's prepared dataset."""
    root = prepared_root(module)
    per_stream = loader_settings(module.hparams.data)["layout"] == "per_stream"
    ds = StreamSplit(root, split, "next_step") if per_stream else EventSplit(root, split)
    return ds.__getitems__(list(range(min(size, len(ds)))))


def model_fields(batch: dict[str, torch.Tensor]) -> list[str]:
    """Batch fields the exported graph takes (all but labels, user keys and cohorts, which only metrics read)."""
    return [f for f in batch if f not in ("labels", "user_key", "cohorts")]


def onnx_input_names(fields: list[str]) -> list[str]:
    """ONNX graph input names: ``input_<field>`` (a bare ``cat`` would clash with a node's name)."""
    return [f"input_{f}" for f in fields]


def export(ckpt_path: str | Path, out: str | Path, fmt: str = "torchscript", batch_size: int = 64) -> Path:
    """Write the model of ``ckpt_path`` to ``out`` (``fmt`` torchscript | onnx) and ``<out>.json`` describing its inputs."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {FORMATS}, got '{fmt}'")
    module = load_module(ckpt_path)
    batch = example_batch(module, batch_size)
    fields = model_fields(batch)
    wrapper = ScoringModel(module, fields).eval()
    inputs = tuple(batch[f] for f in fields)
    out = Path(out)
    with torch.no_grad():
        if fmt == "torchscript":
            traced = torch.jit.trace(wrapper, inputs, check_trace=False, strict=False)
            write_file(out, "exported torchscript model", lambda f: torch.jit.save(traced, f))
        else:
            try:
                import onnx  # noqa: F401
                import onnxscript  # noqa: F401
            except ImportError:
                raise ConfigError("--format onnx needs the optional extra: pip install torch==2.13.0 '.[onnx]'") from None
            batch_dim = torch.export.Dim("batch", min=1)
            with atomic_path(out, "exported onnx model") as tmp:
                torch.onnx.export(wrapper, inputs, str(tmp), input_names=onnx_input_names(fields),
                                  output_names=["predictions"], dynamo=True,
                                  dynamic_shapes=(tuple({0: batch_dim} for _ in fields),))  # one entry: *tensors
    meta = {
        "format": fmt, "checkpoint": str(ckpt_path), "tasks": module.tasks,
        "kinds": {t: module.hparams.tasks[t].get("kind", "binary") for t in module.tasks},
        "scales": output_scales(module.hparams.tasks, module.tasks),
        "layout": loader_settings(module.hparams.data)["layout"],
        "inputs": [{"name": f, "onnx_name": n, "dtype": str(batch[f].dtype).removeprefix("torch."),
                    "shape": ["B", *batch[f].shape[1:]]}
                   for f, n in zip(fields, onnx_input_names(fields))],
    }
    write_text(f"{out}.json", json.dumps(meta, indent=2), "exported model's input description")
    copy_vocab(prepared_root(module), Path(f"{out}.vocab"))
    return out


def copy_vocab(root: Path, dest: Path) -> Path:
    """Copy the fitted state of the prepared folder ``root`` to ``dest`` (temp name, then renamed)."""
    load_fitted(root)  # refuses a folder of an older format, without a fit
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(root / FIT_DIR, tmp)
    shutil.rmtree(dest, ignore_errors=True)
    os.rename(tmp, dest)
    return dest


def output_scales(tasks: dict, names: list[str]) -> dict[str, str]:
    """What each column of the exported ``predictions`` means: ``probability`` (binary tasks), ``original units``
    or ``log1p`` (a regression target trained with ``transform: log1p``: apply ``expm1`` for original units,
    as mose-predict's ``pred_<task>`` does)."""
    out = {}
    for t in names:
        spec = tasks[t]
        if spec.get("kind", "binary") == "binary":
            out[t] = "probability"
        else:
            out[t] = "log1p" if spec.get("transform", "none") == "log1p" else "original units"
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mose-export", description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="a checkpoint written by mose-train")
    parser.add_argument("--format", default="torchscript", choices=FORMATS)
    parser.add_argument("--out", help="output file (default: beside the checkpoint, model.pt / model.onnx)")
    args = parser.parse_args(argv)
    out = args.out or Path(args.ckpt).with_name("model.pt" if args.format == "torchscript" else "model.onnx")
    with cli_errors():  # error: ... and exit 2 (checkpoint, data, disk)
        path = export(args.ckpt, out, args.format)
    print(f"exported {args.format}: {path} (inputs: {path}.json, vocabularies: {path}.vocab/)")


if __name__ == "__main__":
    main()
