"""The append-only audit log: one PHI-free JSON line per ingest or search event.

Who (a token name or ``ae:<calling AE title>``), when (UTC, ISO 8601), which keyed case (the
platform's case key: an HMAC, never a raw identifier), which model version, the outcome (``ok`` or
a reason code). Lines are written with one ``write`` on an ``O_APPEND`` descriptor under an
exclusive ``flock``, so concurrent writers (threads or processes) never interleave, and fsynced:
an event the log acknowledged survives a crash. Every line also counts in
``lungsearch_audit_events_total{event,outcome}``.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import re
import threading
from pathlib import Path
from typing import Any

from lungsearch.pacs import metrics

__all__ = ["AuditLog", "EVENTS", "OUTCOME_RE"]

#: The events the log knows; anything else is a programming error.
EVENTS = (
    "ingest",
    "search",
    "classify",
    "explain",
    "results_sent",
    "association",
    "retrieve",
    "get_case",
    "delete_case",
    "activate",
)
#: Outcomes are ``ok`` or a short lower-case reason code (also a metric label: kept bounded by shape).
OUTCOME_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
# Free-text fields are refused wholesale: only these keys, with short, identifier-shaped values.
_FIELDS = {"who", "site", "case_key", "model", "instances", "images", "top_k", "hits", "series", "detail", "study"}
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.:@/ -]{0,80}$")


class AuditLog:
    """Append one JSON line per event to ``path`` (created with mode 0600, parents 0700)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()

    def record(self, event: str, outcome: str, **fields: Any) -> dict[str, Any]:
        """Write one line and return it as a dict.

        Raises:
            ValueError: unknown event, malformed outcome, an unknown field or a value that is not
                identifier-shaped (so free text, and with it PHI, cannot slip in).
        """
        if event not in EVENTS:
            raise ValueError(f"unknown audit event {event!r}")
        if not OUTCOME_RE.match(outcome):
            raise ValueError("audit outcome must be 'ok' or a short reason code")
        line: dict[str, Any] = {
            "ts": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
            "event": event,
            "outcome": outcome,
        }
        for key, value in fields.items():
            if key not in _FIELDS:
                raise ValueError(f"audit field {key!r} is not allowed")
            if value is None:
                continue
            if not isinstance(value, (int, float)) and not _SAFE_VALUE.match(str(value)):
                raise ValueError(f"audit field {key!r} is not identifier-shaped")
            line[key] = value
        data = (json.dumps(line, sort_keys=True) + "\n").encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)  # closing releases the flock
        metrics.AUDIT_EVENTS.labels(event=event, outcome=outcome).inc()
        return line

    def read(self) -> list[dict[str, Any]]:
        """Every line so far (for tests and `lungsearch` tooling)."""
        if not self.path.exists():
            return []
        return [json.loads(x) for x in self.path.read_text().splitlines() if x.strip()]
