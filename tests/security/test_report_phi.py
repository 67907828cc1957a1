"""Report text on its way to storage: a report carrying a name, an MRN, a date and a phone number must
leave none of them in what is stored (the excerpt) or counted (metrics). Values are made up here.

The end-to-end part (ingest through a live gateway, then the stored case, the answers and /metrics) is
``tests/services/test_gateway.py::test_an_ingested_report_is_stored_and_answered_de_identified``.
"""

from __future__ import annotations

import pytest

pytest.importorskip("presidio_analyzer")

from lungsearch.data.report_deid import scrub_report  # noqa: E402
from lungsearch.serving import pipeline  # noqa: E402
from lungsearch.serving.metrics import ServingMetrics  # noqa: E402

NEEDLES = ("Thaddeus", "Kirkpatrick", "77120431", "11/02/2018", "(317) 555-0187")
REPORT = (
    "FINDINGS: No pneumothorax. Heart size normal. IMPRESSION: Stable since 11/02/2018. "
    "Discussed with Dr. Thaddeus Kirkpatrick at (317) 555-0187. MRN 77120431."
)


def _clean(text: str) -> bool:
    return not any(n in text for n in NEEDLES)


def test_scrubbed_excerpt_and_metrics_carry_no_needle():
    res = scrub_report(REPORT)
    excerpt = pipeline.report_excerpt(res.text)
    assert _clean(excerpt) and "No pneumothorax." in excerpt
    m = ServingMetrics("gateway", ray_export=False)
    m.observe_report_scrub(res.counts)
    assert _clean(m.render())
    assert res.counts == {"date": 1, "name": 1, "phone": 1, "identifier": 1}


def test_every_stored_path_scrubs_before_the_excerpt(monkeypatch):
    """Ingest (the Gateway) and build_index take the report through lungsearch.inference.deidentify_report
    before report_excerpt; the live Ingest is checked end to end in tests/services/test_gateway.py."""
    from lungsearch import inference

    res = inference.deidentify_report(REPORT)
    assert _clean(inference.report_excerpt(res.text)) and res.counts
    assert inference.deidentify_report("").text == "" and not inference.deidentify_report("  ").counts
    import inspect

    from lungsearch.training import indexing
    from services import gateway

    assert "deidentify_report(" in inspect.getsource(indexing.build_index)
    assert "deidentify_report" in inspect.getsource(gateway.Gateway.func_or_class._deidentified_report)
