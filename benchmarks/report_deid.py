"""Report de-identification on the real IU X-ray reports with synthetic PHI inserted (seeded).

Measures :func:`lungsearch.data.report_deid.scrub_report` (Presidio 2.2, pattern recognizers, no
model): recall of inserted PHI (target >= 0.99), the share of tokens of the PHI-free reports left
unchanged (target >= 0.98), recall of context-free bare names (reported, not a target), and the time
per report. The reports are real (torchxrayvision's NLMCXR_reports.tgz); every PHI value is made up
(:mod:`lungsearch.data.report_deid_eval`).

    .venv/bin/python -m benchmarks.report_deid                                    # prints JSON
    .venv/bin/python -m benchmarks.report_deid --out benchmarks/results/report_deid.json
    .venv/bin/python -m benchmarks.report_deid --limit 500 --seed 1               # a quick run
    .venv/bin/python -m benchmarks.report_deid --limit 500 --compare-philter      # needs philter-lite==0.6.0

``--compare-philter`` also measures philter-lite on the same reports and PHI. philter-lite needs NLTK's
``averaged_perceptron_tagger_eng`` data (a download, absent offline), so ``nltk.pos_tag`` is replaced
by a stand-in that tags every token as a noun: the numbers are philter's filters with that tagger,
not philter as designed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from benchmarks._util import provenance, write_json

__all__ = ["main", "run"]

TARGET_RECALL = 0.99
TARGET_KEPT = 0.98


def run(*, limit: int | None = None, seed: int = 0, items_per_report: int = 2) -> dict:
    from lungsearch.data.report_deid import scrub_report
    from lungsearch.data.report_deid_eval import evaluate, iu_xray_reports

    reports = iu_xray_reports(limit=limit)
    t0 = time.perf_counter()
    scrub_report("warm up: Dr. Roe, 01/02/2003")  # engine build (spaCy import) is not per report
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = evaluate(lambda s: scrub_report(s).text, reports, seed=seed, items_per_report=items_per_report)
    seconds = time.perf_counter() - t0
    res.update(
        {
            "scrubber": "presidio-analyzer/anonymizer 2.2 pattern recognizers + lungsearch patterns (no NLP model)",
            "corpus": (
                "IU X-ray (OpenI NLMCXR) reports from torchxrayvision; "
                "PHI synthetic, inserted at random sentence boundaries"
            ),
            "engine_build_s": build_s,
            "ms_per_scrub": 1e3 * seconds / max(1, 2 * len(reports)),
            "targets": {"recall": TARGET_RECALL, "kept": TARGET_KEPT},
            "meets_targets": res["recall"] >= TARGET_RECALL and res["kept"] >= TARGET_KEPT,
            "alternatives": {
                "philter-lite 0.6": "not runnable offline: detect_phi calls nltk.pos_tag, which needs NLTK's "
                "averaged_perceptron_tagger_eng data (a download; LookupError here)",
            },
        }
    )
    return res


def run_philter(*, limit: int | None = None, seed: int = 0, items_per_report: int = 2) -> dict:
    """philter-lite 0.6 (``philter_delta.toml``) with a stand-in POS tagger; see the module docstring."""
    try:
        import nltk
        import philter_lite
    except ImportError as exc:
        return {"error": f"not installed: {exc.name}"}
    import importlib.resources

    from lungsearch.data.report_deid_eval import evaluate, iu_xray_reports

    nltk.pos_tag = lambda tokens, *a, **k: [(t, "NN") for t in tokens]  # the tagger data is a download
    filters = philter_lite.load_filters(
        str(importlib.resources.files("philter_lite") / "configs" / "philter_delta.toml")
    )

    def scrub(text: str) -> str:
        include, _, _ = philter_lite.detect_phi(text, filters)
        return philter_lite.transform_text_asterisk(text, include)

    reports = iu_xray_reports(limit=limit)
    t0 = time.perf_counter()
    res = evaluate(scrub, reports, seed=seed, items_per_report=items_per_report)
    res["ms_per_scrub"] = 1e3 * (time.perf_counter() - t0) / max(1, 2 * len(reports))
    res["note"] = "nltk.pos_tag replaced by an every-token-is-NN stand-in (NLTK tagger data not available offline)"
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="first N reports only (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--items-per-report", type=int, default=2)
    ap.add_argument("--out", default=None, help="write JSON here")
    ap.add_argument("--compare-philter", action="store_true", help="also measure philter-lite (if installed)")
    args = ap.parse_args(argv)
    res = run(limit=args.limit, seed=args.seed, items_per_report=args.items_per_report)
    if args.compare_philter:
        res["philter_lite"] = run_philter(limit=args.limit, seed=args.seed, items_per_report=args.items_per_report)
    res["provenance"] = provenance("report_deid", seed=args.seed, argv=argv)
    if args.out:
        write_json(args.out, res)
    print(json.dumps(res, indent=2, default=float))
    return 0 if res["meets_targets"] else 1


if __name__ == "__main__":
    sys.exit(main())
