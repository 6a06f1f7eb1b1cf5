"""User-facing errors.

Every error a user can cause (bad YAML, unknown names, bad data files, bad CLI
arguments) is raised as a :class:`ConfigError` or :class:`DataError`. The CLI
maps both to a one-line message and exit code 2; library users catch them.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by user input; printed as one line, exit code 2."""

    def __init__(self, where: str, message: str):
        self.where = where
        self.message = message
        super().__init__(f"{where}: {message}" if where else message)


class ConfigError(UserError):
    """A config field (dotted path) holds a value that is not allowed."""


class DataError(UserError):
    """A data file or directory is missing or malformed."""


class PrivacyAccountingError(RuntimeError):
    """What ran departed from what was accounted. Never silenced."""


class Preempted(Exception):
    """SIGTERM arrived; a checkpoint was saved. The CLI exits 143 (128 + SIGTERM), which the
    Kubernetes manifests' pod failure policy retries; ``--resume`` continues the run."""

    exit_code = 143


class TrainingDiverged(Exception):
    """The loss or the model weights became NaN/inf (or exploded). The last good checkpoint is
    kept; the CLI prints one line naming the round and exits 3."""

    exit_code = 3


class WorkerLost(Exception):
    """A TFF executor worker died or became unreachable mid-round. Retriable: the round did not
    happen (nothing was accounted); the run resumes from its last checkpoint. The CLI exits 75
    (EX_TEMPFAIL) when retries are exhausted."""

    exit_code = 75


class PartTypeError(ConfigError, TypeError):
    """A user part (model builder, data, learning process, aggregator) is of the wrong kind.
    A ``TypeError`` for Python callers, a one-line exit-2 error for the CLI."""


class PartValueError(ConfigError, ValueError):
    """A user part has the right kind but an unusable value (no clients, labels that do not fit
    the model's output, a state that cannot be checkpointed)."""
