"""Errors that kp4sr raises on bad input.

Every problem with user-supplied data is a :class:`DataError` that names the file and,
where it has one, the line, so that the CLI can print one clear line instead of a traceback.
"""

from __future__ import annotations

from pathlib import Path


def one_line(text: str) -> str:
    """The text with its line breaks folded into spaces.

    The CLI promises one line per error, and a message may quote a library's multi-line text
    (a tokenizer's or a checkpoint loader's); data values are quoted with ``repr`` instead, so
    the user still sees exactly which characters a file holds.
    """
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


class KP4SRError(Exception):
    """Base class of every error kp4sr raises on purpose (the CLI prints these as one line)."""

    def __init__(self, message: object = "", *args: object):
        super().__init__(one_line(str(message)), *args)


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
        super().__init__(f"{where}{one_line(message)}")


class ConfigError(KP4SRError):
    """An option or a run folder that cannot be used as given."""
