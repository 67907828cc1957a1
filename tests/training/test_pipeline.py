"""Splits and folds of prepared cases are patient-disjoint and keep the table aligned with records."""

from __future__ import annotations

import numpy as np
from lstrain_helpers import synthetic_table, tiny_cfg

from lungsearch.data.types import CaseRecord
from lungsearch.training.pipeline import Dataset, make_folds, make_splits


def _dataset(cfg, n=40):
    table = synthetic_table(cfg, n)
    # Two cases per patient: splits must keep them together.
    records = [
        CaseRecord(
            case_id=c,
            image_paths=(f"{c}.png",),
            labels=(cfg.data.targets[int(table.labels[i])],),
            group=f"p{i // 2}",
            synthetic=True,
        )
        for i, c in enumerate(table.case_ids)
    ]
    table.groups = [r.group for r in records]
    return Dataset(records=records, table=table, fingerprint="x")


def _groups(t):
    return set(t.groups)


def test_splits_are_patient_disjoint_and_aligned():
    cfg = tiny_cfg("cxr-cnn")
    ds = _dataset(cfg)
    sp = make_splits(cfg, ds)
    assert sum(sp.sizes().values()) == 40
    assert not (_groups(sp.train) & _groups(sp.val)) and not (_groups(sp.train) & _groups(sp.test))
    i = ds.table.case_ids.index(sp.test.case_ids[0])
    np.testing.assert_array_equal(sp.test.images[0], ds.table.images[i])
    assert len(sp.gallery) == len(sp.train) + len(sp.val)


def test_folds_cover_every_case_once():
    cfg = tiny_cfg("cxr-cnn")
    ds = _dataset(cfg)
    folds = make_folds(cfg, ds, 4)
    held = [c for f in folds for c in f.test.case_ids]
    assert sorted(held) == sorted(ds.table.case_ids)
    for f in folds:
        assert not (_groups(f.train) | _groups(f.val)) & _groups(f.test)
        assert len(f.train) + len(f.val) + len(f.test) == 40 and len(f.val) > 0
