"""Results back into the PACS: a DICOM Comprehensive SR (highdicom) listing the similar prior cases
and the classification, plus the Grad-CAM overlay as a Secondary Capture image, both in the
queried study; sent by C-STORE (pynetdicom SCU) or STOW-RS (dicomweb-client).

The SR's content tree (``docs/pacs.md`` describes it in words)::

    CONTAINER  Similar case retrieval report                       (99LSRCH, LS-0001)
      HAS OBS CONTEXT  TEXT  Algorithm Name = lungsearch <profile>  (DCM, 111001)
      HAS OBS CONTEXT  TEXT  Algorithm Version = <model version>    (DCM, 111003)
      CONTAINS  TEXT  Data provenance = synthetic phantom data | real data   (99LSRCH, LS-0002)
      CONTAINS  CONTAINER  Classification                           (99LSRCH, LS-0010)
        CONTAINS  CODE  Predicted label = <top label>               (99LSRCH, LS-0011)
        CONTAINS  CONTAINER  Class probability  (one per label)     (99LSRCH, LS-0012)
          CONTAINS  CODE  Finding = <label>                         (DCM, 121071)
          CONTAINS  NUM   Probability = p  {1}                      (99LSRCH, LS-0013)
      CONTAINS  CONTAINER  Similar cases                            (99LSRCH, LS-0020)
        CONTAINS  CONTAINER  Similar case  (one per hit, best first)(99LSRCH, LS-0021)
          CONTAINS  NUM   Rank = n {1}                              (99LSRCH, LS-0022)
          CONTAINS  TEXT  Case key = <keyed hash>                   (99LSRCH, LS-0023)
          CONTAINS  TEXT  Accession Number = <site's number>        (DCM, 121022)   where mapped
          CONTAINS  NUM   Similarity = s {1}                        (99LSRCH, LS-0024)
          CONTAINS  CODE  Finding = <label>  (one per label)        (DCM, 121071)
      CONTAINS  IMAGE  Grad-CAM overlay -> the Secondary Capture    (99LSRCH, LS-0030)

Codes under ``99LSRCH`` are private (PS3.16 8.2 allows a "99" coding scheme); the DCM ones are standard.
Case keys are the platform's keyed hashes, never patient identifiers; accession numbers appear only
when the site supplies a key -> accession mapping (``accession_for``), i.e. the site maps back.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = [
    "Analysis",
    "analyse",
    "build_sr",
    "build_sc",
    "build_results",
    "send_dimse",
    "send_stow",
    "report_back",
    "results_hook",
    "SCHEME",
]

log = logging.getLogger(__name__)

SCHEME = "99LSRCH"
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902


def _quiet_highdicom() -> None:
    # highdicom logs 'copy Patient-related attributes from dataset "<SOP Instance UID>"' at INFO
    # (seen in tests/pacs/test_end_to_end.py's PHI grep): keep its logger at WARNING.
    logging.getLogger("highdicom").setLevel(logging.WARNING)


def _code(value: str, meaning: str, scheme: str = SCHEME):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning[:64])


def _label_code(label: str):
    # CodeValue is SH (16 characters): a label's code is its short form, its meaning the label itself.
    value = "".join(c for c in label.upper() if c.isalnum())[:12] or "UNKNOWN"
    return _code(f"L-{value}", label)


@dataclass(frozen=True)
class Analysis:
    """What the platform said about a query study (SDK results; any of the three may be missing)."""

    profile: str
    version: str
    search: Any = None  # lungsearch.client.SearchResult
    classification: Any = None  # lungsearch.client.Classification
    explain: Any = None  # lungsearch.client.ExplainResult
    synthetic: bool | None = None


def analyse(
    client: Any,
    files: Sequence[str | Path],
    profile: str,
    *,
    top_k: int = 5,
    exclude_key: str | None = None,
    timeout: float | None = None,
) -> Analysis:
    """Search, classify and explain ``files`` (one image or a series) through the SDK."""
    from lungsearch.client import LungSearchError

    paths = [str(f) for f in files]
    query = {"image": paths[0]} if len(paths) == 1 else {"images": paths}
    search = client.search(**query, top_k=top_k + (1 if exclude_key else 0), model=profile, timeout=timeout)
    if exclude_key:  # the study was just ingested: it is its own best match, not a prior case
        hits = tuple(h for h in search.hits if h.case.case_key != exclude_key)[:top_k]
        search = type(search)(model=search.model, hits=hits)
    classification = explain = None
    try:
        classification = client.classify(**query, model=profile, timeout=timeout)
    except LungSearchError as exc:
        log.info("classify unavailable for %s (%s)", profile, exc.grpc_status)
    try:
        explain = client.explain(**query, model=profile, timeout=timeout)
    except LungSearchError as exc:
        log.info("explain unavailable for %s (%s)", profile, exc.grpc_status)
    synthetic = None
    try:
        for info in client.models(profile=profile, timeout=timeout):
            if info.model.version == search.model.version:
                synthetic = bool(info.synthetic_data)
    except LungSearchError:
        pass
    return Analysis(
        profile=search.model.profile or profile,
        version=search.model.version,
        search=search,
        classification=classification,
        explain=explain,
        synthetic=synthetic,
    )


def _reference(datasets: Sequence[Any]) -> Any:
    """The instance whose patient/study modules the new objects copy: the middle one of the series."""
    ordered = sorted(datasets, key=lambda d: int(d.get("InstanceNumber", 0) or 0))
    return ordered[len(ordered) // 2]


def build_sc(query: Sequence[Any], analysis: Analysis) -> Any | None:
    """The Grad-CAM overlay (RGB PNG from Explain) as a Secondary Capture in the query's study."""
    _quiet_highdicom()
    if analysis.explain is None or not (analysis.explain.overlay_png or analysis.explain.heatmap_png):
        return None
    import highdicom as hd
    import numpy as np
    from PIL import Image

    png = analysis.explain.overlay_png or analysis.explain.heatmap_png
    with Image.open(io.BytesIO(png)) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    ref = _reference(query)
    # The overlay keeps the input's orientation: axial CT rows run to the patient's left, columns
    # to posterior; a PA radiograph's rows to the left, columns to the feet.
    orientation = ("L", "P") if str(ref.get("Modality", "")).upper() in ("CT", "MR") else ("L", "F")
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref,
        pixel_array=rgb,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        patient_orientation=orientation,
        series_instance_uid=hd.UID(),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="lungsearch",
        series_description=f"lungsearch Grad-CAM {analysis.explain.label}"[:64],
    )
    sc.BurnedInAnnotation = "NO"
    sc.ImageComments = (
        f"Grad-CAM for '{analysis.explain.label}' (p={analysis.explain.score:.3f}), "
        f"{analysis.profile}@{analysis.version}. Not for primary diagnosis."
    )[:10240]
    return sc


