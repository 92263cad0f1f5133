"""Logging to stderr in a form journald understands.

Under journald (JOURNAL_STREAM set) each line starts with a syslog priority
prefix ``<N>`` and carries no timestamp (journald adds its own), so
``journalctl -p err`` filters correctly. Elsewhere lines get a timestamp and
the level name. Configured once, by ``setup()``, never at import time.
"""
from __future__ import annotations

import logging
import os
import sys

SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def syslog_priority(levelno: int) -> int:
    for level, priority in SYSLOG_PRIORITY.items():  # highest level first
        if levelno >= level:
            return priority
    return 7


class JournalFormatter(logging.Formatter):
    """``<N>logger: message``, with every line of a multi-line record prefixed."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        text = f"{record.name}: {super().format(record)}"
        return "\n".join(prefix + line for line in text.splitlines())


class ConsoleFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")


def under_journald(stream=None) -> bool:
    """True when ``stream`` (stderr) is the journal stream systemd gave us."""
    value = os.environ.get("JOURNAL_STREAM", "")
    if not value:
        return False
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat((stream or sys.stderr).fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def setup(debug: bool = False, stream=None) -> None:
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JournalFormatter() if under_journald(stream) else ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    # Library chatter stays out of debug output unless it matters.
    for noisy in ("pyroute2", "asyncio", "grpc", "redis"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
