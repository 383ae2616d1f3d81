"""The project's own error and warning types: every user mistake surfaces as one of these errors, with
a message that says what was wrong and how to fix it; a result the project doubts comes with a
:class:`DiagnosticWarning`, one sentence of ours (shown without a source line by command-line
programs, inside :func:`concise_warnings`)."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class PplVaeError(Exception):
    """Base class of every error ppl_vae raises on purpose."""


class ConfigError(PplVaeError, ValueError):
    """A configuration value is unknown, of the wrong type or impossible. The message names the key."""


class DataError(PplVaeError):
    """A dataset file is missing, corrupted, or its contents are not what the model needs."""


class CheckpointError(PplVaeError):
    """A checkpoint is missing, truncated or was written by something else."""


class TrainingError(PplVaeError):
    """Training cannot go on (for example, the loss became NaN)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training was stopped by Ctrl-C (SIGINT) between two steps. ``checkpoint`` is the file its
    state was saved to (``None`` for a run without a run directory, where nothing is saved)."""

    def __init__(self, message: str, checkpoint: str | None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


class EvaluationError(PplVaeError):
    """An evaluation cannot be computed for this model (for example, a latent outside the data plate)."""


class DiagnosticWarning(UserWarning):
    """An evaluation ran, but a diagnostic says its numbers may be unreliable (for example PSIS k̂ > 0.7).
    The message is one sentence: what was found, what it means and what to do about it."""


def warn_diagnostic(message: str, stacklevel: int = 1) -> None:
    """Warn with a :class:`DiagnosticWarning`, attributed ``stacklevel`` frames above the caller
    (1: the function that calls this one), as ``warnings.warn`` counts them."""
    warnings.warn(message, DiagnosticWarning, stacklevel=stacklevel + 1)


@contextmanager
def concise_warnings(program: str) -> Iterator[None]:
    """Within the block, show each :class:`DiagnosticWarning` as the single line
    ``<program>: warning: <message>`` on stderr; every other warning is shown as before.

    For command-line programs, around the whole command (the block restores the warnings module's
    state on exit, as ``warnings.catch_warnings`` does). Filters still decide which warnings are shown."""
    with warnings.catch_warnings():
        shown_before = warnings.showwarning

        def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
            if issubclass(category, DiagnosticWarning):
                print(f"{program}: warning: {message}", file=file or sys.stderr)
            else:
                shown_before(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield
