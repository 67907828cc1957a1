"""Prometheus metrics of the PACS side (receiver, DICOMweb pull, results back, audit log).

Labels are bounded: a DIMSE status is one of :data:`STATUS_NAMES`, a site is a configured label,
an event and an outcome come from fixed lists. No UID, AE-supplied free text or case key is ever a label.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

__all__ = [
    "REGISTRY",
    "STATUS_NAMES",
    "DIMSE_RESPONSES",
    "ASSOCIATIONS",
    "SERIES_INGESTED",
    "INGEST_SECONDS",
    "CSTORE_STAGE_SECONDS",
    "AUDIT_EVENTS",
    "RESULTS_SENT",
    "render",
]

#: One private registry, so importing this module never touches the process-global one.
REGISTRY = CollectorRegistry(auto_describe=True)

#: The statuses the receiver answers (PS3.4 B.2.3), by name.
STATUS_NAMES = {
    0x0000: "success",
    0xA700: "out_of_resources",
    0xA900: "not_image",
    0xC210: "cannot_understand",
    0xC000: "cannot_process",
}

DIMSE_RESPONSES = Counter(
    "lungsearch_pacs_cstore_responses_total", "C-STORE responses by status", ["status", "site"], registry=REGISTRY
)
ASSOCIATIONS = Counter("lungsearch_pacs_associations_total", "associations by outcome", ["outcome"], registry=REGISTRY)
SERIES_INGESTED = Counter(
    "lungsearch_pacs_series_total", "assembled series by outcome", ["outcome", "site"], registry=REGISTRY
)
INGEST_SECONDS = Histogram(
    "lungsearch_pacs_series_ingest_seconds",
    "one series' Ingest call",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
    registry=REGISTRY,
)
CSTORE_STAGE_SECONDS = Histogram(
    "lungsearch_pacs_cstore_stage_seconds",
    "time inside the C-STORE handler by stage (decode, check, spool)",
    ["stage"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
    registry=REGISTRY,
)
AUDIT_EVENTS = Counter(
    "lungsearch_audit_events_total", "audit log lines written", ["event", "outcome"], registry=REGISTRY
)
RESULTS_SENT = Counter(
    "lungsearch_pacs_results_sent_total", "SR / SC objects sent back", ["kind", "outcome"], registry=REGISTRY
)


def render() -> bytes:
    """Prometheus text exposition of :data:`REGISTRY`."""
    return generate_latest(REGISTRY)
