"""DICOM receive throughput: CT instances/s from a real Orthanc's C-STORE push to searchable.

A real Orthanc (Debian's package, started on free loopback ports with a generated config, as in
tests/pacs) holds phantom CT series; its REST API pushes them (``/modalities/lungsearch/store``,
synchronous) to lungsearch's receiver (``lungsearch.pacs.Receiver``), which spools every instance
(fsync), assembles each series and ingests it through the SDK. The clock stops when every series
is searchable (the platform returns its case for a query made of the series' own images).

Platforms:

* ``--platform fake`` (default): the in-memory LungSearch gRPC servicer of tests/client on a real
  socket: no CNN, no radiomics, so this is the receiver's own throughput (wire, decode check,
  spool, assembly, the Ingest RPC).
* ``--platform real``: the real Serve app (Ray, tiny untrained ct-ild model from
  tests/services' registry builder, milvus-lite): the whole ingest path, radiomics included.

Stage breakdown (seconds summed over instances, from the receiver's own histograms):
``decode`` (pydicom parse of the received data set), ``check`` (lungsearch.data.io pixel decode,
the platform's own decoder), ``spool`` (fsynced write); ``push_s`` (Orthanc's whole push),
``release_to_ingest_s``, ``ingest_s`` (the Ingest calls), ``searchable_s`` (until a search finds
every case).

All data are phantoms (synthetic). The machine is shared and loaded: the load average is recorded.

    .venv/bin/python -m benchmarks.dicom_receive --quick
    .venv/bin/python -m benchmarks.dicom_receive --series 2 --slices 60 --size 512
    .venv/bin/python -m benchmarks.dicom_receive --platform real --series 2 --slices 12 --size 256

Target (shared/TARGETS.md): >= 20 CT instances/s on 2 cores, push to searchable.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._util import format_table, provenance, write_json

__all__ = ["main", "run"]

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "dicom_receive.json"
TARGET_INSTANCES_PER_S = 20.0


def _pacs_helpers():
    path = REPO / "tests" / "pacs" / "_pacs.py"
    spec = importlib.util.spec_from_file_location("_pacs", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["_pacs"] = mod
    spec.loader.exec_module(mod)
    return mod


def _stage_sums() -> dict[str, float]:
    from lungsearch.pacs import metrics

    out = {}
    for stage in ("decode", "check", "spool"):
        out[stage] = float(
            metrics.REGISTRY.get_sample_value("lungsearch_pacs_cstore_stage_seconds_sum", {"stage": stage}) or 0.0
        )
    out["ingest_calls"] = float(metrics.REGISTRY.get_sample_value("lungsearch_pacs_series_ingest_seconds_sum") or 0.0)
    return out


def _start_real(work: Path):
    from lungsearch.runtime import init_ray

    R = _pacs_helpers().reliability_module()
    init_ray(address="", num_cpus=2, log_to_driver=False)
    import torch

    from lungsearch.config import load_profile
    from lungsearch.models import create_model
    from lungsearch.registry import save_model

    # A tiny untrained ct-ild model, as tests/services builds them, with the profile's default limits
    # (the test builders' tight limits would refuse a real-sized series).
    cfg = load_profile("ct-ild", ["data.image_size=64", "data.phantom.size=64", "data.phantom.slices=4"])
    torch.manual_seed(0)
    card = save_model(
        create_model(cfg).eval(),
        cfg,
        metrics={"untrained": 1.0},
        data_fingerprint="none",
        synthetic_data=True,
        root=work / "artifacts",
        version=f"20260101-000000-{cfg.fingerprint()[:6]}",
    )
    cards = [card]
    args = {
        "profiles": ["ct-ild"],
        "artifacts_dir": str(work / "artifacts"),
        "milvus_uri": str(work / "store.db"),
        "hmac_key_file": str(work / "hmac.key"),
        "insecure_local": True,
        "torch_threads": 1,
    }
    return R.start_serve_app(work, args, cards)


def run(*, series: int, slices: int, size: int, platform: str, settle_s: float, work: Path) -> dict[str, Any]:
    P = _pacs_helpers()
    why = P.orthanc_missing()
    if why:
        raise SystemExit(f"cannot run: {why}")
    from lungsearch.client import LungSearchClient
    from lungsearch.pacs.config import load_receiver_config
    from lungsearch.pacs.scp import Receiver

    t = time.perf_counter()
    data = P.ct_series(work / "phantoms", n=series, slices=slices, size=size, seed=7)
    gen_s = time.perf_counter() - t
    n_instances = sum(len(s) for s in data)
    scp_port = P.free_port()
    orthanc = P.Orthanc(work / "orthanc", lungsearch_port=scp_port).start()
    app = fake = None
    try:
        if platform == "real":
            app = _start_real(work)
            target, profiles = app.target, {"ct": "ct-ild"}
        else:
            fake = P.fake_platform_module().Server()
            target, profiles = fake.target, {"ct": "ct-ild"}
        studies = []
        for s in data:
            answers = [orthanc.upload(b) for b in s]
            studies.append(answers[0]["ParentStudy"])
        cfg = load_receiver_config(
            None,
            port=scp_port,
            spool_dir=str(work / "spool"),
            audit_log=str(work / "audit.jsonl"),
            settle_s=settle_s,
            target=target,
            ingest_timeout_s=600,
            linger_s=0,
            callers=[{"ae_title": P.ORTHANC_AET, "site": "bench", "profiles": profiles}],
        )
        # Side by side: the same push to a bare pynetdicom SCP that answers Success and keeps nothing
        # (the wire + Orthanc's own cost on this machine right now), before lungsearch's receiver.
        bare_port = P.free_port()
        orthanc._request(
            "PUT", "/modalities/bare", json.dumps({"AET": "BARE", "Host": "127.0.0.1", "Port": bare_port}).encode()
        )
        from pynetdicom import AE, evt

        bare_ae = AE(ae_title="BARE")
        from lungsearch.pacs.scp import IMAGE_SOP_CLASSES, supported_transfer_syntaxes

        for uid in IMAGE_SOP_CLASSES:
            bare_ae.add_supported_context(uid, supported_transfer_syntaxes())
        bare = bare_ae.start_server(
            ("127.0.0.1", bare_port), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)]
        )
        try:
            tb = time.perf_counter()
            orthanc.push(studies, modality="bare", timeout=600)
            bare_push_s = time.perf_counter() - tb
        finally:
            bare.shutdown()
        before = _stage_sums()
        with Receiver(cfg) as rx, LungSearchClient(target, timeout=600) as client:
            t0 = time.perf_counter()
            orthanc.push(studies, timeout=600)
            t_push = time.perf_counter()
            P.wait_for(lambda: len([x for x in rx.audit.read() if x["event"] == "ingest"]) == len(data), 1200, 0.05)
            t_ingested = time.perf_counter()
            keys = [x["case_key"] for x in rx.audit.read() if x["event"] == "ingest" and x["outcome"] == "ok"]
            if len(keys) != len(data):
                raise RuntimeError(f"only {len(keys)} of {len(data)} series ingested: {rx.audit.read()}")
            for s in data:  # searchable: its own images find it (the fake's 8 MiB limit: a few slices)
                query = s if platform == "real" else s[:2]
                P.wait_for(
                    lambda q=query: (
                        set(keys)
                        & {h.case.case_key for h in client.search(images=q, top_k=len(data) + 1, model="ct-ild")}
                    ),
                    600,
                    0.2,
                )
            t_search = time.perf_counter()
            audit = rx.audit.read()
        after = _stage_sums()
    finally:
        orthanc.stop()
        if fake is not None:
            fake.stop()
        if app is not None:
            from ray import serve

            serve.shutdown()
    total = t_search - t0
    stages = {k: after[k] - before[k] for k in after}
    result = {
        "platform": platform,
        "series": series,
        "slices": slices,
        "size": size,
        "instances": n_instances,
        "instance_bytes": len(data[0][0]),
        "settle_s": settle_s,
        "phantom_generation_s": round(gen_s, 2),
        "push_to_searchable_s": round(total, 3),
        "instances_per_s": round(n_instances / total, 2),
        # Without the final check (a Search with each series' own images, i.e. a second encode of it).
        "instances_per_s_push_to_ingested": round(n_instances / (t_ingested - t0), 2),
        "target_instances_per_s": TARGET_INSTANCES_PER_S,
        "meets_target": n_instances / total >= TARGET_INSTANCES_PER_S,
        "bare_scp_push_s": round(bare_push_s, 3),
        "bare_scp_instances_per_s": round(n_instances / bare_push_s, 2),
        "receiver_push_vs_bare_scp": round((t_push - t0) / bare_push_s, 2),
        "stages_s": {
            "push_s (Orthanc C-STORE job, wire + handler)": round(t_push - t0, 3),
            "handler.decode_s (sum)": round(stages["decode"], 3),
            "handler.check_s (sum, lungsearch.data.io decode)": round(stages["check"], 3),
            "handler.spool_s (sum, fsync)": round(stages["spool"], 3),
            "release_to_all_ingested_s": round(t_ingested - t_push, 3),
            "ingest_calls_s (sum)": round(stages["ingest_calls"], 3),
            "searchable_check_s": round(t_search - t_ingested, 3),
        },
        "ingest_outcomes": sorted({x["outcome"] for x in audit if x["event"] == "ingest"}),
        "data": "phantom CT series (synthetic)",
    }
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--platform", choices=["fake", "real"], default="fake")
    p.add_argument("--series", type=int, default=2)
    p.add_argument("--slices", type=int, default=60)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--settle-s", type=float, default=2.0)
    p.add_argument("--quick", action="store_true", help="1 series x 20 slices at 256 px")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args(argv)
    if args.quick:
        args.series, args.slices, args.size = 1, 20, 256
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="lungsearch-dicom-bench-") as tmp:
        res = run(
            series=args.series,
            slices=args.slices,
            size=args.size,
            platform=args.platform,
            settle_s=args.settle_s,
            work=Path(tmp),
        )
    res["loadavg_before"] = [round(x, 2) for x in load]
    res["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    res["cpus"] = os.cpu_count()
    out = {"provenance": provenance("dicom_receive", seed=7, argv=sys.argv[1:] if argv is None else argv), **res}
    write_json(args.out, out)
    print(format_table([[k, v] for k, v in res["stages_s"].items()], ["stage", "seconds"]))
    print(
        "bare pynetdicom SCP (answers Success, stores nothing): push "
        f"{res['bare_scp_push_s']} s = {res['bare_scp_instances_per_s']} instances/s; "
        f"lungsearch receiver's push / bare = {res['receiver_push_vs_bare_scp']}x"
    )
    print(
        f"\n{res['instances']} CT instances ({res['size']} px, {res['platform']} platform): "
        f"{res['instances_per_s']} instances/s push -> searchable (target {TARGET_INSTANCES_PER_S}); "
        f"load average {res['loadavg_before']} -> {res['loadavg_after']}; phantom data (synthetic)"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
