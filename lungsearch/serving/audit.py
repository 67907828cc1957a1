"""The gateway's audit trail: one line in the append-only audit log (``lungsearch.pacs.audit``, the
same file format and checks as the DICOM receiver's) for every external call that reads or writes
cases: who (the bearer token's name, ``local`` in insecure local mode), when, which keyed case or
how many hits, which model version, and the outcome (``ok`` or the error reason, lower-cased).

Only identifier-shaped values are written (the log refuses anything else), so no report text,
file name or request field can reach it. Calls between deployments (handle calls, no gRPC
context) are not audited: they are the platform's own work on behalf of an audited call.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

__all__ = ["AUDITED", "GatewayAudit", "audit_fields"]

log = logging.getLogger(__name__)

#: RPC -> audit event (lungsearch.pacs.audit.EVENTS). The rest (health, listing models, the
#: internal services forwarded for operators) carries no case.
AUDITED = {
    "Ingest": "ingest",
    "IngestStream": "ingest",
    "Search": "search",
    "Classify": "classify",
    "Explain": "explain",
    "ExplainMatch": "explain",
    "GetCase": "get_case",
    "DeleteCase": "delete_case",
    "ActivateModel": "activate",
}


def _model(ref: Any) -> str | None:
    if ref is None or not getattr(ref, "profile", ""):
        return None
    return f"{ref.profile}@{ref.version}" if ref.version else ref.profile


def audit_fields(method: str, request: Any, response: Any) -> dict[str, Any]:
    """The identifier-shaped facts of one call: the model (as answered, else as asked), the case
    key (ingest, get, delete, explain-match) and the number of hits or images."""
    fields: dict[str, Any] = {"model": _model(getattr(response, "model", None)) if response is not None else None}
    if fields["model"] is None:
        fields["model"] = _model(getattr(request, "model", None))
    if method in ("Ingest", "IngestStream"):
        fields["case_key"] = getattr(response, "case_key", "") or None
        images = getattr(request, "images", None)
        fields["images"] = len(images) if images is not None else None
    elif method in ("GetCase", "DeleteCase", "ExplainMatch"):
        fields["case_key"] = getattr(request, "case_key", "") or None
    elif method == "Search" and response is not None:
        fields["hits"] = len(response.hits)
        fields["top_k"] = int(getattr(request, "top_k", 0) or 0) or None
    elif method == "ActivateModel" and response is not None:
        fields["model"] = _model(getattr(response, "live", None)) or fields["model"]
    return fields


class GatewayAudit:
    """The gateway's audit writer over one :class:`~lungsearch.pacs.audit.AuditLog` file (several
    replicas append to the same file safely: one ``write`` under ``flock`` per line)."""

    def __init__(self, path: str | Path) -> None:
        from lungsearch.pacs.audit import AuditLog

        self.log = AuditLog(path)

    async def record(self, method: str, who: str, outcome: str, request: Any, response: Any) -> None:
        """Write the call's line (in a thread: the log fsyncs). A failure to write is logged and
        counted by the log's metric labels, never raised into the call it describes."""
        event = AUDITED.get(method)
        if event is None:
            return
        try:
            fields = audit_fields(method, request, response)
            await asyncio.to_thread(self.log.record, event, outcome, who=who, **fields)
        except Exception as exc:  # noqa: BLE001 - see the docstring; no value of the call is logged
            log.warning("audit line for %s not written: %s", method, type(exc).__name__)
