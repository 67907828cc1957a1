import re
import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lungsearch.serving.metrics import SCHEMA, ServingMetrics, merge_expositions

NAME_RE = re.compile(r"^lungsearch_[a-z]+_[a-z_]+$")


def test_schema_names_follow_the_convention():
    for spec in SCHEMA.values():
        assert NAME_RE.match(spec.name), spec.name
        if spec.kind == "counter":
            assert spec.name.endswith("_total")
        if "duration" in spec.name:
            assert spec.name.endswith("_seconds") and spec.buckets
        assert not {"case", "case_key", "patient", "study"} & set(spec.labels)


def _sample(m: ServingMetrics) -> None:
    with m.time("Search"):
        pass
    t = m.time("Ingest")
    with t:
        t.code, t.reason = "INVALID_ARGUMENT", "INVALID_IMAGE"
    m.observe_batch("cxr-hash", 8, 0.05)
    m.set_index("cxr-hash", "20261124-101500-ab12cd", 1000, 300000)
    m.set_model("cxr-hash", "20261124-101500-ab12cd", live=True)
    m.auth_failure("UNAUTHENTICATED")
    m.observe_request_size("Search", 12345)


def test_recording_and_values():
    m = ServingMetrics("gateway", ray_export=False)
    _sample(m)
    fams = {f.name: f for f in text_string_to_metric_families(m.render())}
    req = {tuple(sorted(s.labels.items())): s.value for s in fams["lungsearch_serve_requests"].samples}
    assert req[(("code", "OK"), ("deployment", "gateway"), ("method", "Search"))] == 1
    errs = fams["lungsearch_serve_errors"].samples
    assert [(s.labels["reason"], s.value) for s in errs] == [("INVALID_IMAGE", 1.0)]
    assert not any("created" in name for name in fams)


def test_exception_inside_timer_counts_as_internal():
    m = ServingMetrics("fusion", ray_export=False)
    with pytest.raises(RuntimeError):
        with m.time("Fuse"):
            raise RuntimeError("boom")
    assert 'code="INTERNAL"' in m.render()


@pytest.mark.parametrize("value", ["ab" * 16, "1.2.840.113619.2.55.3", "x" * 65, "has space", "new\nline"])
def test_identifier_like_label_values_are_refused(value):
    m = ServingMetrics("gateway", ray_export=False)
    with pytest.raises(ValueError):
        m.set_model(value, "v1", live=True)


def test_merge_is_valid_and_sums_duplicates():
    a, b = ServingMetrics("gateway", ray_export=False), ServingMetrics("encoding", ray_export=False)
    _sample(a)
    _sample(b)
    text = merge_expositions([a.render(), b.render()])
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    deps = {s.labels["deployment"] for s in fams["lungsearch_serve_requests"].samples}
    assert deps == {"gateway", "encoding"}
    (auth,) = fams["lungsearch_auth_failures"].samples
    assert auth.value == 2
    assert text.count("# TYPE lungsearch_serve_requests_total counter") == 1


def test_promtool_accepts_the_exposition(tmp_path):
    a, b = ServingMetrics("gateway", ray_export=False), ServingMetrics("ranking", ray_export=False)
    _sample(a)
    _sample(b)
    text = merge_expositions([a.render(), b.render()])
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus); parsed with prometheus_client instead")
    res = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_replica_exposition_carries_the_process_mask_counters():
    """The lung-mask fallback counter (library code, default registry) reaches /metrics through
    every replica's exposition, and survives the merge."""
    from lungsearch.data.masks._metrics import count_fallback

    def value(text: str) -> float:
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        return sum(
            s.value
            for s in fams["lungsearch_data_radiomics_roi_fallbacks"].samples
            if s.labels == {"modality": "cxr", "reason": "empty"} and s.name.endswith("_total")
        )

    m = ServingMetrics("encoding", ray_export=False)
    before = value(m.render()) if "roi_fallbacks" in m.render() else 0.0
    count_fallback("cxr", "empty")
    text = m.render()
    assert value(text) == before + 1
    assert (
        value(
            merge_expositions(
                [ServingMetrics("gateway", ray_export=False).render().split("# HELP lungsearch_data_")[0], text]
            )
        )
        == before + 1
    )
    assert "lungsearch_data_lung_masks" in text
