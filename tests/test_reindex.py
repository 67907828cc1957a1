"""The re-index gate's decision and scores (lungsearch.reindex), and the registry's STAGED pointer.
The whole flow through a served application is in tests/services/test_gateway.py."""

from __future__ import annotations

import numpy as np
import pytest

from lungsearch.errors import InvalidRequestError, ModelNotFoundError
from lungsearch.reindex import gate, probe_scores


def test_probe_scores_are_ap_and_precision_at_10_without_the_probe_itself():
    hits = [("self", ("a",)), ("x1", ("a",)), ("x2", ("b",)), ("x3", ("a", "c"))] + [
        (f"y{i}", ("b",)) for i in range(8)
    ]
    ap, p = probe_scores(hits, "self", ("a",))
    # without "self": relevant at ranks 1 and 3 -> AP = (1/1 + 2/3) / 2; P@10 = 2/10
    assert ap == pytest.approx((1 + 2 / 3) / 2) and p == pytest.approx(0.2)
    assert probe_scores(hits, "", ("z",)) == (0.0, 0.0)


def test_an_identical_candidate_passes_with_a_zero_interval():
    rng = np.random.default_rng(0)
    live = rng.uniform(size=(30, 2))
    res = gate(live, live.copy(), max_drop=0.0)
    assert res.passed and res.n_probes == 30
    assert all(v["lo"] == v["hi"] == v["diff"] == 0.0 for v in res.metrics.values())
    assert "passed" in res.summary()


def test_a_worse_candidate_is_refused_with_its_numbers():
    rng = np.random.default_rng(1)
    live = rng.uniform(0.5, 1.0, size=(40, 2))
    worse = live - 0.2 + rng.normal(0, 0.02, size=live.shape)
    res = gate(live, worse, max_drop=0.05)
    assert not res.passed and res.reason
    assert res.metrics["map10"]["hi"] < -0.05 and res.metrics["map10"]["candidate"] < res.metrics["map10"]["live"]
    assert "refused" in res.summary()


def test_an_uncertain_candidate_is_refused_and_more_probes_let_a_slightly_better_one_pass():
    rng = np.random.default_rng(2)
    live = rng.uniform(size=(5, 2))
    noisy = np.clip(live + rng.normal(0, 0.3, size=live.shape), 0, 1)
    assert not gate(live, noisy, max_drop=0.02).passed  # 5 probes cannot show "no worse"
    many = rng.uniform(size=(400, 2))
    better = np.clip(many + 0.05 + rng.normal(0, 0.02, size=many.shape), 0, 1)
    assert gate(many, better, max_drop=0.02).passed


def test_gate_input_errors():
    with pytest.raises(InvalidRequestError):
        gate(np.zeros((3, 2)), np.zeros((4, 2)), max_drop=0.0)
    res = gate(np.zeros((1, 2)), np.zeros((1, 2)), max_drop=0.0)
    assert not res.passed and "fewer than 2" in res.reason


def test_staged_pointer(tmp_path):
    import torch

    from lungsearch import registry
    from lungsearch.config import load_profile
    from lungsearch.models import create_model

    cfg = load_profile("cxr-cnn", ["data.image_size=32"])
    torch.manual_seed(0)
    card = registry.save_model(
        create_model(cfg).eval(),
        cfg,
        metrics={},
        data_fingerprint="none",
        synthetic_data=True,
        root=tmp_path,
        version="20260101-000000-staged",
    )
    assert registry.staged_version("cxr-cnn", root=tmp_path) is None
    registry.stage("cxr-cnn", card.version, root=tmp_path)
    assert registry.staged_version("cxr-cnn", root=tmp_path) == card.version
    assert registry.live_version("cxr-cnn", root=tmp_path) is None  # staging is not going live
    with pytest.raises(ModelNotFoundError):
        registry.stage("cxr-cnn", "20990101-000000-nothere", root=tmp_path)
    registry.unstage("cxr-cnn", root=tmp_path)
    registry.unstage("cxr-cnn", root=tmp_path)  # idempotent
    assert registry.staged_version("cxr-cnn", root=tmp_path) is None
