"""The DICOM receiver: a pynetdicom C-STORE (and C-ECHO) SCP that assembles series and ingests them.

It is a *client* of the platform, like MONAI Deploy's Informatics Gateway: every assembled series
goes through the SDK's ``Ingest`` (so the gateway's de-identification, limits and the one ingest
path apply unchanged). What it adds is DICOM-side:

* **who may push**: calling AE titles on an allow-list (``callers``), each with a site label and
  a profile per modality kind; anyone else's association is rejected (pynetdicom's
  ``require_calling_aet``: A-ASSOCIATE-RJ, "calling AE title not recognised");
* **what may be pushed**: only image storage SOP classes lungsearch ingests (CT, CR, DX, MR) with
  transfer syntaxes this process can decode are offered, so SR, RT and waveform objects are
  refused at presentation-context negotiation;
* **the right DIMSE status** (PS3.4 B.2.3) for each instance: 0x0000 stored; 0xA900 the data set
  does not match its SOP class or is not an image (an SR sent under a CT context); 0xC210 cannot
  understand (undecodable header or pixels, truncated data); 0xC000 no profile for this modality;
  0xA700 out of resources (per-association instance/byte/time limits, spool full, disk errors);
* **durability**: an instance is fsynced into the :class:`~lungsearch.pacs.spool.Spool` before its
  success status is sent; a restart recovers everything acknowledged;
* **series assembly**: instances are grouped by SeriesInstanceUID; a series is ingested when the
  association that sent it is released, or (after a restart, or for a series sent over several
  associations) once it has been quiet ``settle_s``. A series is ingested whole or not at all:
  one Ingest call carries every instance, and a failed call leaves nothing in the platform. An
  association the peer aborts has its instances dropped (``discard_aborted``): the sender knows
  the transfer failed and re-sends.

Logs carry only keyed ids (``spool.key``), AE titles, status names and counts: no UID, no name.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lungsearch.errors import InvalidImageError, LimitExceededError, LungsearchError, PHIRejectedError
from lungsearch.pacs import metrics
from lungsearch.pacs.audit import AuditLog
from lungsearch.pacs.config import MODALITY_KINDS, Caller, ReceiverConfig
from lungsearch.pacs.spool import Spool, SpooledSeries

__all__ = [
    "Receiver",
    "IMAGE_SOP_CLASSES",
    "SUCCESS",
    "OUT_OF_RESOURCES",
    "NOT_IMAGE",
    "CANNOT_UNDERSTAND",
    "CANNOT_PROCESS",
    "supported_transfer_syntaxes",
    "sdk_ingestor",
]

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
NOT_IMAGE = 0xA900
CANNOT_UNDERSTAND = 0xC210
CANNOT_PROCESS = 0xC000

#: Image storage SOP classes lungsearch ingests (the modalities lungsearch.data.io decodes).
IMAGE_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
)

# lungsearch.data.io reason codes -> DIMSE status.
_NOT_IMAGE_CODES = {"not_image", "no_pixel_data", "unsupported_modality"}


def supported_transfer_syntaxes() -> list[str]:
    """Transfer syntaxes whose pixel data pydicom can decode in this environment (asked, not assumed)."""
    import pydicom.uid
    from pydicom.pixels import get_decoder

    out = []
    for uid in pydicom.uid.AllTransferSyntaxes:
        try:
            if get_decoder(uid).is_available:
                out.append(str(uid))
        except NotImplementedError:
            continue
    return out


@dataclass
class _Assoc:
    caller: Caller
    started: float
    instances: int = 0
    nbytes: int = 0
    files: list[Path] = field(default_factory=list)
    series: set[str] = field(default_factory=set)


#: ``ingestor(series, caller_ae, profile) -> (case_key, "profile@version")``; raises on failure.
Ingestor = Callable[[SpooledSeries, str], tuple[str, str]]


def sdk_ingestor(config: ReceiverConfig, client: Any = None) -> Ingestor:
    """The default ingestor: the SDK's ``ingest``/``ingest_series`` against ``config.target``."""
    from lungsearch.client import LungSearchClient

    if client is None:
        client = LungSearchClient(
            config.target, token=config.token(), ca_file=config.target_ca_file, timeout=config.ingest_timeout_s
        )

    def ingest(series: SpooledSeries, profile: str) -> tuple[str, str]:
        files = [str(f) for f in series.files]
        if len(files) == 1:
            res = client.ingest(files[0], model=profile)
        else:
            res = client.ingest_series(files, model=profile)
        return res.case_key, f"{res.model.profile}@{res.model.version}"

    ingest.client = client  # type: ignore[attr-defined]
    return ingest


