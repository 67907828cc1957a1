"""End to end through Ray Serve's gRPC proxy and a real grpc channel: ingest phantom cases
(synthetic), search by image / text / both with relevance and filters, Classify, Explain, errors
that change nothing, auth, health, reflection, metrics, model switching, and a restart on the
same milvus-lite file. One app for the module (starting Serve is the expensive part).

Relevance is checked where an *untrained* model already has it on phantoms (measured while
writing this test: ct-ild image search and cxr-report image+report search put same-label cases in
the top 10 far above chance); text-only search (cxr-clip) is checked for shape and filters only,
since an untrained CLIP-style model ranks text->image at chance.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from services_fixtures import ADMIN, N_CXR, PROFILES, READ, WRITE, build_registry, free_port

from lungsearch._proto.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from lungsearch.serving.status import ERROR_METADATA_KEY

pytestmark = [pytest.mark.ray, pytest.mark.slow]

HELD_OUT = {"cxr": 20, "ct": 8}
CLIP_CASES = 30


def _read(paths):
    return [open(p, "rb").read() for p in paths]


def _images(rec):
    return [common_pb2.Image(data=d) for d in _read(rec["image_paths"])]


class Client:
    def __init__(self, port: int):
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = gateway_pb2_grpc.LungSearchStub(self.channel)

    def __call__(self, method: str, request, *, token: str | None = READ, timeout: float = 120.0):
        md = [("authorization", f"Bearer {token}")] if token else []
        return getattr(self.stub, method)(request, metadata=md, timeout=timeout)

    def error(self, method: str, request, **kw) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as e:
            self(method, request, **kw)
        return e.value


def _detail(err: grpc.RpcError) -> common_pb2.ErrorDetail:
    for k, v in err.trailing_metadata() or ():
        if k == ERROR_METADATA_KEY:
            return common_pb2.ErrorDetail.FromString(v)
    raise AssertionError("no lungsearch-error-bin trailer")


def _deploy(args: dict, port: int) -> None:
    """Deploy exactly as ``lungsearch serve`` does: services/serve_config.yaml + overrides, through
    Serve's config path (so the YAML's per-deployment settings apply), then wait for RUNNING."""
    import argparse

    from lungsearch.cli import _serve

    parser = argparse.ArgumentParser()
    _serve.register(parser.add_subparsers())
    argv = [
        "serve",
        "--artifacts-dir",
        args["artifacts_dir"],
        "--milvus-uri",
        args["milvus_uri"],
        "--hmac-key-file",
        args["hmac_key_file"],
        "--tokens-file",
        args["tokens_file"],
        "--grpc-port",
        str(port),
    ]
    for p in args["profiles"]:
        argv += ["--profile", p]
    doc = _serve.build_config(parser.parse_args(argv))
    _serve.deploy(doc)
    _serve.wait_running(timeout_s=600)


@pytest.fixture(scope="module")
def served(ray_cluster, serving_registry, tokens, tmp_path_factory):
    from ray import serve

    root, cards = serving_registry
    work = tmp_path_factory.mktemp("serve")
    args = {
        "profiles": ["cxr-report", "ct-ild", "cxr-clip"],
        "artifacts_dir": str(root),
        "milvus_uri": str(work / "lungsearch.db"),
        "hmac_key_file": str(work / "hmac.key"),
        "tokens_file": str(tokens),
    }
    port = free_port()
    t0 = time.perf_counter()
    _deploy(args, port)
    print(f"\nserve app up in {time.perf_counter() - t0:.1f} s")
    yield {"client": Client(port), "args": args, "cards": cards, "port": port}
    serve.shutdown()


@pytest.fixture(scope="module")
def ingested(served, phantom_sets):
    """Ingest the phantom cases (minus held-out queries) concurrently; returns what was acknowledged."""
    c = served["client"]
    jobs = []
    for rec in phantom_sets["cxr"][HELD_OUT["cxr"] :]:
        jobs.append(("cxr-report", rec))
    for rec in phantom_sets["cxr"][HELD_OUT["cxr"] : HELD_OUT["cxr"] + CLIP_CASES]:
        jobs.append(("cxr-clip", rec))
    for rec in phantom_sets["ct"][HELD_OUT["ct"] :]:
        jobs.append(("ct-ild", rec))

    def ingest(job):
        profile, rec = job
        req = gateway_pb2.IngestRequest(
            model=common_pb2.ModelRef(profile=profile),
            images=_images(rec),
            labels=rec["labels"],
            source_id=rec["case_id"],
            report=common_pb2.Report(text=rec.get("report") or ""),
        )
        return profile, rec, c("Ingest", req, token=WRITE)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(ingest, jobs))
    dt = time.perf_counter() - t0
    print(f"ingested {len(results)} phantom cases in {dt:.1f} s ({len(results) / dt:.1f} cases/s, 8 concurrent)")
    keys: dict[str, dict[str, dict]] = {}
    for profile, rec, resp in results:
        assert resp.created and len(resp.case_key) == 32 and resp.model.version
        keys.setdefault(profile, {})[resp.case_key] = rec
    return keys


def _count(c, profile) -> int:
    resp = c("ListModels", gateway_pb2.ListModelsRequest(profile=profile))
    (live,) = [m for m in resp.models if m.live]
    return live.num_cases


def _overlap(c, profile, queries, *, with_report: bool, with_image: bool = True, k: int = 10) -> tuple[float, float]:
    """Mean fraction of the top-k sharing a label with the query, and the same for random cases."""
    fracs = []
    for rec in queries:
        req = gateway_pb2.SearchRequest(model=common_pb2.ModelRef(profile=profile), top_k=k)
        if with_image:
            req.images.extend(_images(rec))
        if with_report:
            req.report.text = rec.get("report") or ""
        hits = c("Search", req).hits
        assert len(hits) == k and [h.rank for h in hits] == list(range(1, k + 1))
        assert all(hits[i].score >= hits[i + 1].score - 1e-6 for i in range(k - 1))
        fracs.append(np.mean([bool(set(h.case.labels) & set(rec["labels"])) for h in hits]))
    return float(np.mean(fracs))


def _chance(indexed, queries) -> float:
    return float(np.mean([np.mean([bool(set(r["labels"]) & set(q["labels"])) for r in indexed]) for q in queries]))


def test_ingest_counts(served, ingested, phantom_sets):
    c = served["client"]
    assert _count(c, "cxr-report") == len(ingested["cxr-report"]) == N_CXR - HELD_OUT["cxr"]
    assert _count(c, "ct-ild") == len(ingested["ct-ild"])
    assert _count(c, "cxr-clip") == CLIP_CASES


def test_search_by_image_is_relevant_ct(served, ingested, phantom_sets):
    queries = phantom_sets["ct"][: HELD_OUT["ct"]]
    got = _overlap(served["client"], "ct-ild", queries, with_report=False)
    chance = _chance(list(ingested["ct-ild"].values()), queries)
    print(f"ct-ild image search: same-label share in top 10 = {got:.2f} vs chance {chance:.2f} (untrained, phantoms)")
    assert got > chance + 0.15


def test_search_by_image_and_report_is_relevant(served, ingested, phantom_sets):
    queries = phantom_sets["cxr"][: HELD_OUT["cxr"]]
    got = _overlap(served["client"], "cxr-report", queries, with_report=True)
    chance = _chance(list(ingested["cxr-report"].values()), queries)
    print(
        f"cxr-report image+report search: top-10 label overlap {got:.2f} vs chance {chance:.2f} (untrained, phantoms)"
    )
    assert got > chance + 0.1


def test_search_by_image_only_and_by_text_only(served, ingested, phantom_sets):
    c = served["client"]
    rec = phantom_sets["cxr"][0]
    hits = c(
        "Search",
        gateway_pb2.SearchRequest(model=common_pb2.ModelRef(profile="cxr-report"), images=_images(rec), top_k=5),
    ).hits
    assert len(hits) == 5 and all(h.hamming_distance == -1 for h in hits)  # float index
    text = gateway_pb2.SearchRequest(
        model=common_pb2.ModelRef(profile="cxr-clip"),
        report=common_pb2.Report(text="There is a small nodule in the left lower lobe."),
        top_k=7,
    )
    hits = c("Search", text).hits
    assert len(hits) == 7 and all(h.case.case_key in ingested["cxr-clip"] for h in hits)
    assert all(h.case.report_excerpt and "\n" not in h.case.report_excerpt for h in hits)
    # self-retrieval by image on cxr-clip: an ingested case finds itself first
    key, stored = next(iter(ingested["cxr-clip"].items()))
    top = c(
        "Search",
        gateway_pb2.SearchRequest(model=common_pb2.ModelRef(profile="cxr-clip"), images=_images(stored), top_k=1),
    ).hits[0]
    assert top.case.case_key == key and top.score > 0.999
    both = c(
        "Search",
        gateway_pb2.SearchRequest(
            model=common_pb2.ModelRef(profile="cxr-clip"),
            images=_images(stored),
            report=common_pb2.Report(text=stored["report"] or ""),
            top_k=3,
        ),
    )
    assert len(both.hits) == 3
    # cxr-report fuses image and report by cross-attention: a report alone is not a query for it
    err = c.error(
        "Search",
        gateway_pb2.SearchRequest(
            model=common_pb2.ModelRef(profile="cxr-report"), report=common_pb2.Report(text="nodule")
        ),
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_filters_and_hamming(served, ingested, phantom_sets):
    c = served["client"]
    q = phantom_sets["ct"][0]
    flt = common_pb2.Filter(labels_any=["ggo", "reticular"], labels_none=["reticular"], modality=common_pb2.MODALITY_CT)
    hits = c(
        "Search",
        gateway_pb2.SearchRequest(model=common_pb2.ModelRef(profile="ct-ild"), images=_images(q), top_k=50, filter=flt),
    ).hits
    n_ggo = sum("ggo" in r["labels"] for r in ingested["ct-ild"].values())
    assert len(hits) == n_ggo > 0 and all(list(h.case.labels) == ["ggo"] for h in hits)
    assert all(h.hamming_distance >= 0 for h in hits)  # LSH codes with cosine re-rank
    none = c(
        "Search",
        gateway_pb2.SearchRequest(
            model=common_pb2.ModelRef(profile="ct-ild"),
            images=_images(q),
            filter=common_pb2.Filter(modality=common_pb2.MODALITY_CXR),
        ),
    ).hits
    assert len(none) == 0
    cxr = c(
        "Search",
        gateway_pb2.SearchRequest(
            model=common_pb2.ModelRef(profile="cxr-report"),
            images=_images(phantom_sets["cxr"][1]),
            report=common_pb2.Report(text="normal chest"),
            top_k=50,
            filter=common_pb2.Filter(labels_all=["Normal"]),
        ),
    ).hits
    assert cxr and all("Normal" in h.case.labels for h in cxr)


def test_classify_and_explain(served, ingested, phantom_sets):
    from PIL import Image

    c = served["client"]
    rec = phantom_sets["cxr"][2]
    cl = c(
        "Classify",
        gateway_pb2.ClassifyRequest(
            model=common_pb2.ModelRef(profile="cxr-report"),
            images=_images(rec),
            report=common_pb2.Report(text=rec["report"] or ""),
            knn_k=10,
        ),
    )
    targets = served["cards"]["cxr-report"].targets
    assert [p.label for p in cl.probabilities] == targets
    assert abs(sum(p.score for p in cl.probabilities) - 1) < 1e-4 and cl.top_label in targets
    assert max(v.score for v in cl.knn_vote) >= 0.1 and all(0 <= v.score <= 1 for v in cl.knn_vote)
    ct = c(
        "Classify",
        gateway_pb2.ClassifyRequest(model=common_pb2.ModelRef(profile="ct-ild"), images=_images(phantom_sets["ct"][1])),
    )
    assert not ct.probabilities and ct.top_label in ("normal", "ggo", "reticular", "consolidation")
    ex = c(
        "Explain",
        gateway_pb2.ExplainRequest(
            model=common_pb2.ModelRef(profile="cxr-report"),
            images=_images(rec),
            report=common_pb2.Report(text=rec["report"] or ""),
        ),
    )
    assert ex.label in targets and 0 <= ex.score <= 1
    heat = Image.open(io.BytesIO(ex.heatmap_png))
    over = Image.open(io.BytesIO(ex.overlay_png))
    assert (heat.mode, heat.size, over.mode, over.size) == ("L", (64, 64), "RGB", (64, 64))
    named = c(
        "Explain",
        gateway_pb2.ExplainRequest(
            model=common_pb2.ModelRef(profile="cxr-report"),
            images=_images(rec),
            report=common_pb2.Report(text="x"),
            label="Effusion",
        ),
    )
    assert named.label == "Effusion"
    err = c.error(
        "Explain",
        gateway_pb2.ExplainRequest(
            model=common_pb2.ModelRef(profile="cxr-report"), images=_images(rec), label="Fracture"
        ),
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def _no_lung_series(folder) -> list[bytes]:
    """A CT series of soft tissue only (body, no lung: an abdomen-like slice; synthetic): the
    lung mask finds nothing, so radiomics fall back to the whole thorax."""
    from lungsearch.data.phantoms._ct import write_ct_series

    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[:64, :64]
    body = (yy - 32) ** 2 / 0.9 + (xx - 32) ** 2 < 29**2
    hu = np.stack([np.where(body, 40.0, -1000.0) + rng.normal(0, 10, body.shape) for _ in range(3)])
    names = write_ct_series(
        folder,
        hu.astype(np.float32),
        patient_id="NOLUNG1",
        patient_name="PHANTOM^NOLUNG",
        study_uid="2.25.1101",
        series_uid="2.25.1102",
        sop_uids=[f"2.25.1103{i}" for i in range(3)],
    )
    return [(folder / n).read_bytes() for n in names]


def test_radiomics_fallback_reaches_every_answer(served, phantom_sets, tmp_path):
    """A CT case whose lung mask fails answers Ingest, Search, Classify and Explain with the flag
    and reason (gRPC and the SDK); a normal phantom case and a profile without radiomics without it."""
    from lungsearch.client import LungSearchClient

    c = served["client"]
    ref = common_pb2.ModelRef(profile="ct-ild")
    bad = [common_pb2.Image(data=d) for d in _no_lung_series(tmp_path)]
    msg = "radiomics read the whole thorax: lung mask empty"
    ing = c(
        "Ingest",
        gateway_pb2.IngestRequest(model=ref, images=bad, labels=["normal"], source_id="no-lung-1"),
        token=WRITE,
    )
    try:
        answers = {
            "Ingest": ing,
            "Search": c("Search", gateway_pb2.SearchRequest(model=ref, images=bad, top_k=3)),
            "Classify": c("Classify", gateway_pb2.ClassifyRequest(model=ref, images=bad)),
            "Explain": c("Explain", gateway_pb2.ExplainRequest(model=ref, images=bad)),
        }
        for name, resp in answers.items():
            assert resp.HasField("radiomics_roi"), name
            assert (resp.radiomics_roi.whole_thorax, resp.radiomics_roi.reason, resp.radiomics_roi.message) == (
                True,
                "empty",
                msg,
            ), name
        good = _images(phantom_sets["ct"][0])
        for method, req in (
            ("Search", gateway_pb2.SearchRequest(model=ref, images=good, top_k=3)),
            ("Classify", gateway_pb2.ClassifyRequest(model=ref, images=good)),
        ):
            assert not c(method, req).HasField("radiomics_roi"), method
        cxr = gateway_pb2.SearchRequest(
            model=common_pb2.ModelRef(profile="cxr-report"), images=_images(phantom_sets["cxr"][0]), top_k=3
        )
        assert not c("Search", cxr).HasField("radiomics_roi")  # no radiomics branch: never set
        with LungSearchClient(f"127.0.0.1:{served['port']}", token=READ, timeout=120) as sdk:
            res = sdk.search(images=[im.data for im in bad], model="ct-ild", top_k=3)
            assert res.radiomics_roi is not None and (res.radiomics_roi.reason, res.radiomics_roi.message) == (
                "empty",
                msg,
            )
            assert sdk.classify(images=[im.data for im in good], model="ct-ild").radiomics_roi is None
    finally:
        c("DeleteCase", gateway_pb2.DeleteCaseRequest(model=ref, case_key=ing.case_key), token=WRITE)


def test_bad_input_is_rejected_and_stores_nothing(served, ingested, phantom_sets):
    c = served["client"]
    before = _count(c, "ct-ild")
    ct = phantom_sets["ct"][0]
    slices = _read(ct["image_paths"])
    bad = [slices[0], slices[1][: len(slices[1]) // 2], slices[2]]  # a truncated slice inside the series
    err = c.error(
        "Ingest",
        gateway_pb2.IngestRequest(
            model=common_pb2.ModelRef(profile="ct-ild"),
            images=[common_pb2.Image(data=d) for d in bad],
            labels=["ggo"],
            source_id="corrupt-1",
        ),
        token=WRITE,
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    d = _detail(err)
    assert d.reason == common_pb2.ERROR_REASON_INVALID_IMAGE and d.code
    assert "Traceback" not in err.details() and ".py" not in err.details()
    garbage = c.error(
        "Ingest",
        gateway_pb2.IngestRequest(
            model=common_pb2.ModelRef(profile="ct-ild"), images=[common_pb2.Image(data=b"DICM" + b"\0" * 400)]
        ),
        token=WRITE,
    )
    assert garbage.code() == grpc.StatusCode.INVALID_ARGUMENT
    wrong = c.error(
        "Ingest",
        gateway_pb2.IngestRequest(
            model=common_pb2.ModelRef(profile="cxr-report"), images=[common_pb2.Image(data=s) for s in slices]
        ),
        token=WRITE,
    )  # CT into a CXR profile
    assert wrong.code() == grpc.StatusCode.INVALID_ARGUMENT and _detail(wrong).code == "modality_mismatch"
    big = c.error(
        "Ingest",
        gateway_pb2.IngestRequest(
            model=common_pb2.ModelRef(profile="ct-ild"), images=[common_pb2.Image(data=b"x" * 1_100_000)]
        ),
        token=WRITE,
    )
    assert (
        big.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        and _detail(big).reason == common_pb2.ERROR_REASON_LIMIT_EXCEEDED
    )
    topk = c.error(
        "Search",
        gateway_pb2.SearchRequest(
            model=common_pb2.ModelRef(profile="ct-ild"), images=[common_pb2.Image(data=slices[0])], top_k=51
        ),
    )
    assert topk.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    unknown = c.error(
        "Search",
        gateway_pb2.SearchRequest(
            model=common_pb2.ModelRef(profile="cxr-hash"), images=[common_pb2.Image(data=slices[0])]
        ),
    )
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    assert _count(c, "ct-ild") == before


def test_case_lifecycle_and_idempotence(served, ingested, phantom_sets):
    c = served["client"]
    key, rec = next(iter(ingested["ct-ild"].items()))
    ref = common_pb2.ModelRef(profile="ct-ild")
    case = c("GetCase", gateway_pb2.GetCaseRequest(model=ref, case_key=key)).case
    assert case.case_key == key and list(case.labels) == rec["labels"] and case.num_images == 3
    assert case.modality == common_pb2.MODALITY_CT and case.ingested_at.seconds > 0
    before = _count(c, "ct-ild")
    again = c(
        "Ingest",
        gateway_pb2.IngestRequest(model=ref, images=_images(rec), labels=rec["labels"], source_id=rec["case_id"]),
        token=WRITE,
    )
    assert again.case_key == key and not again.created and _count(c, "ct-ild") == before
    # a study too large for one message: streamed in chunks, same key
    parts = [
        gateway_pb2.IngestStreamRequest(
            header=gateway_pb2.IngestRequest(model=ref, labels=rec["labels"], source_id=rec["case_id"])
        )
    ]
    for i, data in enumerate(_read(rec["image_paths"])):
        for off in range(0, len(data), 4096):
            parts.append(
                gateway_pb2.IngestStreamRequest(
                    chunk=gateway_pb2.ImageChunk(
                        image_index=i, data=data[off : off + 4096], last=off + 4096 >= len(data)
                    )
                )
            )
    streamed = c.stub.IngestStream(iter(parts), metadata=[("authorization", f"Bearer {WRITE}")], timeout=120)
    assert streamed.case_key == key and not streamed.created
    err = c.error("DeleteCase", gateway_pb2.DeleteCaseRequest(model=ref, case_key=key), token=READ)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert c("DeleteCase", gateway_pb2.DeleteCaseRequest(model=ref, case_key=key), token=WRITE).deleted
    assert c.error("GetCase", gateway_pb2.GetCaseRequest(model=ref, case_key=key)).code() == grpc.StatusCode.NOT_FOUND
    assert _count(c, "ct-ild") == before - 1
    assert c(
        "Ingest",
        gateway_pb2.IngestRequest(model=ref, images=_images(rec), labels=rec["labels"], source_id=rec["case_id"]),
        token=WRITE,
    ).created
    bad_key = c.error("GetCase", gateway_pb2.GetCaseRequest(model=ref, case_key="Patient DOE^JOHN"))
    assert bad_key.code() == grpc.StatusCode.INVALID_ARGUMENT and "DOE" not in bad_key.details()


def test_auth(served):
    c = served["client"]
    req = gateway_pb2.ListModelsRequest()
    assert c.error("ListModels", req, token=None).code() == grpc.StatusCode.UNAUTHENTICATED
    err = c.error("ListModels", req, token="wrong-token-" + "x" * 20)
    assert (
        err.code() == grpc.StatusCode.UNAUTHENTICATED and _detail(err).reason == common_pb2.ERROR_REASON_UNAUTHENTICATED
    )
    assert (
        c.error("ActivateModel", gateway_pb2.ActivateModelRequest(), token=WRITE).code()
        == grpc.StatusCode.PERMISSION_DENIED
    )
    assert c.error("Ingest", gateway_pb2.IngestRequest(), token=READ).code() == grpc.StatusCode.PERMISSION_DENIED
    assert len(c("ListModels", req, token=READ).models) == 3


def test_health_and_deadline(served, ingested):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    c = served["client"]
    health = health_pb2_grpc.HealthStub(c.channel)
    for service in ("", "lungsearch.v1.LungSearch", "lungsearch.v1.Ranking"):
        assert (
            health.Check(health_pb2.HealthCheckRequest(service=service), timeout=30).status
            == health_pb2.HealthCheckResponse.SERVING
        )  # no token: health stays open
    with pytest.raises(grpc.RpcError) as e:
        health.Check(health_pb2.HealthCheckRequest(service="nope.Service"), timeout=30)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    slow = c.error(
        "Search",
        gateway_pb2.SearchRequest(
            model=common_pb2.ModelRef(profile="cxr-clip"), report=common_pb2.Report(text="nodule")
        ),
        timeout=0.001,
    )
    assert slow.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_reflection_only_client(served, ingested):
    """A client with no generated code: discover services and call Search from reflection alone."""
    from google.protobuf import descriptor_pool, json_format, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    channel = grpc.insecure_channel(f"127.0.0.1:{served['port']}")
    db = ProtoReflectionDescriptorDatabase(channel)
    services = set(db.get_services())
    assert {"lungsearch.v1.LungSearch", "grpc.health.v1.Health", "lungsearch.v1.Ranking"} <= services
    pool = descriptor_pool.DescriptorPool(db)
    method = pool.FindServiceByName("lungsearch.v1.LungSearch").FindMethodByName("Search")
    req_cls = message_factory.GetMessageClass(method.input_type)
    resp_cls = message_factory.GetMessageClass(method.output_type)
    req = json_format.ParseDict(
        {"model": {"profile": "cxr-clip"}, "report": {"text": "cardiomegaly"}, "topK": 3}, req_cls()
    )
    call = channel.unary_unary(
        "/lungsearch.v1.LungSearch/Search",
        request_serializer=req_cls.SerializeToString,
        response_deserializer=resp_cls.FromString,
    )
    resp = call(req, metadata=[("authorization", f"Bearer {READ}")], timeout=60)
    hits = json_format.MessageToDict(resp)["hits"]
    assert len(hits) == 3 and all(len(h["case"]["caseKey"]) == 32 for h in hits)


def test_metrics_exposition(served, ingested, tmp_path):
    import shutil
    import subprocess

    from prometheus_client.parser import text_string_to_metric_families
    from ray import serve

    text = serve.get_deployment_handle("Gateway", app_name="lungsearch").metrics_text.remote().result()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    reqs = fams["lungsearch_serve_requests"].samples
    assert {s.labels["deployment"] for s in reqs} >= {"gateway", "encoding", "fusion", "hashing", "ranking"}
    ok_ingests = sum(s.value for s in reqs if s.labels == {"deployment": "gateway", "method": "Ingest", "code": "OK"})
    assert ok_ingests >= sum(len(v) for v in ingested.values())
    assert any(s.labels.get("code") == "INVALID_ARGUMENT" for s in reqs)
    batches = [s for s in fams["lungsearch_encoding_batch_size_items"].samples if s.name.endswith("_count")]
    assert sum(s.value for s in batches) > 0
    index = {s.labels["profile"]: s.value for s in fams["lungsearch_ranking_index_cases"].samples}
    assert index["cxr-clip"] == CLIP_CASES
    assert any(s.labels.get("live") == "1" for s in fams["lungsearch_model_info"].samples)
    for keys in ingested.values():  # no case identifier anywhere in the exposition
        assert not any(k in text for k in keys)
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip(
            "promtool not installed (apt-get install prometheus): exposition checked with prometheus_client only"
        )
    res = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_fused_stages_match_the_graph(served, phantom_sets):
    """``stages: fused`` (Encoding also fuses and hashes) gives the same embedding and code as the
    Fusion and Hashing deployments."""
    from ray import serve

    from lungsearch._proto.v1 import encoding_pb2, fusion_pb2, hashing_pb2
    from lungsearch.data import read_study
    from lungsearch.serving.convert import tensor_from_proto

    h = {n: serve.get_deployment_handle(n, app_name="lungsearch") for n in ("Encoding", "Fusion", "Hashing")}
    ref = common_pb2.ModelRef(profile="ct-ild", version=served["cards"]["ct-ild"].version)
    study = read_study(_read(phantom_sets["ct"][3]["image_paths"]))
    enc, fus, code = h["Encoding"].encode_fused.remote(encoding_pb2.EncodeRequest(model=ref), study=study).result()
    fus2 = h["Fusion"].Fuse.remote(fusion_pb2.FuseRequest(model=ref, features=enc.features)).result()
    code2 = h["Hashing"].Hash.remote(hashing_pb2.HashRequest(model=ref, embedding=fus2.embedding)).result().code
    np.testing.assert_allclose(
        tensor_from_proto(fus.embedding), tensor_from_proto(fus2.embedding), rtol=1e-5, atol=1e-6
    )
    assert code.packed == code2.packed and code.bits == 64


def test_activate_model_switches_atomically(served, ingested, phantom_sets):
    from pathlib import Path

    c = served["client"]
    root = Path(served["args"]["artifacts_dir"])
    old = served["cards"]["ct-ild"].version
    new = build_registry(root, {"ct-ild": PROFILES["ct-ild"]}, version_suffix="-b")["ct-ild"]
    ref = common_pb2.ModelRef(profile="ct-ild", version=new.version)
    assert (
        c.error("ActivateModel", gateway_pb2.ActivateModelRequest(model=ref), token=WRITE).code()
        == grpc.StatusCode.PERMISSION_DENIED
    )
    missing = c.error(
        "ActivateModel",
        gateway_pb2.ActivateModelRequest(
            model=common_pb2.ModelRef(profile="ct-ild", version="20990101-000000-nothere")
        ),
        token=ADMIN,
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    resp = c("ActivateModel", gateway_pb2.ActivateModelRequest(model=ref), token=ADMIN, timeout=300)
    assert (resp.previous.version, resp.live.version) == (old, new.version)
    q = gateway_pb2.SearchRequest(model=common_pb2.ModelRef(profile="ct-ild"), images=_images(phantom_sets["ct"][0]))
    # Every unpinned Search after the answer uses the new version, whichever Gateway replica takes it
    # (several calls: Serve spreads them over the replicas).
    afters = [c("Search", q) for _ in range(6)]
    assert {a.model.version for a in afters} == {new.version}
    assert all(len(a.hits) == 0 for a in afters)  # the new version's collection is empty
    pinned = c(
        "Search",
        gateway_pb2.SearchRequest(
            model=common_pb2.ModelRef(profile="ct-ild", version=old), images=_images(phantom_sets["ct"][0])
        ),
    )
    assert len(pinned.hits) == 10  # the old version stays searchable by name
    back = c(
        "ActivateModel",
        gateway_pb2.ActivateModelRequest(model=common_pb2.ModelRef(profile="ct-ild", version=old)),
        token=ADMIN,
        timeout=300,
    )
    assert back.live.version == old
    backs = [c("Search", q) for _ in range(6)]
    assert {b.model.version for b in backs} == {old} and all(len(b.hits) == 10 for b in backs)


def _case_record(rec: dict):
    from lungsearch.data.types import CaseRecord

    return CaseRecord(
        case_id=rec["case_id"],
        image_paths=tuple(rec["image_paths"]),
        labels=tuple(rec["labels"]),
        group=rec.get("group") or rec["case_id"],
        report=rec.get("report"),
        modality="ct",
    )


def test_gated_reindex_writes_ingests_to_both_switches_and_rolls_back(served, ingested, phantom_sets, tmp_path):
    """lungsearch.reindex end to end on the served app: a candidate with the live model's weights is
    built from the source cases, passes the gate with a zero difference and goes live; a case
    ingested (unpinned) during the re-index is in both versions; rolling back restores the old
    answers; a candidate whose index carries shuffled labels is refused with its numbers."""
    import threading

    from lungsearch.client import LungSearchClient
    from lungsearch.data import phantoms
    from lungsearch.reindex import STAGE_SETTLE_S, reindex

    c, root = served["client"], Path(served["args"]["artifacts_dir"])
    old = served["cards"]["ct-ild"].version
    probes = [_case_record(r) for r in phantom_sets["ct"][: HELD_OUT["ct"]]]
    source = [_case_record(r) for r in phantom_sets["ct"][HELD_OUT["ct"] :]]
    same = build_registry(root, {"ct-ild": PROFILES["ct-ild"]}, version_suffix="-r")["ct-ild"]
    extra = phantoms.generate("ct", 1, tmp_path / "extra", seed=99, size=64, slices=3)
    extra_rec = [json.loads(x) for x in (Path(extra) / "manifest.jsonl").read_text().splitlines() if x][0]
    extra_images = [common_pb2.Image(data=open(Path(extra) / q, "rb").read()) for q in extra_rec["image_paths"]]

    def top(version: str, k: int = 10) -> list[str]:
        req = gateway_pb2.SearchRequest(
            model=common_pb2.ModelRef(profile="ct-ild", version=version), images=_images(phantom_sets["ct"][0]), top_k=k
        )
        return [h.case.case_key for h in c("Search", req).hits]

    before = top(old)
    arrived: dict[str, str] = {}

    def ingest_during_reindex(line: str) -> None:
        if line.startswith("[reindex] staged"):

            def go():
                time.sleep(STAGE_SETTLE_S)  # the gateways have read STAGED by now
                req = gateway_pb2.IngestRequest(
                    model=common_pb2.ModelRef(profile="ct-ild"),
                    images=extra_images,
                    labels=extra_rec["labels"],
                    source_id="during-reindex",
                )
                arrived["key"] = c("Ingest", req, token=WRITE).case_key

            threading.Thread(target=go, daemon=True).start()

    with LungSearchClient(f"127.0.0.1:{served['port']}", token=ADMIN, timeout=120) as sdk:
        # Same weights, but the live gallery was embedded in concurrent batches and the candidate's one
        # case at a time: float noise (<= 1e-5, tests/test_inference_determinism.py) can swap near-tied
        # neighbours, so the difference is near 0, not exactly 0.
        rep = reindex(
            sdk,
            "ct-ild",
            same.version,
            records=source,
            probes=probes,
            registry_root=str(root),
            max_drop=0.1,
            echo=ingest_during_reindex,
        )
        assert rep.gate is not None and rep.gate.passed and rep.activated, rep.gate.summary()
        assert all(abs(v["diff"]) <= 0.05 for v in rep.gate.metrics.values()), rep.gate.summary()
        assert rep.built == len(source) and rep.live == old and rep.rollback.endswith(f"ct-ild@{old}")
        assert "key" in arrived, "the concurrent ingest did not finish"
        for version in (old, same.version):  # written to both while staged
            got = c(
                "GetCase",
                gateway_pb2.GetCaseRequest(
                    model=common_pb2.ModelRef(profile="ct-ild", version=version), case_key=arrived["key"]
                ),
            )
            assert got.case.case_key == arrived["key"]
        assert not (root / "ct-ild" / "STAGED").exists()
        assert sdk.activate_model("ct-ild", old).live.version == old  # the rollback
        after = [k for k in top(old, 11) if k != arrived["key"]][:10]
        assert after == before

        # A candidate whose index is wrong (labels shuffled): the gate refuses, the live version stays.
        bad = build_registry(root, {"ct-ild": PROFILES["ct-ild"]}, version_suffix="-x")["ct-ild"]
        rng = np.random.default_rng(0)
        labels = [r.labels for r in source]
        shuffled = [dataclasses.replace(r, labels=labels[i]) for r, i in zip(source, rng.permutation(len(source)))]
        refused = reindex(
            sdk,
            "ct-ild",
            bad.version,
            records=shuffled,
            probes=probes,
            registry_root=str(root),
            max_drop=0.02,
            settle_s=0.0,
        )
        print(f"\n{rep.gate.summary()}\n{refused.gate.summary()}")
        assert not refused.gate.passed and not refused.activated
        assert refused.gate.metrics["p10"]["candidate"] < refused.gate.metrics["p10"]["live"]
    assert (
        next(m for m in c("ListModels", gateway_pb2.ListModelsRequest(profile="ct-ild")).models if m.live).model.version
        == old
    )


def test_restart_keeps_acknowledged_cases(served, ingested, phantom_sets):
    """Delete the app and start it again on the same milvus-lite file: every acknowledged case
    is found again (the ranking replica rebuilds its index from Milvus)."""
    from ray import serve

    c = served["client"]
    counts = {p: _count(c, p) for p in ("cxr-report", "ct-ild", "cxr-clip")}
    serve.delete("lungsearch")
    t0 = time.perf_counter()
    _deploy(served["args"], served["port"])
    print(f"restarted in {time.perf_counter() - t0:.1f} s")
    assert {p: _count(c, p) for p in counts} == counts
    key, rec = next(iter(ingested["cxr-clip"].items()))
    top = c(
        "Search", gateway_pb2.SearchRequest(model=common_pb2.ModelRef(profile="cxr-clip"), images=_images(rec), top_k=1)
    ).hits[0]
    assert top.case.case_key == key
    for profile, keys in ingested.items():
        for k in list(keys)[:5]:
            assert (
                c(
                    "GetCase", gateway_pb2.GetCaseRequest(model=common_pb2.ModelRef(profile=profile), case_key=k)
                ).case.case_key
                == k
            )


def test_an_ingested_report_is_stored_and_answered_de_identified(served, ingested, phantom_sets):
    """A report carrying a name, an MRN, a date and a phone number: none of them in the stored case,
    any answer or the metrics; the counts of what was removed are in the metrics (values made up)."""
    from ray import serve

    needles = ("Thaddeus", "Kirkpatrick", "77120431", "11/02/2018", "(317) 555-0187")
    report = (
        "FINDINGS: No pneumothorax. Heart size normal. IMPRESSION: Stable since 11/02/2018. "
        "Discussed with Dr. Thaddeus Kirkpatrick at (317) 555-0187. MRN 77120431."
    )
    c = served["client"]
    rec = phantom_sets["cxr"][0]
    ref = common_pb2.ModelRef(profile="cxr-report")
    res = c(
        "Ingest",
        gateway_pb2.IngestRequest(
            model=ref,
            images=_images(rec),
            labels=rec["labels"],
            report=common_pb2.Report(text=report),
            source_id="phi-report-1",
        ),
        token=WRITE,
    )
    case = c("GetCase", gateway_pb2.GetCaseRequest(model=ref, case_key=res.case_key)).case
    assert "No pneumothorax." in case.report_excerpt
    hits = c(
        "Search",
        gateway_pb2.SearchRequest(
            model=ref, images=_images(rec), report=common_pb2.Report(text="pneumothorax"), top_k=5
        ),
    )
    answers = str(case) + str(hits)
    text = serve.get_deployment_handle("Gateway", app_name="lungsearch").metrics_text.remote().result()
    for needle in needles:
        assert needle not in answers and needle not in text, needle
    removed = [ln for ln in text.splitlines() if ln.startswith("lungsearch_gateway_report_phi_removed_total")]
    assert {c for c in ("name", "identifier", "date", "phone") if any(f'category="{c}"' in ln for ln in removed)} == {
        "name",
        "identifier",
        "date",
        "phone",
    }
    c("DeleteCase", gateway_pb2.DeleteCaseRequest(model=ref, case_key=res.case_key), token=WRITE)
    audit = (Path(served["args"]["hmac_key_file"]).parent / "audit" / "gateway.jsonl").read_text()
    for needle in needles + ("phi-report-1",):
        assert needle not in audit, needle


def test_every_external_call_on_cases_is_in_the_audit_log(served, ingested, phantom_sets):
    """One PHI-free line per call: who (the token's name), the keyed case or the hit count, the
    model version, the outcome; refused calls too."""
    c = served["client"]
    path = Path(served["args"]["hmac_key_file"]).parent / "audit" / "gateway.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    ingests = [ln for ln in lines if ln["event"] == "ingest" and ln["outcome"] == "ok"]
    keys = {k for profile in ingested.values() for k in profile}
    assert keys <= {ln["case_key"] for ln in ingests if ln["who"] == "bridge"}  # the fixture's write token
    assert {ln["who"] for ln in ingests} <= {"bridge", "ops"}  # ops: the re-index test's admin token
    assert all(ln["model"].startswith(("cxr-report@", "ct-ild@", "cxr-clip@")) for ln in ingests)
    # IngestStream's request is a stream: its lines carry no image count
    assert all(ln["images"] >= 1 for ln in ingests if "images" in ln) and any("images" in ln for ln in ingests)
    n = len(lines)
    rec = phantom_sets["ct"][0]
    c("Search", gateway_pb2.SearchRequest(model=common_pb2.ModelRef(profile="ct-ild"), images=_images(rec), top_k=4))
    c.error(
        "Search",
        gateway_pb2.SearchRequest(
            model=common_pb2.ModelRef(profile="ct-ild"), images=[common_pb2.Image(data=b"not an image")]
        ),
    )
    c.error(
        "Search",
        gateway_pb2.SearchRequest(model=common_pb2.ModelRef(profile="ct-ild"), images=_images(rec)),
        token="wrong-token-" + "z" * 24,
    )
    new = [json.loads(x) for x in path.read_text().splitlines()][n:]
    assert [(ln["event"], ln["who"], ln["outcome"]) for ln in new] == [
        ("search", "viewer", "ok"),
        ("search", "viewer", "invalid_image"),
        ("search", "anonymous", "unauthenticated"),
    ]
    assert new[0]["hits"] == 4 and new[0]["top_k"] == 4 and new[0]["model"].startswith("ct-ild@")
    assert all(
        set(ln) <= {"ts", "event", "outcome", "who", "model", "hits", "top_k", "case_key", "images"} for ln in new
    )
