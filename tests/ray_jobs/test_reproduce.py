"""The verdicts docs/results.md prints: each paper claim is checked against the measured rows."""

from __future__ import annotations

from ray_jobs.reproduce import _claims


def test_cxr_report_verdicts():
    rows = {"CMA+SG-Bi-LSTM (ours)": {"accuracy": 0.9, "auc": 0.95, "infer_ms_per_case": 2.0},
            "ResNet (image only)": {"accuracy": 0.7, "auc": 0.97},
            "CMA+Bi-LSTM": {"accuracy": 0.8, "infer_ms_per_case": 3.0}, "Bi-LSTM": {"accuracy": 0.85}}
    got = {c: ok for c, ok, _ in _claims("cxr-report", rows, None)}
    assert got["fused image+report beats image-only on accuracy (paper 1, Table 2)"] is True
    assert got["fused image+report beats image-only on auc (paper 1, Table 2)"] is False
    assert got["SG-Bi-LSTM infers faster than Bi-LSTM (paper 1, Table 3: -60 %)"] is True
    assert got["cross-modal attention beats concatenation (CMA+Bi-LSTM vs Bi-LSTM, accuracy)"] is False


def test_hash_and_clip_verdicts():
    rows = {f"ours, {b} bits": {"map10": m} for b, m in ((16, 0.5), (32, 0.6), (48, 0.55), (64, 0.7))}
    rows["ours-A (no attention), 64 bits"] = {"map10": 0.72}
    got = {c: ok for c, ok, _ in _claims("cxr-hash", rows, None)}
    assert got["mAP@10 rises with code length (paper 5's observation)"] is False
    assert got["the attention branch improves mAP@10 (paper 5, Table 4)"] is False
    probes = {"pretrained (subgraph CLIP)": {"1%": {"auc": 0.7}}, "random init": {"1%": {"auc": 0.6}}}
    (claim, ok, nums), = _claims("cxr-clip", {}, probes)
    assert ok is True and "1%" in claim and "0.700 vs 0.600" in nums
