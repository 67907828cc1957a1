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
    assert "-33.3 %" in next(n for c, _, n in _claims("cxr-report", rows, None) if c.startswith("SG-Bi-LSTM"))
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


def test_cnn_kfold_verdicts_and_table():
    from lungsearch.config import load_profile
    from ray_jobs.reproduce import _kfold_md

    rows = {"LDC-Model (ours)": {"accuracy": 0.50}, "ResNet18": {"accuracy": 0.55}}
    kfold = {"LDC-Model (ours)": [{"accuracy": a, "f1": 0.4} for a in (0.60, 0.62, 0.58, 0.60)],
             "ResNet18": [{"accuracy": a} for a in (0.50, 0.52, 0.54, 0.52)]}
    got = {c: (ok, nums) for c, ok, nums in _claims("cxr-cnn", rows, None, kfold)}
    ok, nums = got["LDC-Model (ours) has the highest 4-fold mean accuracy (paper 2, Table 5)"]
    assert ok is True and nums.startswith("0.600 ± 0.014 vs ResNet18 0.520")
    agree = next(v for c, v in got.items() if c.startswith("K-fold accuracy agrees"))
    assert agree[0] is False and agree[1].endswith("vs 0.500")  # 0.60 ± 0.014 is not within a std of 0.50
    assert got["LDC-Model beats the ResNet baseline on accuracy (paper 2, Table 3)"][0] is False
    md = "\n".join(_kfold_md({"kfold": kfold, "cfg": load_profile("cxr-cnn"), "kfold_seconds": 12.0,
                              "kfold_report_dirs": {"LDC-Model (ours)": "r/a"}}))
    assert "4-fold cross-validation" in md and "PHANTOM" in md and "| ResNet18 | 0.520 ± 0.014 | – | – | – |" in md
