import pytest

from lungsearch.errors import ModelNotFoundError, ModelNotReadyError
from lungsearch.registry import save_model, set_live
from lungsearch.serving.models import ModelSet, parse_profiles


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("registry")
    model, cfg = tiny_models["cxr-hash"]
    v1 = save_model(
        model,
        cfg,
        metrics={"val_map10": 0.1},
        data_fingerprint="t",
        synthetic_data=True,
        root=root,
        version="20260101-000000-aaaaaa",
    )
    v2 = save_model(
        model,
        cfg,
        metrics={"val_map10": 0.2},
        data_fingerprint="t",
        synthetic_data=True,
        root=root,
        version="20260102-000000-bbbbbb",
    )
    return root, v1.version, v2.version


def test_parse_profiles():
    assert parse_profiles("cxr-hash, ct-ild@v1") == [("cxr-hash", None), ("ct-ild", "v1")]
    with pytest.raises(ModelNotFoundError):
        parse_profiles([])
    with pytest.raises(ModelNotFoundError):
        parse_profiles(["a", "a@v"])


def test_live_is_newest_then_pinned_then_switch(registry):
    root, v1, v2 = registry
    ms = ModelSet(["cxr-hash"], root=root, load_weights=False)
    ms.load()
    assert ms.get("", "").version == v2 and ms.get("cxr-hash", v1).version == v1
    pinned = ModelSet([f"cxr-hash@{v1}"], root=root, load_weights=False)
    pinned.load()
    assert pinned.get("cxr-hash").version == v1
    assert pinned.activate("cxr-hash", v2) == (v1, v2)
    assert pinned.get("cxr-hash").version == v2


def test_registry_live_file_wins_over_newest(registry):
    root, v1, v2 = registry
    set_live("cxr-hash", v1, root=root)
    try:
        ms = ModelSet(["cxr-hash"], root=root, load_weights=True)
        ms.load()
        served = ms.get("cxr-hash")
        assert served.version == v1 and served.model is not None and served.model.code_bits == 64
    finally:
        (root / "cxr-hash" / "LIVE").unlink()


def test_errors(registry):
    root, v1, _ = registry
    ms = ModelSet(["cxr-hash", "ct-ild"], root=root, load_weights=False)
    ms.load()  # ct-ild has no trained model here: kept as an error, not raised
    with pytest.raises(ModelNotReadyError, match="ct-ild"):
        ms.health()
    with pytest.raises(ModelNotReadyError):
        ms.get("ct-ild")
    with pytest.raises(ModelNotFoundError) as e:
        ms.get("cxr-report")
    assert e.value.grpc_status == "NOT_FOUND"
    with pytest.raises(ModelNotFoundError):
        ms.get("cxr-hash", "20990101-000000-zzzzzz")
    assert ms.get("cxr-hash").version  # the healthy profile still answers


def test_eviction_keeps_live(registry, tiny_models, tmp_path):
    root, v1, v2 = registry
    model, cfg = tiny_models["cxr-hash"]
    v3 = save_model(
        model,
        cfg,
        metrics={},
        data_fingerprint="t",
        synthetic_data=True,
        root=tmp_path,
        version="20260103-000000-cccccc",
    ).version
    for v in (v1, v2):
        save_model(model, cfg, metrics={}, data_fingerprint="t", synthetic_data=True, root=tmp_path, version=v)
    ms = ModelSet([f"cxr-hash@{v1}"], root=tmp_path, load_weights=False, max_versions=2)
    ms.load()
    ms.get("cxr-hash", v2)
    ms.get("cxr-hash", v3)  # over the cap: v2 (not live, not current) goes, live v1 stays
    assert {m.version for m in ms.loaded()} == {v1, v3}
    assert ms.get("cxr-hash", v2).version == v2  # reloads on demand


@pytest.mark.parametrize("version", ["^" * 5000, "../../etc", "a/b", ".hidden", "x\x00y", "v 1", "é"])
def test_malformed_request_versions_are_invalid_argument_and_not_echoed(registry, version):
    """A request's version reaches the registry as a path component: a 5000-character one made
    the file system answer ENAMETOOLONG (an INTERNAL error at the gateway, found by
    tests/reliability's random messages)."""
    from lungsearch.errors import InvalidRequestError

    root, _, _ = registry
    ms = ModelSet(["cxr-hash"], root=root, load_weights=False)
    ms.load()
    with pytest.raises(InvalidRequestError) as e:
        ms.get("cxr-hash", version)
    assert e.value.code == "bad_version" and version not in e.value.message
    with pytest.raises(ModelNotFoundError) as e:
        ms.get("Quagmire^Hortensia", "")
    assert "Quagmire" not in e.value.message
    assert ms.get("cxr-hash", "20260101-000000-aaaaaa").version == "20260101-000000-aaaaaa"
