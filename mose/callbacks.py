"""Run safety: a resumable ``last.ckpt`` (periodic, on SIGTERM / Ctrl-C / non-finite loss), resume
lookup, guarded checkpoint loading and the non-finite loss policy.

    callbacks:                                # conf/callbacks/default.yaml
      last_checkpoint: {_target_: mose.callbacks.ResumeCheckpoint, dirpath: ..., every_n_train_steps: 50}
      nonfinite: {_target_: mose.callbacks.NonFiniteLoss, mode: stop}   # stop | skip

    mose-train ... resume=<run dir> | resume=<file.ckpt> | resume=auto   (see docs/reliability.md)
"""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins import TorchCheckpointIO
from pytorch_lightning.callbacks import Checkpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from mose.atomic import write_file
from data_prep.errors import EXIT_CODES, CheckpointError, NonFiniteLossError, cli_errors  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

LAST = "last.ckpt"
NONFINITE_MODES = ("stop", "skip")  # callbacks.nonfinite.mode; the first is the default


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to memory, then to a temp name beside the checkpoint and a rename (:func:`mose.atomic.write_file`).

    Lightning's own save stages the file in the system temp folder and moves it, which is a copy (and a
    truncated checkpoint on a full disk) when that folder is on another filesystem.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        write_file(path, "checkpoint", lambda f: torch.save(checkpoint, f))


