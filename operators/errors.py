"""One root for tickcast's errors; each kind of user mistake has its own type.

The message of every error says what was wrong and how to fix it; the CLI
prints it as one line and exits non-zero.
"""


class TickcastError(Exception):
    """Root of every error tickcast raises on purpose."""


class BundleError(TickcastError):
    """A model bundle is missing, damaged, or cannot be served by this build."""


class InputDataError(TickcastError):
    """An input file or table cannot be read as ticks."""


class TrainingUnavailable(TickcastError):
    """Training (or running a model through Keras) was asked of an install without TensorFlow and Keras."""


class EnvironmentSettingError(TickcastError, ValueError):
    """An environment variable tickcast reads (TICKCAST_*) holds a value it cannot use."""
