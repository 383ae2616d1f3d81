"""The project's own error types: every user mistake surfaces as one of these, with a message that
says what was wrong and how to fix it."""


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
