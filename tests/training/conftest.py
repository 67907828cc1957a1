"""Fixtures for the training tests (helpers in lstrain_helpers.py)."""

from __future__ import annotations

import pytest
from lstrain_helpers import synthetic_table


@pytest.fixture
def tables():
    def make(cfg, n_train=24, n_val=12, slices=2):
        return synthetic_table(cfg, n_train, seed=1, slices=slices), synthetic_table(cfg, n_val, seed=2, slices=slices)

    return make
