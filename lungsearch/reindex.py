"""Gated re-indexing: build a new model version's collection while the live one serves, check that
its retrieval is no worse on held-out probe cases, and only then switch, keeping the old version
for rollback.

The steps (:func:`reindex`), all through the running application's gRPC API, so they hold for a
milvus-lite file (one process owns it: the Ranking replica) as for a Milvus server:

1. **stage** the candidate (``registry.stage``: ``<profile>/STAGED``) and wait until every gateway
   has read it (they re-read the registry every ``registry.POINTER_REFRESH_S``): from then on each ingest is
   written to the candidate too, so no case that arrives during the rebuild is lost;
2. **build** the candidate's collection by ingesting the source cases with the candidate pinned
   (idempotent by case key: a re-run or an overlap with step 1's double writes changes nothing);
3. **gate**: search every probe case (held out from the gallery; default: the test split of the
   candidate's data config) against both versions, the probe's own case left out of its results,
   and compare mAP@10 and P@10 per probe: the paired bootstrap 95 % interval of the difference
   (candidate - live) must lie above ``-max_drop`` on both, else the candidate is refused;
4. **switch** with ``ActivateModel`` (every stage loads the candidate first, then one pointer
   flips) and unstage; or **refuse**: unstage, keep the live version, report the numbers.

The old version's collection is kept: ``lungsearch activate <profile>@<old version>`` rolls back.
A refused candidate's collection is kept too, for inspection (drop it with the store's tools).

Cases that reached the live version only through the API before the re-index began are not in the
source and are not re-embedded (lungsearch keeps no source images): re-ingest them from the PACS,
or include their source in ``records``. The report gives both counts (``live_cases``, ``built``:
the live version's cases, and the source cases built; ingests during the rebuild are in both).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from lungsearch.errors import InvalidRequestError
from lungsearch.registry import POINTER_REFRESH_S

if TYPE_CHECKING:
    from lungsearch.client import LungSearchClient
    from lungsearch.data import CaseRecord

__all__ = ["GateResult", "ReindexReport", "gate", "probe_scores", "reindex"]

log = logging.getLogger(__name__)

#: Ranks the gate scores (mAP@10 and P@10, the retrieval metrics of the product's default top_k).
GATE_K = 10
#: Seconds the gateways need to notice a staged version (twice their re-read interval, and a margin).
STAGE_SETTLE_S = 2 * POINTER_REFRESH_S + 1.0


@dataclass
class GateResult:
    """The regression check's numbers: per metric the live and candidate means over the probes and
    the paired bootstrap interval of the difference (candidate - live)."""

    passed: bool
    max_drop: float
    n_probes: int
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    reason: str = ""

    def summary(self) -> str:
        parts = [
            f"{m}: live {v['live']:.3f}, candidate {v['candidate']:.3f}, difference {v['diff']:+.3f} "
            f"[{v['lo']:+.3f}, {v['hi']:+.3f}]"
            for m, v in self.metrics.items()
        ]
        verdict = "passed" if self.passed else "refused"
        return f"gate {verdict} on {self.n_probes} probes (max drop {self.max_drop:.3f}): " + "; ".join(parts)


@dataclass
class ReindexReport:
    """What :func:`reindex` did (JSON-ready through ``asdict``)."""

    profile: str
    live: str
    candidate: str
    built: int = 0
    gate: GateResult | None = None
    activated: bool = False
    live_cases: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    rollback: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ap_and_p(relevant: Sequence[bool], k: int = GATE_K) -> tuple[float, float]:
    r = np.asarray(list(relevant)[:k], dtype=np.float64)
    if r.size == 0:
        return 0.0, 0.0
    hits = r.cumsum()
    ap = float((hits / np.arange(1, r.size + 1) * r).sum() / r.sum()) if r.sum() else 0.0
    return ap, float(r.sum() / k)


def probe_scores(
    hits: Sequence[tuple[str, Sequence[str]]], probe_key: str, probe_labels: Sequence[str], k: int = GATE_K
) -> tuple[float, float]:
    """(AP@k, P@k) of one probe's ranked hits ``[(case_key, labels), ...]``: relevant = a shared
    label; the probe's own case (same key) is left out, as the evaluation does."""
    want = set(probe_labels)
    rel = [bool(want & set(labels)) for key, labels in hits if key != probe_key]
    return _ap_and_p(rel, k)