class ResumeCheckpoint(Checkpoint):
    """Keeps ``<dirpath>/last.ckpt`` resumable: saved every ``every_n_train_steps`` optimizer steps,
    after each validation, at the end of training, and when training is interrupted by SIGTERM,
    Ctrl-C or a non-finite loss (the state before the bad step). Each save is atomic (temp file +
    rename), so a kill during a save leaves the previous ``last.ckpt`` intact.

    Lightning turns SIGTERM into ``SIGTERMException`` after the current batch; this callback saves
    the checkpoint then, and ``mose-train`` exits with status 143.

    A :class:`~pytorch_lightning.callbacks.Checkpoint`: Lightning runs it after the callbacks that are not
    checkpoints and after the ``ModelCheckpoint`` configured before it, so the state it saves holds this
    validation's early-stopping count and best checkpoint. The checkpoint saved at the end of training
    is marked ``finished``: resuming from it (``resume=auto`` on a finished run, or one killed while
    testing) trains nothing and goes straight to testing.
    The trainer's checkpoint writes (this callback's and ``ModelCheckpoint``'s) go through
    :class:`AtomicCheckpointIO` unless another checkpoint IO is configured.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int = 50, filename: str = LAST) -> None:
        super().__init__()
        if every_n_train_steps < 0:
            raise ValueError(f"every_n_train_steps must be >= 0 (0 = only at validation), got {every_n_train_steps}")
        self.dirpath, self.every, self.filename = Path(dirpath), int(every_n_train_steps), filename
        self._saved_step = -1
        self.finished = False  # training ran to its end (stored in the checkpoint)

    @property
    def path(self) -> Path:
        return self.dirpath / self.filename

    def state_dict(self) -> dict[str, Any]:
        return {"finished": self.finished}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.finished = bool(state_dict.get("finished", False))

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's default: not atomic
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()

    def save(self, trainer: pl.Trainer) -> Path:
        """Write the full trainer state to :attr:`path` (every rank calls this; rank 0 writes, atomically)."""
        trainer.save_checkpoint(self.path, weights_only=False)  # a barrier on every rank
        self._saved_step = trainer.global_step
        return self.path

    def _fitting(self, trainer: pl.Trainer) -> bool:
        return trainer.state.fn == "fit" and not trainer.sanity_checking and not trainer.fast_dev_run

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.finished:  # restored from a checkpoint saved when training had ended
            log.info("resumed from a finished run (step %d): nothing left to train", trainer.global_step)
            trainer.should_stop = True
            self._saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self.every and step % self.every == 0 and step != self._saved_step and self._fitting(trainer):
            self.save(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._fitting(trainer):
            self.save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._fitting(trainer) and (not self.finished or trainer.global_step != self._saved_step):
            self.finished = True
            self.save(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, (SIGTERMException, KeyboardInterrupt, NonFiniteLossError)):
            return
        if not self._fitting(trainer):
            return
        path = self.save(trainer)
        what = {SIGTERMException: "SIGTERM", KeyboardInterrupt: "interrupt"}.get(type(exception), "non-finite loss")
        if trainer.is_global_zero:
            run_dir = self.dirpath.parent if self.dirpath.name == "checkpoints" else self.dirpath
            log.warning("%s at step %d: saved %s; continue with resume=%s", what, trainer.global_step, path, run_dir)


class NonFiniteLoss(pl.Callback):
    """What to do when a training loss is NaN or infinite: ``stop`` (raise
    :class:`NonFiniteLossError` naming the step and task; :class:`ResumeCheckpoint` saves the
    state before that step) or ``skip`` (drop the batch: no backward, so its optimizer step changes nothing; logged).
    The check runs in ``MultiTaskModule.training_step`` through :func:`nonfinite_batch`.
    """

    def __init__(self, mode: str = NONFINITE_MODES[0]) -> None:
        super().__init__()
        if mode not in NONFINITE_MODES:
            raise ValueError(f"callbacks.nonfinite.mode must be one of {NONFINITE_MODES}, got '{mode}'")
        self.mode = mode
        self.skipped = 0


def nonfinite_batch(module: pl.LightningModule, loss: torch.Tensor, losses: torch.Tensor,
                    tasks: list[str]) -> bool:
    """True when this batch must be skipped (non-finite loss, ``mode=skip``); raises in ``mode=stop``.

    ``losses (T,)`` are the per-task losses in ``tasks`` order. Under DDP the decision is shared,
    so every rank skips (or stops) together.
    """
    trainer = getattr(module, "_trainer", None)
    bad = not bool(torch.isfinite(loss).all())
    if trainer is not None and trainer.world_size > 1:
        bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
    if not bad:
        return False
    policy = next((c for c in (trainer.callbacks if trainer else []) if isinstance(c, NonFiniteLoss)), None)
    finite = torch.isfinite(losses.detach())
    names = [t for t, ok in zip(tasks, finite.tolist()) if not ok] or ["aux loss (load balancing)"]
    values = ", ".join(f"{t}={float(losses[tasks.index(t)]):g}" for t in names if t in tasks)
    step = trainer.global_step if trainer else -1
    where = f"non-finite training loss at step {step} (epoch {trainer.current_epoch if trainer else -1}), " \
            f"task(s) {names}" + (f": {values}" if values else "")
    if policy is not None and policy.mode == "skip":
        policy.skipped += 1
        log.warning("%s; batch skipped (callbacks.nonfinite.mode=skip, %d skipped so far)", where, policy.skipped)
        return True
    raise NonFiniteLossError(f"{where}; stopped (set callbacks.nonfinite.mode=skip to skip such batches). "
                             "Lower optim.lr or check the inputs.")


def find_resume_checkpoint(resume: str | None, run_dir: str | Path) -> str | None:
    """The checkpoint ``resume`` points at: ``None``; ``auto`` (``<run_dir>/checkpoints/last.ckpt``
    if present, else a fresh start); a run dir (its ``checkpoints/last.ckpt``); or a ``.ckpt`` file.
    """
    if resume in (None, "", "null"):
        return None
    if str(resume) == "auto":
        path = Path(run_dir) / "checkpoints" / LAST
        if path.is_file():
            load_checkpoint(path)
            return str(path)
        log.info("resume=auto: no %s yet, starting from scratch", path)
        return None
    path = Path(resume)
    if path.is_dir():
        for candidate in (path / "checkpoints" / LAST, path / LAST):
            if candidate.is_file():
                load_checkpoint(candidate)
                return str(candidate)
        raise CheckpointError(f"resume={resume}: a folder without checkpoints/{LAST} (not a mose-train run dir?)")
    if not path.is_file():
        raise CheckpointError(f"resume={resume}: no such checkpoint file or run dir")
    load_checkpoint(path)  # refuse unsafe or unreadable files with a clear message before Lightning sees them
    return str(path)


def load_checkpoint(path: str | Path) -> dict:
    """A ``mose-train`` checkpoint, loaded with ``torch.load(path, weights_only=True)``: tensors and plain
    data only. Refused with :class:`CheckpointError` naming the file: not a file; unreadable (truncated,
    random bytes, not a torch file); carrying other pickled objects (which could run code when loaded);
    or not a Lightning checkpoint of ``MultiTaskModule`` (no ``state_dict`` / ``hyper_parameters``).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err):  # the weights-only unpickler met bytes, not a class to load
            raise CheckpointError(unreadable_message(path, err)) from None
        raise CheckpointError(unsafe_message(path, err)) from None
    except Exception as err:  # noqa: BLE001  (torch.load fails in many ways on bytes that are no checkpoint)
        raise CheckpointError(unreadable_message(path, err)) from None
    hparams = state.get("hyper_parameters") if isinstance(state, dict) else None
    if not isinstance(hparams, dict) or "state_dict" not in state or not {"model", "tasks", "input_spec"} <= set(hparams):
        keys = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"checkpoint {path} is not a mose-train checkpoint (a Lightning checkpoint with "
                              f"state_dict and the model's hyper_parameters); it holds {keys}")
    return state


def _detail(err: BaseException) -> str:
    """The reason in a ``torch.load`` error: the unpickler's (``Unsupported global: GLOBAL io.open``), else
    the first sentence of its first line."""
    text = str(err)
    if found := re.search(r"Unsupported (global: GLOBAL [\w.]+|operand \d+)", text):
        return found.group(0)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0].split(". ")[0] if lines else type(err).__name__


def unreadable_message(path: str | Path, err: BaseException) -> str:
    return f"checkpoint {path} cannot be read (truncated, corrupt or not a torch checkpoint): {_detail(err)}"


def unsafe_message(path: str | Path, err: BaseException) -> str:
    """A short reason why a checkpoint was refused by ``weights_only=True`` loading."""
    return (f"refusing to load checkpoint {path}: it holds pickled objects other than tensors and plain data "
            f"({_detail(err)}); loading it could run arbitrary code. mose checkpoints never need this: only load "
            "checkpoints from sources you trust")
