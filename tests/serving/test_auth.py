import os
import time

import pytest
import yaml

from lungsearch.errors import ConfigError, PermissionDeniedError, UnauthenticatedError
from lungsearch.serving import auth

READ, WRITE, ADMIN = "r" * 20 + "-read", "w" * 20 + "-write", "a" * 20 + "-admin"


@pytest.fixture
def tokens_file(tmp_path):
    p = tmp_path / "tokens.yaml"
    p.write_text(
        yaml.safe_dump(
            {
                "tokens": [
                    {"name": "viewer", "role": "read", "token": READ},
                    {"name": "bridge", "role": "write", "sha256": auth.hash_token(WRITE)},
                    {"name": "ops", "role": "admin", "token": ADMIN},
                ]
            }
        )
    )
    return p


def md(token):
    return [("authorization", f"Bearer {token}")]


def test_roles_nest(tokens_file):
    a = auth.Authenticator.from_file(tokens_file)
    assert a.authorize("Search", md(READ)).name == "viewer"
    with pytest.raises(PermissionDeniedError):
        a.authorize("Ingest", md(READ))
    assert a.authorize("Ingest", md(WRITE)).role == "write"
    assert a.authorize("Search", md(WRITE)).role == "write"
    with pytest.raises(PermissionDeniedError) as e:
        a.authorize("ActivateModel", md(WRITE))
    assert e.value.grpc_status == "PERMISSION_DENIED" and WRITE not in str(e.value)
    assert a.authorize("ActivateModel", md(ADMIN)).role == "admin"
    with pytest.raises(PermissionDeniedError):
        a.authorize("Upsert", md(WRITE))  # internal writer bypasses de-identification: admin only
    with pytest.raises(PermissionDeniedError):
        a.authorize("SomethingNew", md(WRITE))  # unknown methods need admin


@pytest.mark.parametrize(
    "metadata",
    [
        [],
        [("authorization", "Basic abc")],
        [("authorization", "Bearer ")],
        md("not-a-known-token-at-all"),
        md(READ + "x"),
        md(READ[:-1]),
    ],
)
def test_unauthenticated(tokens_file, metadata):
    a = auth.Authenticator.from_file(tokens_file)
    with pytest.raises(UnauthenticatedError) as e:
        a.authorize("Search", metadata)
    assert e.value.grpc_status == "UNAUTHENTICATED"


def test_health_is_open_and_header_is_case_insensitive(tokens_file):
    a = auth.Authenticator.from_file(tokens_file)
    assert a.authorize("Check", []) is None and a.authorize("Watch", []) is None
    assert a.authorize("Search", [("Authorization", b"bearer " + READ.encode())]).role == "read"


def test_insecure_local_and_deny_all():
    assert auth.Authenticator([], insecure_local=True).authorize("ActivateModel", []).role == "admin"
    with pytest.raises(UnauthenticatedError):
        auth.Authenticator([], insecure_local=False).authorize("Search", md(READ))


def test_compare_is_against_every_entry(tokens_file, monkeypatch):
    calls = []
    real = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    a = auth.Authenticator.from_file(tokens_file)
    a.authorize("Search", md(READ))  # matches the first entry...
    assert len(calls) == 3  # ...and still compares against all of them


@pytest.mark.parametrize(
    "doc,msg",
    [
        ({"tokens": []}, "non-empty"),
        ({"tokens": [{"role": "root", "token": READ}]}, "role"),
        ({"tokens": [{"role": "read", "token": "short"}]}, "shorter"),
        ({"tokens": [{"role": "read", "sha256": "zz"}]}, "64 hex"),
        ({"tokens": [{"role": "read"}]}, "exactly one"),
        ({"tokens": [{"role": "read", "token": READ, "extra": 1}]}, "unknown"),
        (
            {"tokens": [{"name": "x", "role": "read", "token": READ}, {"name": "x", "role": "read", "token": WRITE}]},
            "duplicate",
        ),
    ],
)
def test_bad_token_files(tmp_path, doc, msg):
    p = tmp_path / "t.yaml"
    p.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=msg) as e:
        auth.load_tokens(p)
    assert READ not in str(e.value)


