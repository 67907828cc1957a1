"""The DICOM receiver's configuration: one YAML file, parsed into frozen pydantic models.

Unknown keys and bad values fail with a :class:`~lungsearch.errors.ConfigError` naming the file and
the key (like the profile YAMLs). Example (``docs/pacs.md`` explains every field)::

    ae_title: LUNGSEARCH
    host: 0.0.0.0
    port: 11112
    spool_dir: /var/lib/lungsearch/dicom-spool
    settle_s: 10
    target: lungsearch-gateway:9000        # the platform's gRPC API (the SDK talks to it)
    token_file: /run/secrets/lungsearch-token
    callers:
      - ae_title: PACS_MAIN
        site: site-a
        profiles: {ct: ct-ild, cxr: cxr-hash}
    tls: {cert_file: scp.crt, key_file: scp.key, ca_file: hospital-ca.pem}
    destination: {kind: dimse, host: pacs.local, port: 104, ae_title: PACS_MAIN}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lungsearch.errors import ConfigError

__all__ = [
    "Caller",
    "AssociationLimits",
    "TLSConfig",
    "Destination",
    "ReceiverConfig",
    "load_receiver_config",
    "MODALITY_KINDS",
]

#: DICOM Modality -> the platform's modality kind, which picks the caller's profile.
MODALITY_KINDS = {"CT": "ct", "CR": "cxr", "DX": "cxr", "DR": "cxr", "MR": "mr"}


def _ae(value: str) -> str:
    v = value.strip()
    # PS3.5 AE VR: at most 16 characters, no backslash, no control characters.
    if not v or len(v) > 16 or "\\" in v or any(ord(c) < 32 for c in v):
        raise ValueError("an AE title is 1-16 printable characters without a backslash")
    return v


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Caller(_Model):
    """One calling AE title allowed to push, with its site label and the profile per modality kind."""

    ae_title: str
    site: str = Field(
        default="default",
        pattern=r"^[A-Za-z0-9_.-]{1,40}$",
        description="site label for the audit log and metrics (bounded, never PHI)",
    )
    profiles: dict[Literal["ct", "cxr", "mr"], str] = Field(default_factory=lambda: {"ct": "ct-ild", "cxr": "cxr-hash"})

    _ae_check = field_validator("ae_title")(lambda cls, v: _ae(v))


class AssociationLimits(_Model):
    """Per-association limits: beyond any of them a C-STORE is answered 0xA700 (out of resources)."""

    max_instances: int = Field(default=5000, ge=1)
    max_bytes: int = Field(default=4 << 30, ge=1)
    max_seconds: float = Field(default=3600.0, gt=0)
    max_instance_bytes: int = Field(default=256 << 20, ge=1)


class TLSConfig(_Model):
    """DICOM TLS (PS3.15 B.1): the SCP's certificate; with ``ca_file`` callers must present one too."""

    cert_file: str
    key_file: str
    ca_file: str | None = None


class Destination(_Model):
    """Where results (SR + Secondary Capture) go: a C-STORE SCP or a DICOMweb (STOW-RS) base URL."""

    kind: Literal["dimse", "dicomweb"] = "dimse"
    host: str = "127.0.0.1"
    port: int = Field(default=104, ge=1, le=65535)
    ae_title: str = "ANY-SCP"
    url: str = ""
    top_k: int = Field(default=5, ge=1, le=50)

    _ae_check = field_validator("ae_title")(lambda cls, v: _ae(v))

    @model_validator(mode="after")
    def _url_for_dicomweb(self) -> "Destination":
        if self.kind == "dicomweb" and not self.url:
            raise ValueError("a dicomweb destination needs url")
        return self


class ReceiverConfig(_Model):
    """Everything the C-STORE SCP needs; see the module docstring for a YAML example."""

    ae_title: str = "LUNGSEARCH"
    host: str = "127.0.0.1"
    port: int = Field(default=11112, ge=0, le=65535)
    spool_dir: str = "data/dicom-spool"
    settle_s: float = Field(default=10.0, ge=0.05, description="a series is ingested once quiet this long")
    linger_s: float = Field(
        default=600.0, ge=0, description="keep an ingested series this long so late instances re-ingest it whole"
    )
    discard_aborted: bool = Field(default=True, description="an A-ABORTed association's instances are dropped")
    max_spool_bytes: int = Field(default=20 << 30, ge=1)
    network_timeout_s: float = Field(default=60.0, gt=0)
    max_associations: int = Field(default=16, ge=1)
    max_ingest_attempts: int = Field(default=6, ge=1)
    callers: tuple[Caller, ...] = ()
    limits: AssociationLimits = AssociationLimits()
    tls: TLSConfig | None = None
    target: str = "127.0.0.1:9000"
    token_file: str | None = None
    target_ca_file: str | None = None
    ingest_timeout_s: float = Field(default=120.0, gt=0)
    audit_log: str = "data/audit/pacs.jsonl"
    stow_port: int = Field(default=0, ge=0, le=65535, description="STOW-RS receive endpoint (0 = off)")
    stow_tokens_file: str | None = Field(default=None, description="YAML mapping bearer token -> caller AE title")
    metrics_port: int = Field(default=0, ge=0, le=65535, description="Prometheus /metrics of the receiver (0 = off)")
    destination: Destination | None = None

    _ae_check = field_validator("ae_title")(lambda cls, v: _ae(v))

    @model_validator(mode="after")
    def _unique_callers(self) -> "ReceiverConfig":
        names = [c.ae_title for c in self.callers]
        if len(set(names)) != len(names):
            raise ValueError("callers: an AE title is listed twice")
        return self

    def caller(self, ae_title: str) -> Caller | None:
        name = ae_title.strip()
        return next((c for c in self.callers if c.ae_title == name), None)

    def stow_tokens(self) -> dict[str, str]:
        """Bearer token -> caller AE title for the STOW-RS endpoint (every AE must be a caller)."""
        import yaml

        if not self.stow_tokens_file:
            return {}
        doc = yaml.safe_load(Path(self.stow_tokens_file).read_text()) or {}
        if not isinstance(doc, dict) or any(self.caller(str(ae)) is None for ae in doc.values()):
            raise ConfigError(f"{self.stow_tokens_file}: a mapping of token -> a caller's AE title is expected")
        return {str(k): str(v) for k, v in doc.items()}

    def token(self) -> str | None:
        if not self.token_file:
            return os.environ.get("LUNGSEARCH_TOKEN") or None
        return Path(self.token_file).read_text().strip() or None


def load_receiver_config(path: str | os.PathLike | None = None, **overrides) -> ReceiverConfig:
    """Parse the YAML file (or nothing) plus keyword overrides into a :class:`ReceiverConfig`.

    Raises:
        ConfigError: unreadable file, unknown key or bad value (file and key named, no values echoed).
    """
    import yaml

    doc: dict = {}
    where = str(path) if path else "<receiver config>"
    if path:
        try:
            doc = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{where}: cannot read the receiver config ({type(exc).__name__})") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"{where}: the receiver config must be a mapping")
    doc.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ReceiverConfig.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first.get("loc", ())) or "?"
        raise ConfigError(f"{where}: {key}: {first.get('msg', 'invalid')}") from None