def build_sr(
    query: Sequence[Any],
    analysis: Analysis,
    *,
    sc: Any | None = None,
    accession_for: Callable[[str], str | None] | None = None,
) -> Any:
    """The Comprehensive SR described in the module docstring."""
    _quiet_highdicom()
    import highdicom as hd
    from highdicom.sr import (
        CodeContentItem,
        ContainerContentItem,
        ContentSequence,
        ImageContentItem,
        NumContentItem,
        TextContentItem,
    )
    from highdicom.sr import (
        RelationshipTypeValues as R,
    )
    from pydicom.sr.codedict import codes

    unit = _code("1", "no units", "UCUM")
    finding = codes.DCM.Finding
    root = ContainerContentItem(name=_code("LS-0001", "Similar case retrieval report"), template_id=None)
    items: list[Any] = [
        TextContentItem(
            name=codes.DCM.AlgorithmName, value=f"lungsearch {analysis.profile}", relationship_type=R.HAS_OBS_CONTEXT
        ),
        TextContentItem(
            name=codes.DCM.AlgorithmVersion, value=analysis.version or "unknown", relationship_type=R.HAS_OBS_CONTEXT
        ),
        TextContentItem(
            name=_code("LS-0002", "Data provenance"),
            value={
                True: "model trained on synthetic phantom data",
                False: "model trained on real data",
                None: "unknown",
            }[analysis.synthetic],
            relationship_type=R.CONTAINS,
        ),
    ]
    c = analysis.classification
    if c is not None and c.probabilities:
        box = ContainerContentItem(name=_code("LS-0010", "Classification"), relationship_type=R.CONTAINS)
        kids: list[Any] = []
        if c.top_label:
            kids.append(
                CodeContentItem(
                    name=_code("LS-0011", "Predicted label"),
                    value=_label_code(c.top_label),
                    relationship_type=R.CONTAINS,
                )
            )
        for label, p in sorted(c.probabilities.items(), key=lambda kv: -kv[1]):
            one = ContainerContentItem(name=_code("LS-0012", "Class probability"), relationship_type=R.CONTAINS)
            one.ContentSequence = ContentSequence(
                [
                    CodeContentItem(name=finding, value=_label_code(label), relationship_type=R.CONTAINS),
                    NumContentItem(
                        name=_code("LS-0013", "Probability"),
                        value=round(float(p), 6),
                        unit=unit,
                        relationship_type=R.CONTAINS,
                    ),
                ]
            )
            kids.append(one)
        box.ContentSequence = ContentSequence(kids)
        items.append(box)
    s = analysis.search
    if s is not None:
        box = ContainerContentItem(name=_code("LS-0020", "Similar cases"), relationship_type=R.CONTAINS)
        kids = []
        for rank, hit in enumerate(s.hits, 1):  # re-numbered: the query itself may have been dropped
            one = ContainerContentItem(name=_code("LS-0021", "Similar case"), relationship_type=R.CONTAINS)
            leaf: list[Any] = [
                NumContentItem(name=_code("LS-0022", "Rank"), value=rank, unit=unit, relationship_type=R.CONTAINS),
                TextContentItem(
                    name=_code("LS-0023", "Case key"), value=hit.case.case_key, relationship_type=R.CONTAINS
                ),
            ]
            accession = accession_for(hit.case.case_key) if accession_for else None
            if accession:
                leaf.append(
                    TextContentItem(
                        name=codes.DCM.AccessionNumber, value=str(accession)[:16], relationship_type=R.CONTAINS
                    )
                )
            leaf.append(
                NumContentItem(
                    name=_code("LS-0024", "Similarity"),
                    value=round(float(hit.score), 6),
                    unit=unit,
                    relationship_type=R.CONTAINS,
                )
            )
            leaf += [
                CodeContentItem(name=finding, value=_label_code(lab), relationship_type=R.CONTAINS)
                for lab in hit.case.labels
            ]
            one.ContentSequence = ContentSequence(leaf)
            kids.append(one)
        if kids:
            box.ContentSequence = ContentSequence(kids)
        items.append(box)
    if sc is not None:
        items.append(
            ImageContentItem(
                name=_code("LS-0030", "Grad-CAM overlay"),
                referenced_sop_class_uid=sc.SOPClassUID,
                referenced_sop_instance_uid=sc.SOPInstanceUID,
                relationship_type=R.CONTAINS,
            )
        )
    root.ContentSequence = ContentSequence(items)
    evidence = list(query) + ([sc] if sc is not None else [])
    return hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=root,
        series_instance_uid=hd.UID(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="lungsearch",
        is_complete=True,
        series_description="lungsearch similar cases",
    )


