from pathlib import Path

import pytest

from lungsearch.config import PROFILES, ProfileConfig, list_profiles, load_profile
from lungsearch.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def test_every_architecture_profile_has_a_file():
    assert set(PROFILES) <= set(list_profiles())


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_yaml_validates(path):
    cfg = load_profile(path)
    assert isinstance(cfg, ProfileConfig)
    assert path.name.startswith(cfg.profile)  # cxr-report.yaml, cxr-report.gpu.yaml


def test_load_by_name_and_overrides():
    cfg = load_profile("ct-ild", overrides=["train.epochs=2", "data.phantom.n=12"])
    assert cfg.train.epochs == 2 and cfg.data.phantom.n == 12
    assert cfg.fingerprint() != load_profile("ct-ild").fingerprint()


def test_fingerprint_is_stable():
    assert load_profile("cxr-hash").fingerprint() == load_profile("cxr-hash").fingerprint()


def _write(tmp_path, text):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    return p


def _good_yaml():
    return (CONFIG_DIR / "cxr-cnn.yaml").read_text()


def test_unknown_key_names_file_and_key(tmp_path):
    p = _write(tmp_path, _good_yaml().replace("  epochs: 8", "  epochs: 8\n  epoch: 3"))
    with pytest.raises(ConfigError) as ei:
        load_profile(p)
    msg = str(ei.value)
    assert "\n" not in msg
    assert str(p) in msg and "train.epoch" in msg and "unknown key" in msg


def test_bad_type_names_key_and_expectation(tmp_path):
    p = _write(tmp_path, _good_yaml().replace("  epochs: 8", "  epochs: ten"))
    with pytest.raises(ConfigError) as ei:
        load_profile(p)
    msg = str(ei.value)
    assert "\n" not in msg and "train.epochs" in msg and "integer" in msg and "'ten'" in msg


def test_out_of_range_value(tmp_path):
    p = _write(tmp_path, _good_yaml().replace("  epochs: 8", "  epochs: 0"))
    with pytest.raises(ConfigError, match=r"train\.epochs: Input should be greater than or equal to 1"):
        load_profile(p)


def test_malformed_yaml_gives_line(tmp_path):
    p = _write(tmp_path, "profile: x\n  bad: [\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: line \d+: malformed YAML"):
        load_profile(p)


def test_missing_file():
    with pytest.raises(ConfigError, match="cannot read"):
        load_profile("no-such-profile")


def test_split_must_sum_to_one(tmp_path):
    p = _write(tmp_path, _good_yaml().replace("split: [0.6, 0.2, 0.2]", "split: [0.6, 0.2, 0.3]"))
    with pytest.raises(ConfigError, match="split"):
        load_profile(p)


def test_hamming_index_needs_bits():
    with pytest.raises(ConfigError, match="code_bits"):
        load_profile("cxr-hash", overrides=["index.code_bits=0"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="expected key=value"):
        load_profile("cxr-hash", overrides=["train.epochs"])


def test_where_it_runs_is_not_part_of_the_model_fingerprint():
    from lungsearch.config import load_profile

    base = load_profile("cxr-hash")
    assert base.with_overrides(["serve.limits.max_top_k=7"]).fingerprint() == base.fingerprint()
    assert base.with_overrides(["train.placement_strategy=STRICT_SPREAD"]).fingerprint() == base.fingerprint()
    assert base.with_overrides(["train.epochs=2"]).fingerprint() != base.fingerprint()
