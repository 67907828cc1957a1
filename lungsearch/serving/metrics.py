"""The serving metrics schema: every Prometheus metric the deployments export, in one place.

Names follow ``lungsearch_<subsystem>_<name>_<unit>``; counters end in ``_total``; latencies are
seconds with explicit buckets; labels are bounded (deployment, method, code, reason, profile,
version) and never carry a patient, study or case identifier (``_check_label`` refuses values
that look like one).

Each replica records into its own ``prometheus_client`` registry (rendered by
:meth:`ServingMetrics.render`, published to the cluster's collector actor and merged across every
replica of every deployment by :func:`merge_expositions` for the plain ``/metrics`` endpoint of
``lungsearch serve``: :mod:`lungsearch.serving.metrics_board`) and, inside Ray, mirrors every observation into
``ray.util.metrics`` so Ray's own metrics export (the port a ServiceMonitor scrapes) carries them
too. Ray prefixes application metrics with ``ray_`` there: ``lungsearch_serve_requests_total`` is
``ray_lungsearch_serve_requests_total`` on Ray's port (verified with Ray 2.60).

Example::

    m = ServingMetrics("gateway")
    with m.time("Search") as t:
        ...              # t.code = "NOT_FOUND" on failure
    text = m.render()    # Prometheus text exposition
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Iterable

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "ServingMetrics",
    "MetricSpec",
    "SCHEMA",
    "LATENCY_BUCKETS_S",
    "BATCH_BUCKETS",
    "merge_expositions",
    "CONTENT_TYPE",
    "PROCESS_FAMILIES",
]

log = logging.getLogger(__name__)

# No ``*_created`` companion series: they are outside the schema and double the exposition.
prometheus_client.disable_created_metrics()

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Request latency buckets, seconds (1 ms .. 60 s; CPU encoders take 10-500 ms).
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Batch-size buckets (items per @serve.batch call).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
#: Message size buckets, bytes (1 KiB .. 1 GiB).
SIZE_BUCKETS = tuple(float(1024 * 4**i) for i in range(11))
#: Cosine similarity buckets for retrieval quality (finer near 1, where good matches live).
SIMILARITY_BUCKETS = (-0.5, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 1.0)


@dataclass(frozen=True)
class MetricSpec:
    """One metric of the schema."""

    name: str
    kind: str  # "counter" | "histogram" | "gauge"
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


SCHEMA: dict[str, MetricSpec] = {
    s.name: s
    for s in (
        MetricSpec(
            "lungsearch_serve_requests_total",
            "counter",
            "Requests handled by a deployment, by method and final gRPC status code.",
            ("deployment", "method", "code"),
        ),
        MetricSpec(
            "lungsearch_serve_errors_total",
            "counter",
            "Failed requests by lungsearch.v1.ErrorReason.",
            ("deployment", "method", "reason"),
        ),
        MetricSpec(
            "lungsearch_serve_request_duration_seconds",
            "histogram",
            "Time a deployment spent on one request.",
            ("deployment", "method"),
            LATENCY_BUCKETS_S,
        ),
        MetricSpec(
            "lungsearch_gateway_request_size_bytes",
            "histogram",
            "Serialized size of requests reaching the gateway.",
            ("method",),
            SIZE_BUCKETS,
        ),
        MetricSpec(
            "lungsearch_encoding_batch_size_items",
            "histogram",
            "Studies per @serve.batch call of the encoding deployment.",
            ("profile",),
            BATCH_BUCKETS,
        ),
        MetricSpec(
            "lungsearch_encoding_batch_duration_seconds",
            "histogram",
            "Model time of one encoding batch.",
            ("profile",),
            LATENCY_BUCKETS_S,
        ),
        MetricSpec(
            "lungsearch_ranking_index_cases",
            "gauge",
            "Cases in the in-memory search index of a profile version.",
            ("profile", "version"),
        ),
        MetricSpec(
            "lungsearch_ranking_index_size_bytes",
            "gauge",
            "Memory held by the in-memory search index of a profile version.",
            ("profile", "version"),
        ),
        MetricSpec(
            "lungsearch_model_info",
            "gauge",
            "1 for each model version a deployment has loaded; live=1 marks the live one.",
            ("deployment", "profile", "version", "live"),
        ),
        MetricSpec(
            "lungsearch_model_load_failures_total",
            "counter",
            "Model loads that failed (the replica reports unhealthy with the reason).",
            ("deployment", "profile"),
        ),
        MetricSpec(
            "lungsearch_auth_failures_total",
            "counter",
            "Calls refused by bearer-token auth, by reason (UNAUTHENTICATED, PERMISSION_DENIED).",
            ("reason",),
        ),
        MetricSpec(
            "lungsearch_gateway_report_phi_removed_total",
            "counter",
            "PHI items removed from report text before storage, by category (lungsearch.data.report_deid).",
            ("category",),
        ),
        # Retrieval quality (lungsearch.serving.quality): site is an allow-listed label or "other".
        MetricSpec(
            "lungsearch_quality_best_similarity_cosine",
            "histogram",
            "Cosine similarity of the best result of a search.",
            ("profile", "site"),
            SIMILARITY_BUCKETS,
        ),
        MetricSpec(
            "lungsearch_quality_kth_similarity_cosine",
            "histogram",
            "Cosine similarity of the last (k-th) result of a search.",
            ("profile", "site"),
            SIMILARITY_BUCKETS,
        ),
        MetricSpec(
            "lungsearch_quality_low_similarity_queries_total",
            "counter",
            "Searches whose best result is below the profile's low-similarity threshold.",
            ("profile", "site"),
        ),
        MetricSpec(
            "lungsearch_quality_embedding_drift_cosine",
            "gauge",
            "Cosine distance of the running (EWMA) mean query embedding to the indexed gallery's centroid.",
            ("profile", "site"),
        ),
        MetricSpec(
            "lungsearch_quality_code_bits_psi",
            "gauge",
            "Population stability index of the query hash-code bits against the gallery (mean over bits).",
            ("profile", "site"),
        ),
    )
}

_LABEL_RE = re.compile(r"^[A-Za-z0-9_.@:+-]{0,64}$")
# A case key (32 hex), a DICOM UID (digits and dots) or anything long is refused as a label value.
_IDENTIFIER_RE = re.compile(r"^([0-9a-f]{24,}|[0-9]+(\.[0-9]+){3,})$")


def _check_label(name: str, value: str) -> str:
    value = str(value)
    if not _LABEL_RE.match(value) or _IDENTIFIER_RE.match(value):
        raise ValueError(f"metric label {name}: value refused (unbounded or identifier-like)")
    return value


class _Timer:
    def __init__(self, metrics: "ServingMetrics", method: str) -> None:
        self.metrics, self.method, self.code, self.reason = metrics, method, "OK", ""
        self.start = 0.0

    def __enter__(self) -> "_Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None and self.code == "OK":
            self.code, self.reason = "INTERNAL", "INTERNAL"
        self.metrics.observe_request(self.method, self.code, time.perf_counter() - self.start, reason=self.reason)


class ServingMetrics:
    """Metrics of one deployment replica.

    Args:
        deployment: "gateway", "encoding", "fusion", "hashing" or "ranking".
        registry: a private registry (default: a new one, so replicas and tests never collide).
        ray_export: also record into ``ray.util.metrics`` when running inside Ray.
        publish: inside a Serve replica, publish :meth:`render` to the cluster's metrics collector
            every few seconds (:mod:`lungsearch.serving.metrics_board`), so the ``/metrics``
            endpoint has every replica once; no-op outside a replica.
    """

    def __init__(
        self,
        deployment: str,
        *,
        registry: CollectorRegistry | None = None,
        ray_export: bool = True,
        publish: bool = True,
    ) -> None:
        self.deployment = _check_label("deployment", deployment)
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._prom: dict[str, object] = {}
        for spec in SCHEMA.values():
            kw = dict(registry=self.registry, labelnames=spec.labels)
            # prometheus_client appends _total itself for counters.
            if spec.kind == "counter":
                self._prom[spec.name] = Counter(spec.name.removesuffix("_total"), spec.help, **kw)
            elif spec.kind == "histogram":
                self._prom[spec.name] = Histogram(spec.name, spec.help, buckets=spec.buckets, **kw)
            else:
                self._prom[spec.name] = Gauge(spec.name, spec.help, **kw)
        self._ray: dict[str, object] = self._ray_metrics() if ray_export else {}
        self.publisher = None
        if publish:
            from lungsearch.serving.metrics_board import start_publisher

            self.publisher = start_publisher(self.render)

    @staticmethod
    def _ray_metrics() -> dict[str, object]:
        try:
            import ray
            from ray.util import metrics as rm
        except ImportError:
            return {}
        if not ray.is_initialized():
            return {}
        out: dict[str, object] = {}
        for spec in SCHEMA.values():
            try:
                if spec.kind == "counter":
                    out[spec.name] = rm.Counter(spec.name, description=spec.help, tag_keys=spec.labels)
                elif spec.kind == "histogram":
                    out[spec.name] = rm.Histogram(
                        spec.name, description=spec.help, boundaries=list(spec.buckets), tag_keys=spec.labels
                    )
                else:
                    out[spec.name] = rm.Gauge(spec.name, description=spec.help, tag_keys=spec.labels)
            except Exception:  # noqa: BLE001 - Ray's exporter is optional; the plain endpoint still works
                log.debug("ray metric %s not registered", spec.name, exc_info=True)
        return out

    def _record(self, name: str, value: float, **labels: str) -> None:
        spec = SCHEMA[name]
        if set(labels) != set(spec.labels):
            raise ValueError(f"{name}: labels {sorted(labels)} != schema {sorted(spec.labels)}")
        labels = {k: _check_label(k, v) for k, v in labels.items()}
        prom = self._prom[name].labels(**labels)
        if spec.kind == "counter":
            prom.inc(value)
        elif spec.kind == "histogram":
            prom.observe(value)
        else:
            prom.set(value)
        ray_metric = self._ray.get(name)
        if ray_metric is not None:
            try:
                if spec.kind == "counter":
                    ray_metric.inc(value, tags=labels)
                elif spec.kind == "histogram":
                    ray_metric.observe(value, tags=labels)
                else:
                    ray_metric.set(value, tags=labels)
            except Exception:  # noqa: BLE001 - never fail a request because of metrics
                log.debug("ray metric %s failed", name, exc_info=True)

    # --- the recording API the deployments use -------------------------------------------------
    def time(self, method: str) -> _Timer:
        """Context manager timing one request; set ``.code``/``.reason`` on failure."""
        return _Timer(self, method)

    def observe_request(self, method: str, code: str, seconds: float, *, reason: str = "") -> None:
        self._record("lungsearch_serve_requests_total", 1, deployment=self.deployment, method=method, code=code)
        self._record("lungsearch_serve_request_duration_seconds", seconds, deployment=self.deployment, method=method)
        if code != "OK":
            self._record(
                "lungsearch_serve_errors_total", 1, deployment=self.deployment, method=method, reason=reason or code
            )

    def observe_request_size(self, method: str, nbytes: int) -> None:
        self._record("lungsearch_gateway_request_size_bytes", float(nbytes), method=method)

    def observe_batch(self, profile: str, size: int, seconds: float) -> None:
        self._record("lungsearch_encoding_batch_size_items", float(size), profile=profile)
        self._record("lungsearch_encoding_batch_duration_seconds", seconds, profile=profile)

    def set_index(self, profile: str, version: str, cases: int, nbytes: int) -> None:
        self._record("lungsearch_ranking_index_cases", float(cases), profile=profile, version=version)
        self._record("lungsearch_ranking_index_size_bytes", float(nbytes), profile=profile, version=version)

    def set_model(self, profile: str, version: str, *, live: bool) -> None:
        self._record(
            "lungsearch_model_info",
            1.0,
            deployment=self.deployment,
            profile=profile,
            version=version,
            live="1" if live else "0",
        )

    def clear_models(self) -> None:
        """Forget model_info series (before re-publishing after a live switch)."""
        self._prom["lungsearch_model_info"].clear()

    def model_load_failed(self, profile: str) -> None:
        self._record("lungsearch_model_load_failures_total", 1, deployment=self.deployment, profile=profile)

    def auth_failure(self, reason: str) -> None:
        self._record("lungsearch_auth_failures_total", 1, reason=reason)

    def observe_report_scrub(self, counts: "dict[str, int]") -> None:
        """Count what :func:`lungsearch.data.report_deid.scrub_report` removed (categories only, never values)."""
        for category, n in counts.items():
            if n:
                self._record("lungsearch_gateway_report_phi_removed_total", float(n), category=category)

    def observe_quality(
        self,
        profile: str,
        site: str,
        *,
        top1: float | None,
        topk: float | None,
        low: bool,
        drift: float | None,
        psi: float | None,
    ) -> None:
        """Record one search's quality signals (see :class:`lungsearch.serving.quality.QualityMonitor`)."""
        if top1 is not None:
            self._record("lungsearch_quality_best_similarity_cosine", top1, profile=profile, site=site)
        if topk is not None:
            self._record("lungsearch_quality_kth_similarity_cosine", topk, profile=profile, site=site)
        if low:
            self._record("lungsearch_quality_low_similarity_queries_total", 1, profile=profile, site=site)
        if drift is not None:
            self._record("lungsearch_quality_embedding_drift_cosine", drift, profile=profile, site=site)
        if psi is not None:
            self._record("lungsearch_quality_code_bits_psi", psi, profile=profile, site=site)

    def render(self) -> str:
        """This replica's metrics as Prometheus text exposition (format 0.0.4), with the process's
        library counters (:data:`PROCESS_FAMILIES`) after them."""
        return generate_latest(self.registry).decode() + _process_exposition()


