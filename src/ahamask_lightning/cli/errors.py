"""One line per error for the ``ahamask`` console script.

Which errors become one line (:data:`ONE_LINE_ERRORS`), and how: the message's first line, plus
where it was raised for the error types that carry no key or file of their own (a ``TypeError``
says what was wrong, not where). An error re-raised from a DataLoader worker (torch's
``ExceptionWrapper``: "Caught X in DataLoader worker process N." then the worker's traceback as
text) keeps the worker's own last frame and message. A full disk is named as such. A message
cut to its first line says how many lines were left out and how to see them all: with
``AHAMASK_TRACEBACK=1`` in the environment (:func:`full_traceback_wanted`) the console script
raises instead, with the whole message and traceback.
"""
from __future__ import annotations

import os
import re
import traceback
from pathlib import Path

from lightning.fabric.utilities.exceptions import MisconfigurationException

from ..reliability import is_disk_full

# Errors of input, configuration, files and devices: reported in one line. Anything else (an
# AttributeError, an AssertionError, ...) is a bug and keeps its traceback.
ONE_LINE_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, KeyError, RuntimeError, TypeError,
                                                    MisconfigurationException)
_LOCATED = (TypeError, KeyError, IndexError)  # messages without a file or key: add where they came from
_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)')
_WORKER = re.compile(r"^Caught (?P<type>\w+) (?P<where>in [^\n]*?)\.?\nOriginal Traceback")


TRACEBACK_ENV = "AHAMASK_TRACEBACK"


def full_traceback_wanted() -> bool:
    """Whether the user asked for whole errors and tracebacks instead of one line."""
    return os.environ.get(TRACEBACK_ENV, "").strip() not in ("", "0")


def _short(path: str) -> str:
    """A frame's file relative to the working directory when it is below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return path


def _worker_line(text: str) -> str | None:
    match = _WORKER.match(text)
    if match is None:
        return None
    lines = [line for line in text.strip().splitlines() if line.strip()]
    frames = list(_FRAME.finditer(text))
    message = lines[-1].strip()
    if frames:
        last = frames[-1]
        return (f"{match['type']} {match['where']} at {_short(last['file'])}:{last['line']} "
                f"(in {last['func']}): {message}")
    return f"{match['type']} {match['where']}: {message}"


def error_line(exc: BaseException) -> str:
    """The one line that reports ``exc`` (without the ``ahamask: error:`` prefix)."""
    text = str(exc).strip()
    worker = _worker_line(text)
    if worker is not None:
        return worker
    if isinstance(exc, OSError) and exc.strerror:
        name = exc.filename if exc.filename is not None else ""
        head = f"{exc.strerror}: {name}" if name else exc.strerror
        if is_disk_full(exc):
            return f"disk full: {head}"
        return head
    lines = [line for line in text.splitlines() if line.strip()]
    first = lines[0].strip() if lines else type(exc).__name__
    if len(lines) > 1:
        first += f" ({len(lines) - 1} more lines: {TRACEBACK_ENV}=1 shows the whole error)"
    if isinstance(exc, _LOCATED):
        frames = traceback.extract_tb(exc.__traceback__)
        if frames:
            where = frames[-1]
            return f"{type(exc).__name__} at {_short(where.filename)}:{where.lineno} (in {where.name}): {first}"
        return f"{type(exc).__name__}: {first}"
    return first
