"""The radiomics whole-thorax fallback reaches the answers: prepare_study -> StudyInput ->
RadiomicsRoi (convert) -> the SDK's results; profiles without radiomics never set it.
The same through the real Serve app: tests/services/test_gateway.py::test_radiomics_fallback_*."""

import numpy as np
from serving_fixtures import make_study

from lungsearch._proto.v1 import encoding_pb2, gateway_pb2
from lungsearch.client import Classification, IngestResult, RadiomicsRoi, SearchResult
from lungsearch.serving import convert, pipeline


def _no_lung_ct(slices: int = 2):
    """A CT series of soft tissue only (an abdomen-like slice: body, no lung): the mask is empty."""
    study = make_study("ct", slices=slices, seed=3)
    yy, xx = np.mgrid[:80, :80]
    body = (yy - 40) ** 2 / 0.9 + (xx - 40) ** 2 < 36**2
    rng = np.random.default_rng(3)
    for im in study.images:
        im.pixels[...] = np.where(body, 40.0, -1000.0) + rng.normal(0, 10, body.shape)
    return study


def test_a_failed_lung_mask_is_carried_by_the_study_input(tiny_models):
    model, cfg = tiny_models["ct-ild"]
    bad = pipeline.prepare_study(_no_lung_ct(), None, cfg, model)
    assert bad.roi_fallback and bad.roi_reason == "empty"
    assert np.isfinite(bad.radiomics).any()  # the whole thorax was read, not nothing
    good = pipeline.prepare_study(make_study("ct", slices=3, seed=1), None, cfg, model)
    assert not good.roi_fallback and good.roi_reason == ""


def test_profiles_without_radiomics_never_set_it(tiny_models):
    model, cfg = tiny_models["cxr-hash"]
    blank = make_study("cxr")
    blank.images[0].pixels[...] = 0.5  # a uniform image: its lung mask would be empty
    item = pipeline.prepare_study(blank, None, cfg, model)
    assert item.radiomics is None and not item.roi_fallback and item.roi_reason == ""
    assert convert.radiomics_roi_to_proto(item.roi_fallback, item.roi_reason) is None


def test_embed_cases_keeps_the_flag(tiny_models):
    from lungsearch.inference import embed_cases, prepare_case

    model, cfg = tiny_models["ct-ild"]
    ex = model.radiomics.extractor
    cases = [
        prepare_case(_no_lung_ct(), cfg, extractor=ex),
        prepare_case(make_study("ct", slices=2), cfg, extractor=ex),
    ]
    out = embed_cases(model, cases)
    assert (out[0].roi_fallback, out[0].roi_reason) == (True, "empty")
    assert (out[1].roi_fallback, out[1].roi_reason) == (False, "")


def test_proto_and_sdk():
    roi = convert.radiomics_roi_to_proto(True, "area")
    assert roi.whole_thorax and roi.reason == "area"
    assert roi.message == "radiomics read the whole thorax: lung mask area"
    enc = encoding_pb2.EncodeResponse(radiomics_roi=roi)
    ingest = convert.copy_radiomics_roi(enc, gateway_pb2.IngestResponse(case_key="k", created=True))
    res = IngestResult.from_proto(ingest)
    assert res.radiomics_roi == RadiomicsRoi(True, "area", roi.message)
    assert res.to_dict()["radiomics_roi"] == {"whole_thorax": True, "reason": "area", "message": roi.message}
    # unset stays unset, end to end
    plain = convert.copy_radiomics_roi(encoding_pb2.EncodeResponse(), gateway_pb2.SearchResponse())
    assert not plain.HasField("radiomics_roi") and SearchResult.from_proto(plain).radiomics_roi is None
    cls = Classification.from_proto(convert.copy_radiomics_roi(enc, gateway_pb2.ClassifyResponse()))
    assert cls.radiomics_roi.reason == "area"
