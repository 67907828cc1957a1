"""Fixtures for the reliability tests (faults, durability, hostile input, PHI). Helpers live in
``_reliability.py`` (a unique module name: every test folder has a conftest.py)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


class LogCapture(logging.Handler):
    """Every record logged in this process, formatted with its arguments (as it would be written)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # noqa: BLE001 - a broken record must not break the test
            self.lines.append(f"<unformattable record from {record.name}>")


@pytest.fixture(scope="module")
def driver_logs():
    """Captures the test process's own log records (DEBUG and up) for the module's duration."""
    handler = LogCapture()
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old)