def gate(
    live: np.ndarray,
    candidate: np.ndarray,
    *,
    max_drop: float,
    metrics: Sequence[str] = ("map10", "p10"),
    seed: int = 0,
) -> GateResult:
    """The regression decision from per-probe scores ``[n_probes, len(metrics)]`` of both versions
    (the same probes, in the same order): passed iff, on every metric, the lower end of the paired
    bootstrap interval of (candidate - live) is at least ``-max_drop``. An uncertain candidate (a
    wide interval from few probes) is refused: give more probes to let it pass."""
    from lungsearch.evaluation.stats import paired_bootstrap

    live, candidate = np.asarray(live, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    if live.shape != candidate.shape or live.ndim != 2 or live.shape[1] != len(metrics):
        raise InvalidRequestError("gate needs [probes, metrics] scores of the same shape for both versions")
    n = live.shape[0]
    if n < 2:
        return GateResult(passed=False, max_drop=max_drop, n_probes=n, reason="fewer than 2 probe cases")
    out: dict[str, dict[str, float]] = {}
    ok = True
    for j, name in enumerate(metrics):
        r = paired_bootstrap(
            [lambda idx, c=candidate[:, j]: float(c[idx].mean())],
            [lambda idx, v=live[:, j]: float(v[idx].mean())],
            n,
            seed=seed,
        )
        out[name] = {"live": r["b"], "candidate": r["a"], "diff": r["diff"], "lo": r["lo"], "hi": r["hi"]}
        ok = ok and bool(np.isfinite(r["lo"]) and r["lo"] >= -max_drop)
    reason = "" if ok else "the candidate may retrieve worse than the live version by more than the allowed drop"
    return GateResult(passed=ok, max_drop=max_drop, n_probes=n, metrics=out, reason=reason)


def _search_hits(client: "LungSearchClient", ref: str, rec: "CaseRecord", k: int) -> list[tuple[str, tuple[str, ...]]]:
    res = client.search(images=list(rec.image_paths), report=rec.report or None, top_k=k, model=ref)
    return [(h.case.case_key, tuple(h.case.labels)) for h in res.hits]


def reindex(
    client: "LungSearchClient",
    profile: str,
    candidate: str,
    *,
    records: Sequence["CaseRecord"],
    probes: Sequence["CaseRecord"],
    registry_root: str | None = None,
    max_drop: float = 0.02,
    settle_s: float = STAGE_SETTLE_S,
    activate: bool = True,
    echo: Callable[[str], None] = lambda line: log.info("%s", line),
) -> ReindexReport:
    """Stage, build, gate and switch (or refuse) one candidate version of ``profile``.

    Args:
        client: an SDK client with the admin role (ActivateModel) and write role (Ingest).
        candidate: the registered version to build and gate.
        records: the source cases to build the candidate's collection from (with their labels).
        probes: labelled held-out cases for the gate (not in ``records``: a probe in the gallery would
            find itself; its own key is left out of its results all the same).
        registry_root: the registry the gateways read (``STAGED`` is written there).
        max_drop: the largest drop of mAP@10 / P@10 the gate accepts (lower interval bound).
        activate: switch when the gate passes (False: build and gate only).
    """
    from lungsearch import registry

    # The registry's LIVE pointer, not a Gateway's answer: a replica follows LIVE only every few
    # seconds, and a stale one named a version just switched away from (an empty gallery: live 0.000).
    live = registry.live_version(profile, root=registry_root) or next(
        (m.model.version for m in client.models(profile=profile) if m.live), ""
    )
    if not live:
        raise InvalidRequestError(f"profile {profile} has no live version to compare with", code="no_live")
    if candidate == live:
        raise InvalidRequestError("the candidate is already the live version", code="candidate_is_live")
    if not probes:
        raise InvalidRequestError("the gate needs probe cases", code="no_probes")
    report = ReindexReport(
        profile=profile, live=live, candidate=candidate, rollback=f"lungsearch activate {profile}@{live}"
    )
    cand_ref, live_ref = f"{profile}@{candidate}", f"{profile}@{live}"

    registry.stage(profile, candidate, root=registry_root)
    try:
        t0 = time.perf_counter()
        echo(f"[reindex] staged {cand_ref}; waiting {settle_s:.0f} s for the gateways to write ingests to it too")
        time.sleep(settle_s)
        keys: set[str] = set()
        for i, rec in enumerate(records, 1):
            res = client.ingest(
                list(rec.image_paths),
                report=rec.report or None,
                labels=list(rec.labels),
                source_id=rec.case_id,
                model=cand_ref,
            )
            keys.add(res.case_key)
            if i % 100 == 0 or i == len(records):
                echo(f"[reindex] built {i}/{len(records)} cases of {cand_ref}")
        report.built = len(keys)
        report.seconds["build"] = round(time.perf_counter() - t0, 1)

        t0 = time.perf_counter()
        scores = {"live": [], "candidate": []}
        for rec in probes:
            # Probes are held out of ``records``: none is in the candidate's gallery. One that reached
            # the live version earlier would find itself there, which favours the live side: the gate
            # errs towards refusing.
            for side, ref in (("live", live_ref), ("candidate", cand_ref)):
                scores[side].append(probe_scores(_search_hits(client, ref, rec, GATE_K), "", rec.labels))
        report.gate = gate(np.array(scores["live"]), np.array(scores["candidate"]), max_drop=max_drop)
        report.seconds["gate"] = round(time.perf_counter() - t0, 1)
        echo(f"[reindex] {report.gate.summary()}")

        report.live_cases = int(next((m.num_cases for m in client.models(profile=profile) if m.live), 0))
        if report.gate.passed and activate:
            t0 = time.perf_counter()
            client.activate_model(profile, candidate, timeout=600)
            report.activated = True
            report.seconds["activate"] = round(time.perf_counter() - t0, 1)
            echo(f"[reindex] {cand_ref} is live; roll back with: {report.rollback}")
        elif not report.gate.passed:
            echo(f"[reindex] refused: {live_ref} stays live ({report.gate.reason})")
    finally:
        registry.unstage(profile, root=registry_root)
    return report
