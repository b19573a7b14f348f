"""The exception tree of the whole service.

::

    CdcError                      root: catch this to catch everything we raise
    ├── ConfigError               the registry or a command line is wrong (CLI exit 2)
    ├── WarehouseError            the warehouse cannot be written at all (read-only, disk full,
    │                             permissions): the run stops with its reason, nothing is lost
    ├── TerminalError             retrying cannot help; the input goes to the dead-letter store
    │   ├── DecodeError           a change event is malformed (keeps the raw message)
    │   ├── UnknownTableError     an event for a table that is not registered
    │   ├── SchemaChangeError     an incompatible column type change
    │   ├── ValueRejectedError    the warehouse refused a value of a batch (the merge finds the
    │   │                         event by halving the batch; that event alone is dead-lettered)
    │   └── SourceAccessError     the source refused who we are or what we asked (wrong password,
    │                             missing grant, unknown database): retrying cannot help
    └── TransientError            retry with backoff (a server that is restarting, a timeout)
        └── SourceUnavailableError  the source database cannot be reached right now

Jobs act on the split: a ``TransientError`` is retried, a ``TerminalError`` is dead-lettered with
its reason and the raw input, and anything else is a bug that stops the job loudly.
"""

from __future__ import annotations

from dataclasses import dataclass


class CdcError(Exception):
    """Root of every error this project raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong (or worth a warning) in a registry file."""

    path: str  # e.g. "sources.billing.tables[1].primary_key"
    message: str
    line: int | None = None
    severity: str = "error"  # "error" | "warning"

    def render(self, file: str | None = None) -> str:
        where = file or "<config>"
        if self.line is not None:
            where = f"{where}:{self.line}"
        label = "warning" if self.severity == "warning" else "error"
        return (
            f"{where}: {label}: {self.path}: {self.message}"
            if self.path
            else f"{where}: {label}: {self.message}"
        )


class ConfigError(CdcError):
    """The registry file or the command line is wrong. Carries every problem found, not just the first."""

    def __init__(
        self, message: str, problems: list[ConfigProblem] | None = None, file: str | None = None
    ):
        super().__init__(message)
        self.problems = problems or []
        self.file = file

    def __str__(self) -> str:
        base = super().__str__()
        if not self.problems:
            return base
        lines = [base] + ["  " + p.render(self.file) for p in self.problems]
        return "\n".join(lines)


class TerminalError(CdcError):
    """Retrying will not help. The offending input goes to the dead-letter store with this reason."""

    def __init__(self, message: str, *, raw: bytes | str | None = None, table: str | None = None):
        super().__init__(message)
        self.raw = raw
        self.table = table  # the registered table it belongs to, when that much was read

    @property
    def reason(self) -> str:
        return str(self.args[0]) if self.args else type(self).__name__


class DecodeError(TerminalError):
    """A change event could not be decoded. ``raw`` keeps the original message for the dead-letter store."""


class UnknownTableError(TerminalError):
    """A change event names a table that the registry does not know."""


class SchemaChangeError(TerminalError):
    """A column changed type in a way that is not a safe widening."""


class ValueRejectedError(TerminalError):
    """The warehouse refused a batch because of a value in it (out of its range, not convertible).
    Which event holds it is found by applying halves of the batch; that one is dead-lettered."""


class WarehouseError(CdcError):
    """The warehouse cannot be written at all (read-only file system, disk full, no permission).
    Not the data's fault: nothing is dead-lettered, the command stops with the warehouse's reason."""


class SourceAccessError(TerminalError):
    """The source database refused our credentials or privileges. A capture stops at once (nothing
    is advanced); only a network failure (``SourceUnavailableError``) is retried."""


class TransientError(CdcError):
    """Worth retrying with backoff."""


class SourceUnavailableError(TransientError):
    """The source database cannot be reached right now."""