def build_results(
    query: Sequence[Any], analysis: Analysis, *, accession_for: Callable[[str], str | None] | None = None
) -> list[Any]:
    """``[SR]`` or ``[SR, SC]`` for the query study (pydicom datasets)."""
    _quiet_highdicom()
    sc = build_sc(query, analysis)
    sr = build_sr(query, analysis, sc=sc, accession_for=accession_for)
    return [sr] + ([sc] if sc is not None else [])


def send_dimse(
    datasets: Sequence[Any],
    *,
    host: str,
    port: int,
    ae_title: str,
    calling_ae: str = "LUNGSEARCH",
    ssl_context: Any = None,
    timeout: float = 30.0,
) -> list[int]:
    """C-STORE the objects; returns each status. Raises ConnectionError if the association fails."""
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae)
    ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = timeout
    for uid in sorted({str(d.SOPClassUID) for d in datasets}):
        ae.add_requested_context(uid, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    assoc = ae.associate(host, port, ae_title=ae_title, tls_args=(ssl_context, None) if ssl_context else None)
    if not assoc.is_established:
        raise ConnectionError("the destination refused the association")
    try:
        statuses = []
        for d in datasets:
            st = assoc.send_c_store(d)
            statuses.append(int(st.Status) if "Status" in st else -1)
        return statuses
    finally:
        assoc.release()


def send_stow(
    datasets: Sequence[Any],
    url: str,
    *,
    study_uid: str | None = None,
    token: str | None = None,
    ca_file: str | None = None,
) -> list[str]:
    """STOW-RS the objects; returns the stored SOP Instance UIDs.

    The server's answer is checked, not just its HTTP status: a 200 whose ReferencedSOPSequence
    lacks an instance is a failure (dicomweb-client #42: a chunked STOW-RS answered 200 with nothing
    stored). Requests are sent unchunked for the same reason.

    Raises:
        ConnectionError: the server did not confirm every instance.
    """
    from lungsearch.pacs.dicomweb import dicomweb_client

    web = dicomweb_client(url, token=token, ca_file=ca_file)
    web._chunk_size = 1 << 30  # noqa: SLF001 - 0.61 chunks above chunk_size; results are small, never chunk
    answer = web.store_instances(list(datasets), study_instance_uid=study_uid)
    stored = {str(item.ReferencedSOPInstanceUID) for item in answer.get("ReferencedSOPSequence", [])}
    failed = len(answer.get("FailedSOPSequence", []))
    wanted = [str(d.SOPInstanceUID) for d in datasets]
    if failed or any(uid not in stored for uid in wanted):
        raise ConnectionError(f"STOW-RS stored {len([u for u in wanted if u in stored])} of {len(wanted)} objects")
    return wanted


def report_back(
    client: Any,
    files: Sequence[str | Path],
    profile: str,
    destination: Any,
    *,
    exclude_key: str | None = None,
    calling_ae: str = "LUNGSEARCH",
    audit: Any = None,
    who: str = "pacs",
    accession_for: Callable[[str], str | None] | None = None,
) -> list[Any]:
    """Analyse a study, build the SR (+ SC) and send them to ``destination`` (a config ``Destination``)."""
    import pydicom

    from lungsearch.pacs import metrics

    query = [pydicom.dcmread(str(f), stop_before_pixels=False) for f in files]
    analysis = analyse(client, files, profile, top_k=destination.top_k, exclude_key=exclude_key)
    objects = build_results(query, analysis, accession_for=accession_for)
    kinds = ["sr", "sc"][: len(objects)]
    try:
        if destination.kind == "dicomweb":
            send_stow(objects, destination.url, study_uid=str(query[0].StudyInstanceUID))
        else:
            statuses = send_dimse(
                objects,
                host=destination.host,
                port=destination.port,
                ae_title=destination.ae_title,
                calling_ae=calling_ae,
            )
            if any(s != 0 for s in statuses):
                raise ConnectionError("the destination refused an object")
    except Exception:
        for k in kinds:
            metrics.RESULTS_SENT.labels(kind=k, outcome="failed").inc()
        if audit is not None:
            audit.record(
                "results_sent", "failed", who=who, case_key=exclude_key, model=f"{analysis.profile}@{analysis.version}"
            )
        raise
    for k in kinds:
        metrics.RESULTS_SENT.labels(kind=k, outcome="ok").inc()
    if audit is not None:
        audit.record(
            "search",
            "ok",
            who=who,
            case_key=exclude_key,
            model=f"{analysis.profile}@{analysis.version}",
            hits=len(analysis.search.hits) if analysis.search else 0,
        )
        audit.record(
            "results_sent",
            "ok",
            who=who,
            case_key=exclude_key,
            model=f"{analysis.profile}@{analysis.version}",
            detail=destination.kind,
        )
    return objects


def results_hook(config: Any, client: Any = None, audit: Any = None):
    """A receiver ``on_ingested`` callback that sends results for every ingested series."""
    from lungsearch.client import LungSearchClient
    from lungsearch.pacs.audit import AuditLog

    client = client or LungSearchClient(
        config.target, token=config.token(), ca_file=config.target_ca_file, timeout=config.ingest_timeout_s
    )
    audit = audit or AuditLog(config.audit_log)

    def hook(series, profile: str, case_key: str, model: str) -> None:
        report_back(
            client,
            series.files,
            profile,
            config.destination,
            exclude_key=case_key,
            calling_ae=config.ae_title,
            audit=audit,
            who=f"ae:{series.meta.get('caller', '?')}",
        )

    return hook