class Receiver:
    """The C-STORE SCP plus its series flusher. ``start()`` returns once it listens; ``stop()`` ends it.

    Args:
        config: a :class:`ReceiverConfig`.
        ingestor: how a settled series reaches the platform (default :func:`sdk_ingestor`).
        on_ingested: called ``(series, profile, case_key, model)`` after each successful ingest
            (results back into the PACS hang here); its failures are logged, never raised.
    """

    def __init__(
        self,
        config: ReceiverConfig,
        *,
        ingestor: Ingestor | None = None,
        on_ingested: Callable[[SpooledSeries, str, str, str], None] | None = None,
    ) -> None:
        self.config = config
        self.spool = Spool(config.spool_dir)
        self.audit = AuditLog(config.audit_log)
        self._ingestor = ingestor
        self._on_ingested = on_ingested
        self._assocs: dict[int, _Assoc] = {}
        self._ready: set[str] = set()  # series released by their association: ingest now
        self._retry: dict[str, tuple[int, float]] = {}  # series id -> (attempts, not before)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server = None
        self._flusher: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pacs-ingest")
        self._writer = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pacs-spool")
        self._inflight: set[str] = set()
        self._spool_bytes = 0
        self._spool_checked = 0.0
        self.port: int | None = None

    # ---- lifecycle ----------------------------------------------------------------------------
    def _ae(self):
        from pynetdicom import AE, evt

        cfg = self.config
        ae = AE(ae_title=cfg.ae_title)
        ae.network_timeout = cfg.network_timeout_s
        ae.acse_timeout = min(30.0, cfg.network_timeout_s)
        ae.dimse_timeout = cfg.network_timeout_s
        ae.maximum_associations = cfg.max_associations
        # Unknown calling AE titles are rejected at association (A-ASSOCIATE-RJ, reason 3).
        ae.require_calling_aet = [c.ae_title for c in cfg.callers]
        syntaxes = supported_transfer_syntaxes()
        for uid in IMAGE_SOP_CLASSES:
            ae.add_supported_context(uid, syntaxes)
        ae.add_supported_context("1.2.840.10008.1.1")  # Verification (C-ECHO)
        handlers = [
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        return ae, handlers

    def _ssl_context(self) -> ssl.SSLContext | None:
        tls = self.config.tls
        if tls is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # PS3.15 BCP 195 profile: TLS 1.2 or later
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.ca_file:
            ctx.load_verify_locations(tls.ca_file)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def start(self) -> "Receiver":
        # pynetdicom's INFO/DEBUG lines dump every DIMSE message, SOP Instance UIDs included (seen in
        # tests/pacs PHI test): the receiver keeps that logger at WARNING, whatever the root level.
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        recovered = self.spool.recover()
        waiting = len(self.spool.waiting())
        if recovered or waiting:
            log.info("spool: %d claimed series recovered, %d series waiting", recovered, waiting)
        if self._ingestor is None:
            self._ingestor = sdk_ingestor(self.config)
        ae, handlers = self._ae()
        self._server = ae.start_server(
            (self.config.host, self.config.port), block=False, evt_handlers=handlers, ssl_context=self._ssl_context()
        )
        self.port = self._server.server_address[1]
        self._flusher = threading.Thread(target=self._flush_loop, name="pacs-flusher", daemon=True)
        self._flusher.start()
        log.info(
            "DICOM receiver %s listening on %s:%d%s",
            self.config.ae_title,
            self.config.host,
            self.port,
            " (TLS)" if self.config.tls else "",
        )
        return self

    def stop(self, *, drain: bool = False, timeout: float = 30.0) -> None:
        """Stop listening. With ``drain``, first ingest every waiting series (bounded by ``timeout``)."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if drain:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and (self.spool.waiting() or self._inflight):
                self._flush_once(force=True)
                time.sleep(0.05)
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join(5)
        self._pool.shutdown(wait=True, cancel_futures=False)
        self._writer.shutdown(wait=True)

    def __enter__(self) -> "Receiver":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- association events -------------------------------------------------------------------
    def _on_accepted(self, event) -> None:
        caller = self.config.caller(event.assoc.requestor.ae_title)
        with self._lock:
            self._assocs[id(event.assoc)] = _Assoc(caller=caller, started=time.monotonic())  # type: ignore[arg-type]
        metrics.ASSOCIATIONS.labels(outcome="accepted").inc()

    def _on_rejected(self, event) -> None:
        metrics.ASSOCIATIONS.labels(outcome="rejected").inc()
        # The AE title is what the peer sent: logged only when it looks like one (no free text in logs).
        ae = str(event.assoc.requestor.ae_title or "").strip()
        self.audit.record(
            "association",
            "rejected_unknown_ae",
            who=f"ae:{ae}" if ae.replace("_", "").replace("-", "").isalnum() and len(ae) <= 16 else "ae:?",
        )

    def _on_released(self, event) -> None:
        with self._lock:
            st = self._assocs.pop(id(event.assoc), None)
            if st is not None:
                self._ready |= st.series
        metrics.ASSOCIATIONS.labels(outcome="released").inc()

    def _on_aborted(self, event) -> None:
        with self._lock:
            st = self._assocs.pop(id(event.assoc), None)
        metrics.ASSOCIATIONS.labels(outcome="aborted").inc()
        if st is None or not st.files:
            return
        if self.config.discard_aborted:
            gone = self.spool.discard(st.files)
            log.info("association from %s aborted: %d unclaimed instance(s) discarded", st.caller.ae_title, gone)
            self.audit.record(
                "association", "aborted_discarded", who=f"ae:{st.caller.ae_title}", site=st.caller.site, instances=gone
            )
        else:
            with self._lock:
                self._ready |= st.series

    def _on_echo(self, event) -> int:
        return SUCCESS

    # ---- C-STORE ------------------------------------------------------------------------------
    def _status(self, status: int, site: str, why: str = "") -> int:
        metrics.DIMSE_RESPONSES.labels(status=metrics.STATUS_NAMES.get(status, "other"), site=site).inc()
        if status != SUCCESS:
            log.info(
                "C-STORE refused: %s (0x%04X)%s",
                metrics.STATUS_NAMES.get(status, "other"),
                status,
                f": {why}" if why else "",
            )
        return status

    def _spool_full(self, incoming: int) -> bool:
        now = time.monotonic()
        if now - self._spool_checked > 2.0:  # a directory walk per instance would cost more than the write
            self._spool_bytes, self._spool_checked = self.spool.bytes_used(), now
        self._spool_bytes += incoming
        return self._spool_bytes > self.config.max_spool_bytes

    def _on_store(self, event) -> int:
        with self._lock:
            st = self._assocs.get(id(event.assoc))
        if st is None:  # accepted before our handler saw it: cannot happen with require_calling_aet, be safe
            return self._status(OUT_OF_RESOURCES, "unknown", "association state missing")
        raw = event.request.DataSet
        size = raw.getbuffer().nbytes if hasattr(raw, "getbuffer") else 0

        def decode():
            ds = event.dataset
            ds.file_meta = event.file_meta
            return ds

        return self.store_instance(
            st, size, decode, str(event.request.AffectedSOPClassUID), lambda: event.encoded_dataset(include_meta=True)
        )

    def store_instance(
        self,
        st: _Assoc,
        size: int,
        decode: Callable[[], Any],
        declared_sop_class: str | None,
        encoded: Callable[[], bytes],
    ) -> int:
        """Validate, spool and account one instance for the sender ``st``; returns the DIMSE status.

        Shared by C-STORE and STOW-RS (``declared_sop_class`` None: the data set's own is taken).
        """
        site, lim = st.caller.site, self.config.limits
        if time.monotonic() - st.started > lim.max_seconds:
            return self._status(OUT_OF_RESOURCES, site, "association time limit")
        if st.instances + 1 > lim.max_instances or st.nbytes + size > lim.max_bytes:
            return self._status(OUT_OF_RESOURCES, site, "association instance/byte limit")
        if size > lim.max_instance_bytes:
            return self._status(OUT_OF_RESOURCES, site, "instance over the size limit")
        t0 = time.perf_counter()
        try:
            ds = decode()
            series_uid = str(ds.get("SeriesInstanceUID", "") or "")
            sop_uid = str(ds.get("SOPInstanceUID", "") or "")
            sop_class = str(ds.get("SOPClassUID", "") or "")
            modality = str(ds.get("Modality", "") or "").strip().upper()
        except Exception:  # noqa: BLE001 - any decoding failure of hostile bytes is "cannot understand"
            return self._status(CANNOT_UNDERSTAND, site, "data set cannot be decoded")
        if sop_class != (declared_sop_class or sop_class) or not series_uid or not sop_uid:
            return self._status(NOT_IMAGE, site, "data set does not match its SOP class")
        if sop_class not in IMAGE_SOP_CLASSES:  # STOW-RS has no negotiation: refuse non-image classes here
            return self._status(NOT_IMAGE, site, "not an image storage SOP class")
        try:
            data = encoded()
        except Exception:  # noqa: BLE001
            return self._status(CANNOT_UNDERSTAND, site, "data set cannot be encoded")
        t1 = time.perf_counter()
        metrics.CSTORE_STAGE_SECONDS.labels(stage="decode").observe(t1 - t0)
        kind = MODALITY_KINDS.get(modality)
        profile = st.caller.profiles.get(kind) if kind else None  # type: ignore[arg-type]
        writer = None
        if profile is not None:
            if self._spool_full(len(data)):
                return self._status(OUT_OF_RESOURCES, site, "spool full")
            meta = {"caller": st.caller.ae_title, "site": site, "profile": profile, "kind": kind}
            # The fsynced write (I/O wait) overlaps the pixel check (CPU); a refused instance is removed again.
            writer = self._writer.submit(self._timed_put, series_uid, sop_uid, data, meta)
        status = self._check_pixels(data, site)
        metrics.CSTORE_STAGE_SECONDS.labels(stage="check").observe(time.perf_counter() - t1)
        if writer is None:
            return status if status != SUCCESS else self._status(CANNOT_PROCESS, site, "no profile for this modality")
        try:
            path = writer.result()
        except OSError as exc:  # disk full, permissions: the instance is not stored, say so
            return (
                status
                if status != SUCCESS
                else self._status(OUT_OF_RESOURCES, site, f"spool write failed ({type(exc).__name__})")
            )
        if status != SUCCESS:
            self.spool.discard([path])
            return status
        with self._lock:
            st.instances += 1
            st.nbytes += size
            st.files.append(path)
            st.series.add(self.spool.key(series_uid))
        return self._status(SUCCESS, site)

    def _timed_put(self, series_uid: str, sop_uid: str, data: bytes, meta: dict) -> Path:
        t = time.perf_counter()
        path = self.spool.put(series_uid, sop_uid, data, meta)
        metrics.CSTORE_STAGE_SECONDS.labels(stage="spool").observe(time.perf_counter() - t)
        return path

    def _check_pixels(self, data: bytes, site: str) -> int:
        """Decode the instance the way the platform will (lungsearch.data.io), so a bad one is refused now."""
        from lungsearch.data.io import read_image

        try:
            read_image(data, fmt="dicom", allow_burned_in=True)  # the platform decides on burned-in PHI
        except InvalidImageError as exc:
            return self._status(NOT_IMAGE if exc.code in _NOT_IMAGE_CODES else CANNOT_UNDERSTAND, site, exc.code)
        except LimitExceededError as exc:
            return self._status(OUT_OF_RESOURCES, site, exc.code or "limit")
        except PHIRejectedError:
            return self._status(CANNOT_PROCESS, site, "phi_rejected")
        except Exception as exc:  # noqa: BLE001 - decoder crashes on hostile input
            return self._status(CANNOT_UNDERSTAND, site, type(exc).__name__)
        return SUCCESS

    def open_sender(self, caller: Caller) -> _Assoc:
        """Per-request state for a front door without associations (STOW-RS): limits count per request."""
        return _Assoc(caller=caller, started=time.monotonic())

    def close_sender(self, st: _Assoc) -> None:
        """The request is complete: its series are ingested now (as on an association's release)."""
        with self._lock:
            self._ready |= st.series

    # ---- series flushing ----------------------------------------------------------------------
    def _busy(self) -> set[str]:
        with self._lock:
            return set().union(*(a.series for a in self._assocs.values())) if self._assocs else set()

    def _flush_once(self, *, force: bool = False) -> int:
        now_wall, now = time.time(), time.monotonic()
        busy = self._busy()
        started = 0
        for s in self.spool.waiting():
            sid = s.series_id
            if sid in self._inflight or (sid in busy and not force):
                continue
            attempts, not_before = self._retry.get(sid, (0, 0.0))
            if now < not_before:
                continue
            with self._lock:
                ready = sid in self._ready
            if not (force or ready or now_wall - s.last_write >= self.config.settle_s):
                continue
            with self._lock:
                self._ready.discard(sid)
            self._inflight.add(sid)
            started += 1
            self._pool.submit(self._ingest, sid, attempts)
        return started

    def _flush_loop(self) -> None:
        tick = max(0.02, min(0.25, self.config.settle_s / 4))
        last_expire = 0.0
        while not self._stop.wait(tick):
            try:
                self._flush_once()
                if time.monotonic() - last_expire > 30:
                    self.spool.expire_done(self.config.linger_s)
                    last_expire = time.monotonic()
            except Exception:  # noqa: BLE001 - the flusher must outlive any one bad series
                log.exception("series flusher iteration failed")

    def _ingest(self, sid: str, attempts: int) -> None:
        try:
            series = self.spool.claim(sid)
            if series is None:
                return
            self._ingest_claimed(series, attempts)
        except Exception:  # noqa: BLE001
            log.exception("series ingest crashed")
        finally:
            self._inflight.discard(sid)

    def _ingest_claimed(self, series: SpooledSeries, attempts: int) -> None:
        from lungsearch.client import LungSearchError

        meta = series.meta
        who, site, profile = f"ae:{meta.get('caller', '?')}", meta.get("site", "default"), meta.get("profile", "")
        t0 = time.perf_counter()
        try:
            case_key, model = self._ingestor(series, profile)  # type: ignore[misc]
        except (LungSearchError, LungsearchError, OSError) as exc:
            retriable = bool(getattr(exc, "retriable", False)) or type(exc).__name__ in (
                "Unavailable",
                "DeadlineExceeded",
            )
            reason = str(getattr(exc, "reason", "") or type(exc).__name__).lower()[:30]
            if retriable and attempts + 1 < self.config.max_ingest_attempts:
                self._retry[series.series_id] = (attempts + 1, time.monotonic() + min(60.0, 0.5 * 2**attempts))
                self.spool.unclaim(series)
                log.warning("series %s: ingest failed (%s), retry %d", series.series_id[:12], reason, attempts + 1)
                return
            self._retry.pop(series.series_id, None)
            self.spool.finish(series, keep=False)
            outcome = ("failed_" if retriable else "rejected_") + "".join(c if c.isalnum() else "_" for c in reason)
            metrics.SERIES_INGESTED.labels(outcome="rejected" if not retriable else "failed", site=site).inc()
            log.warning(
                "series %s: ingest %s; %d instance(s) dropped, nothing stored",
                series.series_id[:12],
                outcome,
                len(series.files),
            )
            self.audit.record(
                "ingest",
                outcome[:40],
                who=who,
                site=site,
                model=profile,
                instances=len(series.files),
                series=series.series_id,
            )
            return
        metrics.INGEST_SECONDS.observe(time.perf_counter() - t0)
        metrics.SERIES_INGESTED.labels(outcome="ok", site=site).inc()
        self._retry.pop(series.series_id, None)
        self.audit.record(
            "ingest",
            "ok",
            who=who,
            site=site,
            model=model,
            case_key=case_key,
            instances=len(series.files),
            series=series.series_id,
        )
        log.info(
            "series %s: %d instance(s) ingested as case %s (%s)",
            series.series_id[:12],
            len(series.files),
            case_key[:12],
            model,
        )
        if self._on_ingested is not None:
            try:
                self._on_ingested(series, profile, case_key, model)
            except Exception as exc:  # noqa: BLE001 - results back are best effort; the ingest stands
                log.warning("results back failed (%s)", type(exc).__name__)
        self.spool.finish(series, keep=self.config.linger_s > 0)

    # ---- introspection ------------------------------------------------------------------------
    def pending(self) -> int:
        """Series waiting or being ingested."""
        return len(self.spool.waiting()) + len(self._inflight)
