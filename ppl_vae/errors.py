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


class EvaluationError(PplVaeError):
    """An evaluation cannot be computed for this model (for example, a latent outside the data plate)."""
