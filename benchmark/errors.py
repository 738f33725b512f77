"""Errors a user can act on. The CLI prints them as one line and exits with `exit_code`."""


class BenchmarkError(Exception):
    """Base class: a problem the user can fix (bad name, bad file, missing weights)."""

    exit_code = 1


class UnknownNameError(BenchmarkError, KeyError):
    """A model, attack or dataset name that no registry knows."""

    exit_code = 2

    def __str__(self) -> str:  # KeyError would add quotes around the message
        return str(self.args[0]) if self.args else ""


class ConfigError(BenchmarkError, ValueError):
    """A bad command-line value or a malformed card."""

    exit_code = 2


class DataError(BenchmarkError):
    """A dataset that cannot be read (missing root, bad CSV, unreadable image)."""


class ModelUnavailable(BenchmarkError):
    """A model that cannot be built here (weights missing, import failure)."""


class CheckpointError(BenchmarkError):
    """A checkpoint or artifact that is corrupt, unsafe or does not match its model."""


class NonFiniteScore(BenchmarkError):
    """A model returned NaN or inf."""


class StoreError(BenchmarkError):
    """The results store cannot be read or written."""
