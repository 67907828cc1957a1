"""The verdict harness (ray_jobs/reproduce.py) on made-up per-case outcomes: every claim is a
paired-bootstrap verdict, collapsed variants make their comparisons inconclusive, and the page
names the data kind the data says."""

from __future__ import annotations

import numpy as np

from lungsearch.evaluation.percase import to_json
from ray_jobs.reproduce import _claims, _page, _write

N = 120


def _retrieval(p_hit: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    hits = (rng.random(N) < p_hit).astype(float)
    return {"ap10": hits, "ndcg_all": 0.5 + 0.3 * hits, "p_at_1": hits, "embedding": rng.normal(size=(N, 8))}


def _refs() -> dict:
    return {
        "chance (random ranking, exact; majority class; AUC 0.5)": {
            "ap10": np.full(N, 0.45),
            "ndcg_all": np.full(N, 0.6),
            "p_at_1": np.full(N, 0.45),
        }
    }


def _by_name(claims):
    return {c["claim"]: c for c in claims}


def test_hash_claims_are_bootstrap_verdicts():
    runs = {
        f"ours, {b} bits": [{"outcome": _retrieval(p, 10 * b + s)} for s in range(3)]
        for b, p in ((16, 0.50), (32, 0.51), (48, 0.52), (64, 0.90))
    }
    runs["ours-A (no attention), 64 bits"] = [{"outcome": _retrieval(0.5, 900 + s)} for s in range(3)]
    got = _by_name(_claims("cxr-hash", runs, _refs(), {}, N, 500, [], main="ours, 64 bits"))
    near = got["paper 5 Table 2: mAP@10 rises with code length (32 bits vs 16 bits)"]
    assert near["verdict"] == "inconclusive" and near["lo"] < 0 < near["hi"] and near["seeds"] == 3
    assert got["paper 5 Table 2: mAP@10 at 64 bits beats 16 bits"]["verdict"] == "yes"
    assert got["paper 5 Table 4: the attention branch improves mAP@10 (64 bits vs -A)"]["verdict"] == "yes"
    assert "95 % CI" in got["paper 5 Table 4: the attention branch improves mAP@10 (64 bits vs -A)"]["numbers"]
    main = next(c for c in got.values() if c["claim"].endswith("beats chance on map10"))
    assert main["verdict"] == "yes" and main["seeds"] == 3
    # no claim passes merely because a number was printed
    assert not any("reported at" in c for c in got)


def test_collapsed_variant_is_inconclusive_not_won():
    runs = {
        "ours, 64 bits": [{"outcome": _retrieval(0.9, s)} for s in range(3)],
        "ours-A (no attention), 64 bits": [{"outcome": _retrieval(0.1, 50 + s)} for s in range(3)],
    }
    got = _by_name(_claims("cxr-hash", runs, _refs(), {}, N, 500, ["ours-A (no attention), 64 bits"]))
    c = got["paper 5 Table 4: the attention branch improves mAP@10 (64 bits vs -A)"]
    assert c["lo"] > 0 and c["verdict"] == "inconclusive" and "collapsed" in c["numbers"]
    assert got["paper 5 Table 2: mAP@10 at 64 bits beats 16 bits"]["verdict"] == "not measured"


def _section(kind: str) -> dict:
    runs = {"ours, 64 bits": [to_json(_retrieval(0.9, s)) for s in range(3)]}
    return {
        "profile": "cxr-hash",
        "paper": 5,
        "data_kind": kind,
        "n_test": N,
        "n_gallery": 400,
        "dataset": "some data",
        "command": "python ray_jobs/reproduce.py --quick",
        "seconds": 12.0,
        "config": "configs/cxr-hash.yaml",
        "overrides": [],
        "outcomes": runs,
        "references": {k: to_json(v) for k, v in _refs().items()},
        "collapsed": {"ours, 64 bits": []},
        "claims": [{"claim": "c", "verdict": "yes", "numbers": "n"}],
        "notes": [],
        "complete": True,
    }


def test_page_names_the_data_kind_and_the_published_numbers(tmp_path):
    meta = {"written": "now", "command": "cmd", "run_dir": str(tmp_path), "seeds": 3, "machine": "m", "status": "done"}
    real = _page([_section("REAL")], meta, 100)
    assert "Data: REAL" in real and "synthetic" not in real.lower().split("## cxr-hash")[0]
    fake = _page([_section("PHANTOM (synthetic)")], meta, 100)
    assert "Data: PHANTOM (synthetic)" in fake and "mAP@10 0.633" in fake  # the paper's 64-bit number beside ours
    assert "| *chance (random ranking" in fake and "| ours, 64 bits | 3 |" in fake


def test_run_folder_and_no_silent_publish(tmp_path):
    import argparse

    docs = tmp_path / "docs_results_untouched"
    meta = {
        "written": "now",
        "command": "cmd",
        "run_dir": str(tmp_path / "run"),
        "seeds": 3,
        "machine": "m",
        "status": "s",
    }
    _write(tmp_path / "run", [_section("PHANTOM (synthetic)")], meta, argparse.Namespace(boot=100))
    assert {p.name for p in (tmp_path / "run").iterdir()} == {"results.md", "results.json", "cxr-hash.outcomes.json"}
    assert not docs.exists()


def test_calibration_section():
    cal = {
        "cxr": {
            "n": 400,
            "size": 128,
            "seed": 2,
            "by_signal": {
                "1": {
                    "chance": {"majority_accuracy": 0.485, "balanced_accuracy": 0.1667},
                    "image_stats_logreg": {"accuracy": 0.32, "balanced_accuracy": 0.33, "macro_auc_ovr": 0.66},
                    "report_tfidf_logreg": {"accuracy": 0.87, "balanced_accuracy": 0.78, "macro_auc_ovr": 0.97},
                }
            },
        },
        "ct": {
            "n": 120,
            "size": 64,
            "slices": 4,
            "signal": 1.0,
            "features": "9 HU stats",
            "accuracy": 0.9,
            "chance_majority": 0.25,
        },
    }
    meta = {
        "written": "now",
        "command": "cmd",
        "run_dir": "r",
        "seeds": 3,
        "machine": "m",
        "status": "s",
        "calibration": cal,
    }
    page = _page([], meta, 100)
    assert "| 1 | 0.485 / 0.167 / 0.5 | 0.320 / 0.330 / 0.660 | 0.870 / 0.780 / 0.970 |" in page
    assert "accuracy **0.900** (majority class 0.250)" in page


def test_the_bit_sweep_is_drawn_with_its_intervals_and_the_chance_line(tmp_path):
    import argparse

    from ray_jobs.reproduce import BITS_FIGURE, FIG_DIR, _bits_points

    sec = _section("PHANTOM (synthetic)")
    sec["outcomes"] = {
        f"ours, {b} bits": [to_json(_retrieval(p, 10 * b + s)) for s in range(3)]
        for b, p in ((16, 0.5), (32, 0.6), (64, 0.9))
    }
    points, chance = _bits_points(sec, 200)
    assert [b for b, *_ in points] == [16, 32, 64] and abs(chance - 0.45) < 1e-9
    assert all(lo <= v <= hi for _, v, lo, hi in points) and points[0][1] < points[-1][1]
    meta = {"written": "now", "command": "cmd", "run_dir": str(tmp_path), "seeds": 3, "machine": "m", "status": "s"}
    _write(tmp_path / "run", [sec], meta, argparse.Namespace(boot=100))
    png = tmp_path / "run" / FIG_DIR / BITS_FIGURE
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"]({FIG_DIR}/{BITS_FIGURE})" in (tmp_path / "run" / "results.md").read_text()
