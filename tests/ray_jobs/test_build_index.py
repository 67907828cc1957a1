"""`build_index`: Ray Data batch inference over phantom cases into a milvus-lite collection; running
it twice updates the same rows (idempotent by case key) and the count check holds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lungsearch import registry
from lungsearch.config import load_profile
from lungsearch.models import create_model
from lungsearch.training.indexing import build_index, record_case_key


@pytest.mark.ray
def test_build_index_is_idempotent(ray_cluster, tmp_path):
    from lungsearch.data import load_records, load_study, preprocess_study
    from lungsearch.models.hashing import pack_codes
    from lungsearch.store import MilvusStore
    from lungsearch.training.inference import forward_cases

    cfg = load_profile(
        "cxr-hash",
        ["data.phantom.n=12", "data.phantom.size=64", "data.image_size=32", f"data.root={tmp_path / 'data'}"],
    )
    torch.manual_seed(0)
    card = registry.save_model(
        create_model(cfg), cfg, metrics={}, data_fingerprint="test", synthetic_data=True, root=tmp_path / "art"
    )
    key = b"k" * 32
    uri = str(tmp_path / "index.db")

    first = build_index(
        card.ref, registry_root=tmp_path / "art", milvus_uri=uri, hmac_key=key, batch_size=5, progress=False
    )
    assert (first.cases, first.inserted, first.updated, first.count_in_store) == (12, 12, 0, 12) and first.ok
    again = build_index("cxr-hash", registry_root=tmp_path / "art", milvus_uri=uri, hmac_key=key, progress=False)
    assert (again.inserted, again.updated, again.count_in_store) == (0, 12, 12)

    # The stored row is what the registered model computes for that case.
    rec = load_records(cfg.data)[3]
    model, _ = registry.load_model(card.ref, root=tmp_path / "art")
    x = torch.from_numpy(preprocess_study(load_study(rec), cfg.data))[None]
    with torch.no_grad():
        out = forward_cases(model, x, torch.tensor([x.shape[1]]))
    store = MilvusStore(uri)
    try:
        row = store.get("cxr-hash", card.version, record_case_key(key, rec, load_study(rec, hmac_key=key)))
    finally:
        store.close()
    np.testing.assert_allclose(row.embedding, out["embedding"][0].numpy(), atol=1e-4)
    assert row.code == bytes(pack_codes(torch.where(out["hash_logits"] >= 0, 1.0, -1.0))[0])
    assert len(row.code) == 8 and row.labels == list(rec.labels) and row.model_version == card.version