def test_reload_on_change(tokens_file):
    a = auth.Authenticator.from_file(tokens_file)
    new = "n" * 24
    tokens_file.write_text(yaml.safe_dump({"tokens": [{"name": "new", "role": "read", "token": new}]}))
    os.utime(tokens_file, (time.time() + 5, time.time() + 5))
    a._checked -= 2  # skip the once-a-second throttle
    assert a.authorize("Search", md(new)).name == "new"
    with pytest.raises(UnauthenticatedError):
        a.authorize("Search", md(READ))


def test_reload_failure_keeps_previous_tokens(tokens_file):
    a = auth.Authenticator.from_file(tokens_file)
    tokens_file.write_text("tokens: [")
    os.utime(tokens_file, (time.time() + 5, time.time() + 5))
    a._checked -= 2
    assert a.authorize("Search", md(READ)).name == "viewer"


@pytest.mark.parametrize(
    "host,ok",
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("10.1.2.3", False),
        ("example.org", False),
    ],
)
def test_check_bind(host, ok):
    if ok:
        auth.check_bind(host, secured=False, insecure_local=True)
    else:
        with pytest.raises(ConfigError):
            auth.check_bind(host, secured=False, insecure_local=True)
    auth.check_bind(host, secured=True, insecure_local=False)
    with pytest.raises(ConfigError):
        auth.check_bind("127.0.0.1", secured=False, insecure_local=False)


@pytest.mark.parametrize(
    "peer,ok",
    [
        ("ipv4:127.0.0.1:5000", True),
        ("ipv6:[::1]:5000", True),
        ("ipv6:%5B::1%5D:5000", True),
        ("ipv6:[::ffff:127.0.0.1]:80", True),
        ("unix:/tmp/s", True),
        ("ipv4:10.0.0.7:5000", False),
        ("ipv6:[2001:db8::1]:5000", False),
        ("", False),
        ("garbage", False),
    ],
)
def test_peer_is_loopback(peer, ok):
    assert auth.peer_is_loopback(peer) is ok


def test_insecure_local_refuses_remote_peers_but_not_health():
    a = auth.Authenticator([], insecure_local=True)
    assert a.authorize("Search", [], peer="ipv4:127.0.0.1:1").role == "admin"
    with pytest.raises(UnauthenticatedError):
        a.authorize("Search", [], peer="ipv4:192.168.1.5:1")
    assert a.authorize("Check", [], peer="ipv4:192.168.1.5:1") is None


def test_tokens_work_from_any_peer(tokens_file):
    a = auth.Authenticator.from_file(tokens_file)
    assert a.authorize("Search", md(READ), peer="ipv4:10.1.1.1:9").name == "viewer"


def test_loopback_only_refuses_remote_peers_even_with_a_valid_token(tokens_file):
    """Behind `lungsearch serve --tls-cert`: Serve's plaintext port listens on every interface, so
    a remote peer reaching it directly (around TLS, token in clear text) is refused."""
    a = auth.Authenticator.from_file(tokens_file, loopback_only=True)
    assert a.authorize("Search", md(READ), peer="ipv4:127.0.0.1:9").name == "viewer"  # the TLS proxy
    with pytest.raises(UnauthenticatedError) as e:
        a.authorize("Search", md(ADMIN), peer="ipv4:10.1.1.1:9")
    assert e.value.code == "non_loopback_peer"
    with pytest.raises(UnauthenticatedError):
        a.authorize("Ingest", md(WRITE), peer="ipv6:[2001:db8::1]:9")
    assert a.authorize("Check", [], peer="ipv4:10.1.1.1:9") is None  # probes stay open
