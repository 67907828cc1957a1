"""Patient-level, stratified splits and K-fold: no patient (``CaseRecord.group``) is ever on two
sides. A group's stratum is its most frequent primary label (``labels[0]``), so every split keeps
roughly the class proportions of the whole set (paper 2's stratified 60/20/20 and 4-fold CV).
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from lungsearch.data.types import CaseRecord
from lungsearch.errors import ConfigError

__all__ = ["group_strata", "kfold_records", "split_records"]


def group_strata(records: list[CaseRecord]) -> dict[str, str]:
    """group -> stratum (most frequent ``labels[0]`` of the group's records, ties by name)."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        counts[r.group][r.labels[0] if r.labels else ""] += 1
    return {g: sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] for g, c in counts.items()}


def _groups_by_stratum(records: list[CaseRecord], seed: int) -> tuple[dict[str, list[str]], dict[str, int]]:
    strata = group_strata(records)
    sizes = Counter(r.group for r in records)
    by: dict[str, list[str]] = defaultdict(list)
    for g in sorted(strata):
        by[strata[g]].append(g)
    rng = np.random.default_rng(seed)
    for s in sorted(by):
        order = rng.permutation(len(by[s]))
        by[s] = [by[s][i] for i in order]
    return by, sizes


def split_records(
    records: list[CaseRecord], fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), seed: int = 0
) -> dict[str, list[CaseRecord]]:
    """Split into ``{"train", "val", "test"}`` by patient, stratified by label.

    Within each stratum the shuffled groups are cut at the cumulative fractions (rounded), so
    each stratum is split in the requested proportions; records keep their input order.

    Raises:
        ConfigError: fractions that are negative or do not sum to 1.
    """
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1.0) > 1e-6:
        raise ConfigError(f"split fractions must be three non-negative numbers summing to 1 (got {fractions})")
    by, _ = _groups_by_stratum(records, seed)
    side: dict[str, str] = {}
    for s in sorted(by):
        groups = by[s]
        n = len(groups)
        c1 = int(round(n * fr[0]))
        c2 = int(round(n * (fr[0] + fr[1])))
        for i, g in enumerate(groups):
            side[g] = "train" if i < c1 else "val" if i < c2 else "test"
    out: dict[str, list[CaseRecord]] = {"train": [], "val": [], "test": []}
    for r in records:
        out[side[r.group]].append(r)
    return out


def kfold_records(records: list[CaseRecord], k: int, seed: int = 0) -> list[tuple[list[CaseRecord], list[CaseRecord]]]:
    """K folds by patient, stratified: ``[(train_records, held_out_records), ...]``.

    Groups of each stratum, largest first (ties shuffled by ``seed``), go to the fold that has the
    fewest records of that stratum (then the fewest overall), which balances both.

    Raises:
        ConfigError: ``k < 2`` or more folds than patients.
    """
    if k < 2:
        raise ConfigError(f"k-fold needs k >= 2 (got {k})")
    by, sizes = _groups_by_stratum(records, seed)
    n_groups = sum(len(v) for v in by.values())
    if k > n_groups:
        raise ConfigError(f"k-fold: {k} folds but only {n_groups} patients")
    fold_of: dict[str, int] = {}
    total = [0] * k
    for s in sorted(by):
        per = [0] * k
        for g in sorted(by[s], key=lambda g: -sizes[g]):  # stable: shuffled order breaks ties
            f = min(range(k), key=lambda i: (per[i], total[i], i))
            fold_of[g] = f
            per[f] += sizes[g]
            total[f] += sizes[g]
    folds = []
    for f in range(k):
        held = [r for r in records if fold_of[r.group] == f]
        train = [r for r in records if fold_of[r.group] != f]
        folds.append((train, held))
    return folds
