"""Verdicts that survive a second seed: paired bootstrap intervals of a difference over the test
cases, the spread over training seeds, and the yes / no / inconclusive rule.

A claim "A beats B on metric m" is read from per-seed, per-case results of both variants on the
*same* test cases. The bootstrap resamples the test cases (one resample shared by every seed and
both variants: the comparison is paired), computes ``mean over seeds of m(A) - m(B)`` on each
resample, and reports the 2.5 / 97.5 percentiles. The verdict is

* **yes** when the whole interval lies on the paper's side of 0 (``direction=+1``: A > B;
  ``-1``: A < B, e.g. "faster"),
* **no** when it lies wholly on the other side,
* **inconclusive** otherwise, and always when either variant is *collapsed* (see
  :func:`collapse_reasons`): a broken baseline is not a comparison.

The margin stated with a verdict is the interval bound nearest 0 (how far the difference is from
0 at worst, in the paper's direction). Everything is seeded: the same inputs give the same
interval.

    >>> cmp = compare("fused beats image-only", "accuracy", a_seeds, b_seeds, score=accuracy_of)
    >>> cmp.verdict, cmp.lo, cmp.hi
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

__all__ = [
    "Comparison",
    "bootstrap_interval",
    "collapse_reasons",
    "compare",
    "paired_bootstrap",
    "verdict",
]

#: Bootstrap resamples per interval (2000: the 2.5 % tail holds 50 draws; a few ms per metric).
N_BOOT = 2000

#: A score maps an index array of test cases (with repeats) to one number (accuracy, mAP@10...).
Score = Callable[[np.ndarray], float]


def verdict(lo: float, hi: float, direction: int = 1) -> str:
    """``yes`` if ``[lo, hi]`` excludes 0 on the paper's side (``direction`` +1: > 0, -1: < 0),
    ``no`` if it excludes 0 on the other side, else ``inconclusive`` (NaN bounds too)."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "inconclusive"
    if direction < 0:
        lo, hi = -hi, -lo
    if lo > 0:
        return "yes"
    if hi < 0:
        return "no"
    return "inconclusive"


def paired_bootstrap(
    score_a: Sequence[Score],
    score_b: Sequence[Score],
    n_cases: int,
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, float]:
    """Interval of ``mean_s score_a[s] - mean_s score_b[s]`` over case resamples (paired).

    ``score_a``/``score_b``: one score function per training seed of each variant (their counts
    may differ: each side's seeds are averaged). Returns ``diff`` (all cases), ``lo``, ``hi``,
    ``a``, ``b`` (means over seeds on all cases) and ``n_boot`` (resamples that gave a number).
    """
    if n_cases < 1 or not score_a or not score_b:
        return {
            "diff": float("nan"),
            "lo": float("nan"),
            "hi": float("nan"),
            "a": float("nan"),
            "b": float("nan"),
            "n_boot": 0,
        }
    full = np.arange(n_cases)
    a = float(np.mean([f(full) for f in score_a]))
    b = float(np.mean([f(full) for f in score_b]))
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        idx = rng.integers(0, n_cases, n_cases)
        da = np.mean([f(idx) for f in score_a])
        db = np.mean([f(idx) for f in score_b])
        d = float(da - db)
        if np.isfinite(d):  # e.g. AUC undefined on a resample that lost a class
            diffs.append(d)
    if len(diffs) < max(10, n_boot // 10):
        return {"diff": a - b, "lo": float("nan"), "hi": float("nan"), "a": a, "b": b, "n_boot": len(diffs)}
    lo, hi = np.percentile(diffs, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return {"diff": a - b, "lo": float(lo), "hi": float(hi), "a": a, "b": b, "n_boot": len(diffs)}


def bootstrap_interval(
    scores: Sequence[Score], n_cases: int, *, n_boot: int = N_BOOT, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float, float]:
    """(value, lo, hi) of one variant's seed-mean score over case resamples (for table cells)."""
    zero: list[Score] = [lambda idx: 0.0]
    r = paired_bootstrap(scores, zero, n_cases, n_boot=n_boot, seed=seed, alpha=alpha)
    return r["a"], r["lo"], r["hi"]


@dataclass
class Comparison:
    """One claim's numbers and verdict (JSON-ready through :meth:`as_dict`)."""

    claim: str
    metric: str
    a_name: str
    b_name: str
    a: float
    b: float
    diff: float
    lo: float
    hi: float
    direction: int
    verdict: str
    seeds: int
    seed_diffs: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def margin(self) -> float:
        """Bound of the interval nearest 0, signed in the paper's direction (> 0: holds by this much)."""
        lo, hi = (self.lo, self.hi) if self.direction > 0 else (-self.hi, -self.lo)
        return lo if lo > 0 else (hi if hi < 0 else 0.0)

    @property
    def seed_spread(self) -> float:
        return float(np.std(self.seed_diffs, ddof=1)) if len(self.seed_diffs) > 1 else float("nan")

    def numbers(self) -> str:
        """The cell text: values, difference with its 95 % interval, seed spread."""
        sd = f"; per-seed differences sd {self.seed_spread:.3f}" if np.isfinite(self.seed_spread) else ""
        ci = f"[{self.lo:+.3f}, {self.hi:+.3f}]" if np.isfinite(self.lo) else "[no interval]"
        return (
            f"{self.a:.3f} vs {self.b:.3f}; diff {self.diff:+.3f}, 95 % CI {ci}, margin {self.margin:+.3f}"
            f"; {self.seeds} seed(s){sd}" + (f"; {self.note}" if self.note else "")
        )

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(margin=self.margin, seed_spread=self.seed_spread, numbers=self.numbers())
        return d


def compare(
    claim: str,
    metric: str,
    a_name: str,
    b_name: str,
    score_a: Sequence[Score],
    score_b: Sequence[Score],
    n_cases: int,
    *,
    direction: int = 1,
    collapsed: Sequence[str] = (),
    n_boot: int = N_BOOT,
    seed: int = 0,
    note: str = "",
) -> Comparison:
    """A :class:`Comparison` of variant A against B on ``metric`` (see the module doc).

    ``collapsed``: names of the variants found collapsed; a comparison involving one is
    ``inconclusive`` whatever its interval says, and says why.
    """
    r = paired_bootstrap(score_a, score_b, n_cases, n_boot=n_boot, seed=seed)
    full = np.arange(n_cases)
    # per-seed differences; a one-score side (a reference row, chance) is read against every seed
    k = max(len(score_a), len(score_b))
    pick = lambda fs, i: fs[i] if len(fs) > 1 else fs[0]  # noqa: E731
    seed_diffs = (
        [float(pick(score_a, i)(full) - pick(score_b, i)(full)) for i in range(k)]
        if min(len(score_a), len(score_b)) in (1, k)
        else [float(fa(full) - fb(full)) for fa, fb in zip(score_a, score_b)]
    )
    v = verdict(r["lo"], r["hi"], direction)
    bad = [n for n in (a_name, b_name) if n in collapsed]
    if bad:
        v = "inconclusive"
        note = "; ".join(x for x in (note, f"{' and '.join(bad)} collapsed: not a comparison") if x)
    return Comparison(
        claim=claim,
        metric=metric,
        a_name=a_name,
        b_name=b_name,
        a=r["a"],
        b=r["b"],
        diff=r["diff"],
        lo=r["lo"],
        hi=r["hi"],
        direction=direction,
        verdict=v,
        seeds=max(len(score_a), len(score_b)),
        seed_diffs=seed_diffs,
        note=note,
    )


def collapse_reasons(
    *,
    probs: np.ndarray | None = None,
    multilabel: bool = False,
    embedding: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    codes: np.ndarray | None = None,
    metrics: dict | None = None,
    tol: float = 0.02,
) -> list[str]:
    """Why a variant's outputs are degenerate (empty list: not collapsed).

    * ``probs`` (single-label): the argmax is one class for every test case;
    * ``embedding``: every test embedding (L2-normalised) sits within ``tol`` of the mean (intra-
      and inter-class distances both near 0), or ``metrics`` says ``intra`` and ``inter`` < ``tol``;
    * ``codes``: every binary code identical (Hamming ranking is then the gallery order), or the
      mean pairwise Hamming distance below ``tol`` of the bits. A model that ranks by codes is
      judged by its codes, not by its float embedding (``embedding`` is then ignored: hash
      outputs near the tanh saturation sit close together after L2 normalisation yet give
      distinct codes).
    """
    out: list[str] = []
    if probs is not None and not multilabel and len(probs) > 1:
        pred = np.asarray(probs).argmax(1)
        if len(np.unique(pred)) == 1:
            out.append(f"classifier predicts one class ({int(pred[0])}) for all {len(pred)} test cases")
    if codes is not None:
        embedding = None
        if metrics is not None:
            metrics = {k: v for k, v in metrics.items() if k not in ("intra", "inter")}
    if embedding is not None and len(embedding) > 1:
        e = np.asarray(embedding, dtype=np.float64)
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        spread = float(np.linalg.norm(e - e.mean(0), axis=1).mean())
        if spread < tol:
            out.append(f"embedding collapsed (mean distance to the centroid {spread:.4f})")
    if metrics and "intra" in metrics and "inter" in metrics and not any("embedding" in r for r in out):
        if metrics["intra"] < tol and metrics["inter"] < tol:
            out.append(f"embedding collapsed (intra {metrics['intra']:.3f}, inter {metrics['inter']:.3f})")
    if codes is not None and len(codes) > 1:
        c = np.asarray(codes) > 0
        if (c == c[0]).all():
            out.append("every binary code identical")
        else:
            frac = c.mean(0)  # mean pairwise Hamming distance / bits = mean over bits of 2 p (1 - p) * n / (n - 1)
            ham = float((2 * frac * (1 - frac)).mean() * len(c) / (len(c) - 1))
            if ham < tol:
                out.append(f"binary codes nearly identical (mean pairwise Hamming distance {ham:.3f} of the bits)")
    return out