#: Counters that library code keeps in ``prometheus_client``'s default registry, one set per process
#: (the lung-mask outcomes and the radiomics whole-thorax fallback of ``lungsearch.data.masks``): every
#: replica's exposition carries its own process's, and :func:`merge_expositions` sums them across
#: replicas, so the ``/metrics`` endpoint counts every fallback wherever the mask ran.
PROCESS_FAMILIES = ("lungsearch_data_lung_masks", "lungsearch_data_radiomics_roi_fallbacks")


def _process_exposition() -> str:
    import lungsearch.data.masks._metrics  # noqa: F401 - registers the families (zero until counted)

    fams = [f for f in prometheus_client.REGISTRY.collect() if f.name in PROCESS_FAMILIES]
    return generate_latest(_Families(fams)).decode() if fams else ""


class _Families:
    """A registry-like object holding parsed families, for ``generate_latest``."""

    def __init__(self, families: Iterable) -> None:
        self._families = list(families)

    def collect(self):
        return iter(self._families)


def merge_expositions(texts: Iterable[str]) -> str:
    """Merge several replicas' expositions into one valid exposition.

    Families with the same name are combined (their samples differ by the ``deployment`` label);
    an exact duplicate sample (same name and labels, e.g. two replicas of one deployment both
    reporting ``auth_failures``) is summed for counters and histograms and kept once for gauges.
    """
    merged: dict[str, object] = {}
    values: dict[str, dict[tuple, object]] = {}
    for text in texts:
        for fam in text_string_to_metric_families(text):
            if fam.name not in merged:
                merged[fam.name] = fam
                values[fam.name] = {}
                samples = list(fam.samples)
                fam.samples = []
            else:
                samples = list(fam.samples)
            target = merged[fam.name]
            seen = values[fam.name]
            for s in samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                if key in seen:
                    old = seen[key]
                    if target.type in ("counter", "histogram", "summary") and not s.name.endswith("_created"):
                        seen[key] = old._replace(value=old.value + s.value)
                    continue
                seen[key] = s
    for name, fam in merged.items():
        fam.samples = list(values[name].values())
    return generate_latest(_Families(merged.values())).decode()
