"""The suite's error types and the one error convention of its console scripts (:func:`cli_errors`).

    def main() -> None:          # every console script
        with cli_errors():
            hydra_main()         # or an argparse main

Input, config and environment errors print one line ``error: ...`` on stderr (naming the column, rows,
config key or file) and exit with status 2; a non-finite loss exits 3, SIGTERM 143 (checkpoint saved).
Light on imports: ``mose-report`` uses it without loading torch; it lives in data_prep, which imports nothing from mose.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
from collections.abc import Iterator

EXIT_CODES = {"input": 2, "nonfinite": 3, "sigterm": 143}


class ConfigError(ValueError):
    """A config value that cannot work; the message starts with the offending key."""


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, or unsafe to load; the message names the file."""


class InputError(ValueError):
    """An input file or argument that cannot be used (missing, unreadable, malformed); the message names it."""


class WriteError(RuntimeError):
    """An output file that could not be written (full or read-only disk, a folder that is a file ...)."""


class NonFiniteLossError(RuntimeError):
    """Training stopped on a NaN / infinite loss; the message names the step and the task(s)."""


def _first_lines(err: BaseException, n: int = 3) -> str:
    return " ".join(ln.strip() for ln in str(err).strip().splitlines()[:n] if ln.strip())


def _lightning_misconfiguration(err: BaseException | None) -> bool:
    """Lightning's ``MisconfigurationException`` (by name: this module does not import Lightning)."""
    return err is not None and any(c.__name__ == "MisconfigurationException" for c in type(err).__mro__)


def _hydra_message(err: BaseException) -> str | None:
    """The message of a Hydra / OmegaConf error about the config or the command line (None: not one)."""
    from hydra.errors import HydraException, InstantiationException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(err, InstantiationException):
        # a _target_ called with arguments it does not take, or that it refuses; not a bug inside it
        cause = err.__cause__
        if not isinstance(cause, (TypeError, ValueError, ImportError, AttributeError)) and \
                not _lightning_misconfiguration(cause):
            return None
        return _first_lines(err)
    if isinstance(err, OmegaConfBaseException):  # e.g. a mandatory value (???) not given
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        key = getattr(err, "full_key", None)
        return f"{text} (set {key}=... on the command line)" if type(err).__name__ == "MissingMandatoryValue" and key \
            else text
    if isinstance(err, HydraException):
        lines = str(err).splitlines()
        text = _first_lines(err, 2)
        if "Available options" in str(err):  # a config group choice that does not exist: list the choices
            start = next(i for i, ln in enumerate(lines) if ln.startswith("Available options")) + 1
            options = list(itertools.takewhile(lambda ln: ln.startswith("\t"), lines[start:]))
            text = f"{lines[0]} (available: {', '.join(ln.strip() for ln in options)})"
        cause = err.__cause__ or err.__context__
        if isinstance(cause, OmegaConfBaseException) and str(cause).strip():
            text += f" ({str(cause).strip().splitlines()[0]})"
        return text
    return None


def error_message(err: BaseException) -> tuple[int, str] | None:
    """``(exit status, message)`` for an error the console scripts report without a traceback, else None."""
    from hydra.errors import InstantiationException

    if type(err).__name__ == "SIGTERMException":  # pytorch_lightning's; not imported here (light module)
        return EXIT_CODES["sigterm"], "interrupted by SIGTERM; checkpoints/last.ckpt holds the state to resume from"
    if isinstance(err, NonFiniteLossError):
        return EXIT_CODES["nonfinite"], f"error: {err}"
    if isinstance(err, InstantiationException) and err.__cause__ is not None:
        inner = error_message(err.__cause__)  # one of ours, raised inside an instantiated class
        if inner is not None:
            return inner
    text = _hydra_message(err)  # before OSError: Hydra's MissingConfigException is an IOError too
    if text is not None:
        return EXIT_CODES["input"], f"error: {text}"
    schema = sys.modules.get("data_prep.schema")
    ours = (ConfigError, CheckpointError, InputError, WriteError) + ((schema.SchemaError,) if schema else ())
    if isinstance(err, ours):
        return EXIT_CODES["input"], f"error: {err}"
    if _lightning_misconfiguration(err):  # e.g. a trainer setting Lightning refuses
        return EXIT_CODES["input"], f"error: {_first_lines(err)}"
    if isinstance(err, OSError):
        where = f"{err.filename}: " if err.filename else ""
        return EXIT_CODES["input"], f"error: {where}{err.strerror or err}"
    return None


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """For console entry points: input, config, checkpoint and environment errors (the suite's own, Hydra's
    composition and instantiation errors, ``OSError``) print ``error: ...`` instead of a traceback and exit 2;
    a non-finite loss exits 3, SIGTERM 143. Other exceptions (bugs) keep their traceback.
    ``MOSE_TRACEBACK=1`` re-raises every error with its traceback.

    Hydra is told to re-raise (``HYDRA_FULL_ERROR=1``) so that its own errors come out here too.
    """
    previous = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    except BaseException as err:  # SystemExit (argparse, --help) and KeyboardInterrupt pass through
        reported = error_message(err)
        if reported is None or (os.environ.get("MOSE_TRACEBACK") and reported[0] != EXIT_CODES["sigterm"]):
            raise
        print(reported[1], file=sys.stderr)
        sys.exit(reported[0])
    finally:
        if previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous
