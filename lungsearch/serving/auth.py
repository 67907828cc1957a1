"""Bearer-token authentication and role checks for the gateway (server side of SECURITY.md).

Tokens live in a YAML (or JSON) file, mounted from a Kubernetes Secret in a cluster::

    tokens:
      - name: pacs-bridge          # shows up nowhere but this file (not in logs or metrics)
        role: write
        sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
      - name: viewer
        role: read
        token: "a-long-random-string"   # plaintext is accepted too; prefer sha256

Roles nest: ``read`` (Search, Classify, Explain, ExplainMatch, GetCase, ListModels and the read-only internal
services) < ``write`` (+ Ingest, IngestStream, DeleteCase) < ``admin`` (+ ActivateModel and the
internal writers Upsert/Delete, which bypass de-identification). The standard health service is
open; server reflection is answered by Serve's proxy itself and never reaches the gateway.

A presented token is hashed with SHA-256 and compared with every configured digest using
``hmac.compare_digest``, without an early exit, so timing does not reveal which entry (or how
much of one) matched. No tokens and ``insecure_local=True`` is the local demo mode: every caller
is admin, and :func:`check_bind` refuses to serve anything but loopback that way.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import yaml

from lungsearch.errors import ConfigError, PermissionDeniedError, UnauthenticatedError

__all__ = [
    "ROLES",
    "METHOD_ROLES",
    "OPEN_METHODS",
    "Principal",
    "TokenEntry",
    "Authenticator",
    "load_tokens",
    "hash_token",
    "check_bind",
    "is_loopback",
    "peer_is_loopback",
]

log = logging.getLogger(__name__)

#: Roles in increasing power; a role may do everything the ones before it may.
ROLES = ("read", "write", "admin")

#: Minimum role per RPC method name (Serve routes by method name, so names are unique here).
METHOD_ROLES: dict[str, str] = {
    # lungsearch.v1.LungSearch
    "Search": "read",
    "Classify": "read",
    "Explain": "read",
    "ExplainMatch": "read",
    "GetCase": "read",
    "ListModels": "read",
    "Ingest": "write",
    "IngestStream": "write",
    "DeleteCase": "write",
    "ActivateModel": "admin",
    # internal services forwarded by the gateway (operators, debugging)
    "Encode": "read",
    "Fuse": "read",
    "Hash": "read",
    "Rank": "read",
    "Get": "read",
    "Stats": "read",
    "Upsert": "admin",
    "Delete": "admin",
}
#: Methods callable without a token (probes must work before anyone has a token).
OPEN_METHODS = frozenset({"Check", "List", "Watch"})

_MIN_TOKEN_CHARS = 16


@dataclass(frozen=True)
class Principal:
    """Who is calling. ``name`` comes from the token file; never log the token itself."""

    name: str
    role: str

    def allows(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


@dataclass(frozen=True)
class TokenEntry:
    name: str
    role: str
    digest: bytes  # sha256 of the token


def hash_token(token: str) -> str:
    """Hex SHA-256 of a token (what the ``sha256:`` field of the token file holds)."""
    return hashlib.sha256(token.encode()).hexdigest()


def load_tokens(path: str | os.PathLike) -> list[TokenEntry]:
    """Parse a token file.

    Raises:
        ConfigError: unreadable file, bad YAML, unknown role, a token shorter than 16 characters,
            a bad digest, or duplicate names. Messages name the entry index, never a token.
    """
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise ConfigError(f"token file {p}: cannot read ({exc.strerror or exc})") from None
    except yaml.YAMLError:
        raise ConfigError(f"token file {p}: malformed YAML") from None
    items = doc.get("tokens") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not items:
        raise ConfigError(f"token file {p}: expected a non-empty 'tokens' list")
    out: list[TokenEntry] = []
    names: set[str] = set()
    for i, item in enumerate(items):
        where = f"token file {p}: tokens[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: expected a mapping")
        extra = set(item) - {"name", "role", "token", "sha256"}
        if extra:
            raise ConfigError(f"{where}: unknown key(s) {sorted(extra)}")
        name, role = str(item.get("name") or f"token-{i}"), item.get("role")
        if role not in ROLES:
            raise ConfigError(f"{where}: role must be one of {list(ROLES)}")
        if name in names:
            raise ConfigError(f"{where}: duplicate name {name!r}")
        names.add(name)
        if ("token" in item) == ("sha256" in item):
            raise ConfigError(f"{where}: give exactly one of 'token' or 'sha256'")
        if "token" in item:
            tok = str(item["token"])
            if len(tok) < _MIN_TOKEN_CHARS:
                raise ConfigError(f"{where}: token shorter than {_MIN_TOKEN_CHARS} characters")
            digest = hashlib.sha256(tok.encode()).digest()
        else:
            try:
                digest = bytes.fromhex(str(item["sha256"]))
            except ValueError:
                digest = b""
            if len(digest) != 32:
                raise ConfigError(f"{where}: sha256 must be 64 hex characters")
        out.append(TokenEntry(name=name, role=role, digest=digest))
    return out


def _bearer(metadata: Iterable[tuple[str, object]]) -> str | None:
    for key, value in metadata or ():
        if str(key).lower() == "authorization":
            text = value.decode("latin-1") if isinstance(value, (bytes, bytearray)) else str(value)
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return ""
    return None


class Authenticator:
    """Decides, per call, who is calling and whether their role may call the method.

    Args:
        tokens: configured tokens; empty with ``insecure_local`` = local demo mode.
        insecure_local: allow every call as admin when no tokens are configured.
        tokens_file: reload tokens from this file when its mtime changes (checked at most once
            a second), so rotating a Secret needs no restart.
        loopback_only: refuse every non-loopback peer, tokens or not. ``lungsearch serve
            --tls-cert`` sets it: Serve 2.60's plaintext gRPC port listens on every interface and
            the TLS proxy reaches it over loopback, so any other peer is going around TLS (and
            would send its bearer token in clear text).

    Example::

        auth = Authenticator.from_file("tokens.yaml")
        principal = auth.authorize("Search", grpc_context.invocation_metadata())
    """

    def __init__(
        self,
        tokens: list[TokenEntry] | None = None,
        *,
        insecure_local: bool = False,
        tokens_file: str | os.PathLike | None = None,
        loopback_only: bool = False,
    ) -> None:
        self._tokens = list(tokens or [])
        self.insecure_local = bool(insecure_local)
        self.loopback_only = bool(loopback_only)
        self._file = Path(tokens_file) if tokens_file else None
        self._mtime = self._file.stat().st_mtime if self._file and self._file.exists() else 0.0
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    @classmethod
    def from_file(
        cls, path: str | os.PathLike | None, *, insecure_local: bool = False, loopback_only: bool = False
    ) -> "Authenticator":
        """Tokens from ``path``; ``None``/"" gives the local mode (if allowed) or a deny-all gate."""
        if not path:
            return cls([], insecure_local=insecure_local, loopback_only=loopback_only)
        return cls(load_tokens(path), insecure_local=False, tokens_file=path, loopback_only=loopback_only)

    @property
    def secured(self) -> bool:
        return bool(self._tokens)

    def _maybe_reload(self) -> None:
        if self._file is None or time.monotonic() - self._checked < 1.0:
            return
        with self._lock:
            self._checked = time.monotonic()
            try:
                mtime = self._file.stat().st_mtime
                if mtime != self._mtime:
                    self._tokens, self._mtime = load_tokens(self._file), mtime
                    log.info("reloaded %d tokens", len(self._tokens))
            except (OSError, ConfigError) as exc:
                # Keep the previous tokens: a half-written Secret must not lock everyone out.
                log.warning("token file reload failed, keeping previous tokens: %s", type(exc).__name__)

    def identify(self, metadata: Iterable[tuple[str, object]]) -> Principal:
        """The caller's principal.

        Raises:
            UnauthenticatedError: no ``authorization: Bearer`` metadata, or an unknown token.
        """
        self._maybe_reload()
        if not self._tokens:
            if self.insecure_local:
                return Principal("local", "admin")
            raise UnauthenticatedError(
                "this server has no tokens configured and is not in insecure local mode", code="no_tokens_configured"
            )
        token = _bearer(metadata)
        if token is None:
            raise UnauthenticatedError("missing 'authorization: Bearer <token>' metadata", code="missing_token")
        digest = hashlib.sha256(token.encode()).digest()
        match: TokenEntry | None = None
        for entry in self._tokens:  # no early exit: constant work whichever entry matches
            if hmac.compare_digest(entry.digest, digest):
                match = entry
        if match is None:
            raise UnauthenticatedError("invalid bearer token", code="invalid_token")
        return Principal(match.name, match.role)

    def authorize(
        self, method: str, metadata: Iterable[tuple[str, object]], peer: str | None = None
    ) -> Principal | None:
        """Check a call. Returns the principal (None for open methods).

        Args:
            method: the RPC name.
            metadata: the call's invocation metadata.
            peer: the gRPC peer string (``ipv4:127.0.0.1:5555``); in insecure local mode only
                loopback peers get in, because Serve 2.60's gRPC proxy listens on every interface.

        Raises:
            UnauthenticatedError: see :meth:`identify`; or a non-loopback peer in local mode or
                with ``loopback_only``.
            PermissionDeniedError: the role may not call ``method`` (unknown methods need admin).
        """
        if method in OPEN_METHODS:
            return None
        if self.loopback_only and peer is not None and not peer_is_loopback(peer):
            raise UnauthenticatedError(
                "plaintext calls are accepted from loopback only; connect through the TLS port",
                code="non_loopback_peer",
            )
        if not self._tokens and self.insecure_local and peer is not None and not peer_is_loopback(peer):
            raise UnauthenticatedError(
                "insecure local mode accepts loopback clients only; configure tokens", code="non_loopback_peer"
            )
        principal = self.identify(metadata)
        need = METHOD_ROLES.get(method, "admin")
        if not principal.allows(need):
            raise PermissionDeniedError(f"role '{principal.role}' may not call {method} (needs '{need}')", code="role")
        return principal


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def peer_is_loopback(peer: str) -> bool:
    """True for a gRPC peer string on loopback (``ipv4:127.0.0.1:port``, ``ipv6:[::1]:port``) or a
    unix socket; False for anything else, including an unparsable peer."""
    kind, _, rest = (peer or "").partition(":")
    if kind == "unix" or kind == "unix-abstract":
        return True
    if kind == "ipv4":
        return is_loopback(rest.rsplit(":", 1)[0])
    if kind == "ipv6":
        from urllib.parse import unquote

        rest = unquote(rest)  # grpc percent-encodes the brackets in some versions
        host = rest.rsplit(":", 1)[0] if rest.startswith("[") else rest
        host = host.strip("[]")
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        mapped = getattr(addr, "ipv4_mapped", None)
        return addr.is_loopback or bool(mapped and mapped.is_loopback)
    return False


def check_bind(host: str, *, secured: bool, insecure_local: bool) -> None:
    """Refuse to expose an unauthenticated server beyond loopback.

    Raises:
        ConfigError: ``host`` is not loopback and no tokens are configured.
    """
    if secured:
        return
    if not is_loopback(host):
        raise ConfigError(
            f"refusing to bind {host} without auth tokens: pass --tokens-file "
            "(or bind 127.0.0.1 for insecure local mode)"
        )
    if not insecure_local:
        raise ConfigError("no auth tokens configured: pass --tokens-file, or --insecure-local on loopback")
