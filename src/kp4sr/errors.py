"""Errors that kp4sr raises on bad input.

Every problem with user-supplied data is a :class:`DataError` that names the file and,
where it has one, the line, so that the CLI can print one clear line instead of a traceback.
"""

from __future__ import annotations

from pathlib import Path


class KP4SRError(Exception):
    """Base class of every error kp4sr raises on purpose (the CLI prints these as one line)."""


class DataError(KP4SRError):
    """Malformed or inconsistent input data, located by file and line."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.path = None if path is None else str(path)
        self.line = line
        self.reason = message
        where = ""
        if self.path is not None:
            where = f"{self.path}"
            if line is not None:
                where += f", line {line}"
            where += ": "
        super().__init__(f"{where}{message}")


class ConfigError(KP4SRError):
    """An option or a run folder that cannot be used as given."""
