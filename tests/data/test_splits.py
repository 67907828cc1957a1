"""Patient-level stratified splits and K-fold."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lungsearch.data import CaseRecord, kfold_records, split_records
from lungsearch.errors import ConfigError


def _records(n_patients: int, per_patient: int = 2, classes=("A", "B", "C")) -> list[CaseRecord]:
    out = []
    for p in range(n_patients):
        for j in range(per_patient if p % 3 else 1):
            out.append(
                CaseRecord(
                    case_id=f"c{p}-{j}",
                    image_paths=(f"/x/{p}-{j}.png",),
                    labels=(classes[p % len(classes)],),
                    group=f"p{p}",
                )
            )
    return out


def test_split_is_patient_disjoint_stratified_and_seeded():
    recs = _records(150)
    parts = split_records(recs, (0.6, 0.2, 0.2), seed=1)
    groups = {k: {r.group for r in v} for k, v in parts.items()}
    assert (
        not (groups["train"] & groups["val"])
        and not (groups["train"] & groups["test"])
        and not (groups["val"] & groups["test"])
    )
    assert sum(len(v) for v in parts.values()) == len(recs)
    for k, frac in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
        per_class = Counter(r.labels[0] for r in parts[k] if r.group in groups[k])
        pats = Counter(r.labels[0] for r in {r.group: r for r in parts[k]}.values())
        assert all(abs(pats[c] - 50 * frac) <= 1 for c in "ABC"), (k, pats)
        assert per_class
    assert split_records(recs, seed=1) == parts and split_records(recs, seed=2) != parts


def test_split_rejects_bad_fractions():
    with pytest.raises(ConfigError):
        split_records(_records(10), (0.5, 0.2, 0.2))


def test_kfold_no_patient_in_two_folds():
    recs = _records(40)
    folds = kfold_records(recs, 4, seed=0)
    assert len(folds) == 4
    held = [{r.group for r in h} for _, h in folds]
    for i in range(4):
        train_groups = {r.group for r in folds[i][0]}
        assert not (train_groups & held[i])
        for j in range(i + 1, 4):
            assert not (held[i] & held[j])
    assert set().union(*held) == {r.group for r in recs}
    sizes = [len(h) for _, h in folds]
    assert max(sizes) - min(sizes) <= 3
    with pytest.raises(ConfigError):
        kfold_records(recs, 1)
    with pytest.raises(ConfigError):
        kfold_records(_records(3), 4)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 15), st.sampled_from("XYZ")), min_size=4, max_size=60), st.integers(0, 5))
def test_split_properties(rows, seed):
    recs = [CaseRecord(case_id=str(i), image_paths=(), labels=(lab,), group=f"g{g}") for i, (g, lab) in enumerate(rows)]
    parts = split_records(recs, (0.6, 0.2, 0.2), seed=seed)
    seen = {}
    for k, v in parts.items():
        for r in v:
            assert seen.setdefault(r.group, k) == k
    assert sorted(r.case_id for v in parts.values() for r in v) == sorted(r.case_id for r in recs)
