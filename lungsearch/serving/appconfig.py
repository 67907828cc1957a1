"""The Serve application's arguments and per-deployment options (pure: no Ray import).

``services.gateway:app`` takes :class:`AppArgs` as the ``args`` of ``serve_config.yaml``; the
deployment knobs (replicas, queue limits, CPUs/GPUs, batching) come from the first served profile's
``serve.deployments`` section (``configs/<profile>.yaml``) and can be overridden per deployment in
``serve_config.yaml``'s ``deployments:`` list (Serve applies those on top).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lungsearch.config import DeploymentConfig, ProfileConfig
from lungsearch.errors import ConfigError

__all__ = ["AppArgs", "DEPLOYMENTS", "deployment_options", "APP_NAME"]

#: Serve application name (clients may send it as ``application`` metadata; one app needs none).
APP_NAME = "lungsearch"
#: Deployment names as Serve knows them, keyed by the profile config's section names.
DEPLOYMENTS = {
    "gateway": "Gateway",
    "encoding": "Encoding",
    "fusion": "Fusion",
    "hashing": "Hashing",
    "ranking": "Ranking",
}


class AppArgs(BaseModel):
    """``args`` of the lungsearch Serve application."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profiles: list[str] = Field(
        default_factory=lambda: ["cxr-hash"],
        description="Profiles to serve: names, 'profile@version', several at once.",
    )
    artifacts_dir: str = Field(default="artifacts", description="Model registry root.")
    milvus_uri: str = Field(default="data/lungsearch.db", description="milvus-lite file or http://host:19530.")
    milvus_token_env: str = Field(default="LUNGSEARCH_MILVUS_TOKEN", description="Env var holding the Milvus token.")
    hmac_key_file: str = Field(default="data/hmac.key", description="Secret for case keys (created 0600 if absent).")
    tokens_file: str = Field(default="", description="Bearer tokens with roles; '' = no auth.")
    insecure_local: bool = Field(default=False, description="Without tokens, let every caller in as admin.")
    loopback_only: bool = Field(
        default=False,
        description="Refuse non-loopback peers (set behind a TLS proxy on the "
        "same machine: Serve's plaintext port listens on every interface).",
    )
    torch_threads: int = Field(default=1, ge=0, description="torch intra-op threads per model replica.")
    store_timeout: float = Field(default=10.0, gt=0, description="Seconds per Milvus call.")
    index_backend: Literal["auto", "faiss", "numpy"] = "auto"
    thumbnails_path: str = Field(
        default="",
        description="SQLite file of stored cases' thumbnails (ExplainMatch, the "
        "web page); '' = thumbnails.sqlite beside hmac_key_file; "
        "'off' = none kept.",
    )
    audit_log: str = Field(
        default="",
        description="Append-only audit log of every external call on cases (one "
        "PHI-free JSON line each); '' = audit/gateway.jsonl beside "
        "hmac_key_file; 'off' = none.",
    )
    stages: Literal["graph", "fused"] = Field(
        default="graph",
        description="graph: gateway calls Encoding, Fusion, Hashing in turn; fused: the Encoding "
        "replica also fuses and hashes (two hops fewer per request).",
    )

    @field_validator("profiles")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("serve at least one profile")
        return v

    @classmethod
    def parse(cls, args: dict[str, Any] | None) -> "AppArgs":
        """Validate ``args``; one-line ConfigError on a bad key or value."""
        from pydantic import ValidationError

        try:
            return cls.model_validate(args or {})
        except ValidationError as exc:
            e = exc.errors()[0]
            loc = ".".join(str(p) for p in e["loc"]) or "<args>"
            raise ConfigError(
                f"serve app args: {loc}: {'unknown key' if e['type'] == 'extra_forbidden' else e['msg']}"
            ) from None


def deployment_options(cfg: ProfileConfig, section: str) -> dict[str, Any]:
    """``Deployment.options(**...)`` for one deployment from a profile's ``serve.deployments``.

    ``num_replicas: auto`` turns on Serve autoscaling between ``min_replicas`` and
    ``max_replicas`` at ``target_ongoing_requests``. The encoders get their batching knobs as
    ``user_config`` (applied by ``reconfigure``, so they change without a restart).
    """
    d: DeploymentConfig = cfg.serve.deployments.get(section) or DeploymentConfig()
    opts: dict[str, Any] = {
        "max_ongoing_requests": d.max_ongoing_requests,
        "max_queued_requests": d.max_queued_requests,
        "ray_actor_options": {"num_cpus": d.num_cpus, "num_gpus": d.num_gpus},
        "graceful_shutdown_timeout_s": 20.0,
    }
    if d.num_replicas == "auto":
        opts["autoscaling_config"] = {
            "min_replicas": d.min_replicas,
            "max_replicas": d.max_replicas,
            "target_ongoing_requests": d.target_ongoing_requests,
        }
    else:
        opts["num_replicas"] = int(d.num_replicas)
    if section in ("encoding", "fusion"):
        # @serve.batch fills a batch only from requests already inside the replica: with room for
        # just 2 batches the mean batch was 6 of 16 (benchmarks/encode_throughput.py); 4x keeps it full.
        opts["max_ongoing_requests"] = max(d.max_ongoing_requests, 4 * d.max_batch_size)
        opts["user_config"] = {"max_batch_size": d.max_batch_size, "batch_wait_timeout_s": d.batch_wait_timeout_s}
    return opts
