"""The lungsearch Python SDK: a typed gRPC client for ingest, search, classify and explain.

Needs only ``grpcio`` and ``protobuf`` (no NumPy, torch or Ray): ``pip install lungsearch`` without
extras is enough to talk to a lungsearch server from a notebook or a PACS-side script.

Example::

    from lungsearch.client import LungSearchClient, Filter

    with LungSearchClient("localhost:9000", token="…", timeout=10) as client:
        print(client.health().status)                      # SERVING
        key = client.ingest("cxr.png", report="Small left effusion.", labels=["Effusion"]).case_key
        client.ingest_series("ct-0001/", labels=["ggo"], model="ct-ild")
        for hit in client.search(image="query.png", top_k=5, filters=Filter(modality="cxr")):
            print(hit.rank, f"{hit.score:.3f}", hit.case.labels, hit.case.report_excerpt[:60])
        client.explain(image="query.png").save("heatmap.png")

Every method takes a keyword-only ``timeout`` (seconds, retries included). Failures raise
subclasses of :class:`LungSearchError` named after the gRPC status (``InvalidArgument``,
``NotFound``, ``Unauthenticated``, ``PermissionDenied``, ``ResourceExhausted``, ``Unavailable``,
``DeadlineExceeded``, ``Internal``) carrying the server's details and its ``ErrorDetail``.
Only UNAVAILABLE and retriable RESOURCE_EXHAUSTED are retried (see :class:`RetryPolicy`).
See docs/sdk.md.
"""

from lungsearch.client._async import AsyncLungSearchClient
from lungsearch.client._base import DEFAULT_OPTIONS, MAX_MESSAGE_BYTES
from lungsearch.client._errors import (
    ERROR_METADATA_KEY,
    DeadlineExceeded,
    ErrorDetail,
    Internal,
    InvalidArgument,
    LungSearchError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    error_from_rpc,
)
from lungsearch.client._requests import CHUNK_BYTES, STREAM_THRESHOLD_BYTES
from lungsearch.client._retry import NO_RETRY, RetryPolicy
from lungsearch.client._sync import LungSearchClient
from lungsearch.client._types import (
    ActivateResult,
    Case,
    Classification,
    ExplainResult,
    Filter,
    HealthStatus,
    Image,
    IngestResult,
    MatchExplanation,
    ModelInfo,
    ModelRef,
    RadiomicsRoi,
    SearchHit,
    SearchResult,
    SharedPhrase,
)

__all__ = [
    "LungSearchClient",
    "AsyncLungSearchClient",
    "RetryPolicy",
    "NO_RETRY",
    "DEFAULT_OPTIONS",
    "MAX_MESSAGE_BYTES",
    "CHUNK_BYTES",
    "STREAM_THRESHOLD_BYTES",
    # inputs
    "Image",
    "Filter",
    "ModelRef",
    # results
    "Case",
    "SearchHit",
    "SearchResult",
    "Classification",
    "ExplainResult",
    "MatchExplanation",
    "SharedPhrase",
    "ModelInfo",
    "IngestResult",
    "ActivateResult",
    "HealthStatus",
    "RadiomicsRoi",
    # errors
    "LungSearchError",
    "InvalidArgument",
    "NotFound",
    "Unauthenticated",
    "PermissionDenied",
    "ResourceExhausted",
    "Unavailable",
    "DeadlineExceeded",
    "Internal",
    "ErrorDetail",
    "ERROR_METADATA_KEY",
    "error_from_rpc",
]
