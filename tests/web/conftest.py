"""One demo-sized lungsearch app for the web tests (session scope): untrained tiny cxr-hash and ct-ild
models (tests/services/services_fixtures.py's registry builder, through tests/reliability's helpers),
a milvus-lite store, bearer tokens, gRPC and HTTP on loopback, and a gallery of **synthetic** phantom
cases ingested through the SDK (so the Gateway stores their thumbnails).

The gallery size is ``LUNGSEARCH_WEB_GALLERY`` CXR cases (default 300) plus 24 CT series; the
upload-to-first-cards figure the browser test prints is measured at that size.
``LUNGSEARCH_WEB_INDEX_ROWS=10000`` pads the cxr-hash index to that many rows with filler records
(random unit embeddings and random codes, labels copied, no report and no thumbnail) through the
internal ``Upsert`` RPC: a timing-only gallery of demo size without ingesting 10k images one by one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
N_CXR = int(os.environ.get("LUNGSEARCH_WEB_GALLERY", "300"))
N_CT = 24
INDEX_ROWS = int(os.environ.get("LUNGSEARCH_WEB_INDEX_ROWS", "0"))
ADMIN = "web-admin-token-" + "a" * 20
READ = "web-read-token-" + "r" * 20
WRITE = "web-write-token-" + "w" * 20


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


R = _load("lungsearch_tests_reliability_helpers", REPO / "tests" / "reliability" / "_reliability.py")


def _records(root: Path) -> list[dict]:
    recs = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines() if line]
    for r in recs:
        r["image_paths"] = [str(root / p) for p in r["image_paths"]]
    return recs


@pytest.fixture(scope="session")
def web_app(ray_cluster, tmp_path_factory):
    """The running app: ``.target`` (gRPC), ``.http`` (page URL), ``.data`` (phantom records)."""
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    from lungsearch.client import LungSearchClient
    from lungsearch.data import phantoms
    from services.gateway import app

    work = tmp_path_factory.mktemp("web-app")
    cards = R.build_registry(
        work / "artifacts",
        {
            "cxr-hash": ["data.image_size=64", "data.phantom.size=64"],
            "ct-ild": ["data.image_size=64", "data.phantom.size=64", "data.phantom.slices=4"],
        },
    )
    tokens = work / "tokens.yaml"
    tokens.write_text(
        yaml.safe_dump(
            {
                "tokens": [
                    {"name": "viewer", "role": "read", "token": READ},
                    {"name": "bridge", "role": "write", "token": WRITE},
                    {"name": "ops", "role": "admin", "token": ADMIN},
                ]
            }
        )
    )
    args = {
        "profiles": ["cxr-hash", "ct-ild"],
        "artifacts_dir": str(work / "artifacts"),
        "milvus_uri": str(work / "store.db"),
        "hmac_key_file": str(work / "hmac.key"),
        "tokens_file": str(tokens),
        "torch_threads": 1,
    }
    grpc_port, http_port = R.free_port(), R.free_port()
    serve.start(
        http_options=HTTPOptions(host="127.0.0.1", port=http_port),
        grpc_options=gRPCOptions(port=grpc_port, grpc_servicer_functions=R.GRPC_SERVICERS),
    )
    try:
        serve.run(app(args), name=R.APP_NAME, route_prefix="/" + R.APP_NAME, blocking=False)
        deadline = time.monotonic() + 300
        while True:
            st = serve.status().applications.get(R.APP_NAME)
            if st is not None and st.status == "RUNNING":
                break
            if st is not None and st.status in ("DEPLOY_FAILED", "UNHEALTHY") or time.monotonic() > deadline:
                raise RuntimeError(f"web app did not start: {getattr(st, 'status', None)}")
            time.sleep(0.5)
        R.wait_port(grpc_port)
        cxr = _records(Path(phantoms.generate("cxr", N_CXR, work / "cxr", seed=11, size=64, workers=1)))
        ct = _records(Path(phantoms.generate("ct", N_CT, work / "ct", seed=12, size=64, slices=4, workers=1)))
        t0 = time.perf_counter()
        with LungSearchClient(f"127.0.0.1:{grpc_port}", token=WRITE, timeout=120) as c:
            # the first few records of each kind stay out of the gallery: they are the queries
            for r in cxr[4:]:
                c.ingest(
                    r["image_paths"][0],
                    report=r.get("report") or None,
                    labels=r["labels"],
                    source_id=r["case_id"],
                    model="cxr-hash",
                )
            for r in ct[2:]:
                c.ingest_series(r["image_paths"], labels=r["labels"], model="ct-ild")
        print(f"\nweb gallery: {N_CXR - 4} CXR + {N_CT - 2} CT cases ingested in {time.perf_counter() - t0:.1f} s")
        filler = _pad_index(f"127.0.0.1:{grpc_port}", cards, INDEX_ROWS - (N_CXR - 4), [r["labels"] for r in cxr])

        class App:
            target = f"127.0.0.1:{grpc_port}"
            http = f"http://127.0.0.1:{http_port}/{R.APP_NAME}/"
            workdir = work
            data = {"cxr": cxr, "ct": ct}
            read_token, write_token = READ, WRITE
            filler_rows = filler

        yield App
    finally:
        serve.shutdown()


def _pad_index(target: str, cards, n: int, labels: list) -> int:
    """Insert ``n`` filler rows into the live cxr-hash collection (see the module docstring)."""
    if n <= 0:
        return 0
    import grpc
    import numpy as np

    from lungsearch._proto.v1 import common_pb2, ranking_pb2, ranking_pb2_grpc
    from lungsearch.serving import convert

    card = next(c for c in cards if c.profile == "cxr-hash")
    ref = common_pb2.ModelRef(profile=card.profile, version=card.version)
    rng = np.random.default_rng(5)
    t0 = time.perf_counter()
    with grpc.insecure_channel(target) as ch:
        stub = ranking_pb2_grpc.RankingStub(ch)
        for start in range(0, n, 500):
            req = ranking_pb2.UpsertRequest(model=ref)
            for i in range(start, min(n, start + 500)):
                emb = rng.standard_normal(card.embedding_dim).astype(np.float32)
                emb /= np.linalg.norm(emb)
                case = common_pb2.Case(
                    case_key=f"{i:032x}",
                    modality=common_pb2.MODALITY_CXR,
                    view=common_pb2.VIEW_PA,
                    labels=labels[i % len(labels)],
                    model=ref,
                    num_images=1,
                )
                req.records.add(
                    case=case,
                    embedding=convert.tensor_to_proto(emb),
                    code=convert.code_to_proto(
                        rng.integers(0, 256, card.code_bits // 8, dtype=np.uint8).tobytes(), card.code_bits
                    ),
                )
            stub.Upsert(req, timeout=300, metadata=[("authorization", f"Bearer {ADMIN}")])
    print(f"web gallery: {n} filler rows upserted in {time.perf_counter() - t0:.1f} s")
    return n
