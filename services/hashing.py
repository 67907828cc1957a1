"""Hashing deployment (``lungsearch.v1.Hashing``): hash logits or an embedding -> packed code.

Learned codes (cxr-hash) are ``sign(hash_logits)``; LSH profiles (ct-ild) hash the embedding with
the model's stored random hyperplanes. Cheap (microseconds), so no batching.
"""

from __future__ import annotations

import asyncio
import logging

from ray import serve

from lungsearch._proto.v1 import hashing_pb2
from lungsearch.errors import InvalidRequestError
from lungsearch.serving import convert, pipeline
from lungsearch.serving.logs import route_to_serve_log
from lungsearch.serving.metrics import ServingMetrics
from lungsearch.serving.models import ModelSet
from lungsearch.serving.rpc import rpc

__all__ = ["Hashing"]

log = logging.getLogger("lungsearch.services.hashing")


@serve.deployment(name="Hashing", ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=32)
class Hashing:
    """Args:
    profiles: profiles (or ``profile@version``) to serve.
    artifacts_dir: model registry root.
    """

    def __init__(self, profiles: list[str], artifacts_dir: str | None = None, torch_threads: int = 1) -> None:
        route_to_serve_log()
        self.metrics = ServingMetrics("hashing")
        self.models = ModelSet(profiles, root=artifacts_dir, load_weights=True, torch_threads=torch_threads)
        self.models.load()
        for p in self.models.errors:
            self.metrics.model_load_failed(p)
        self._publish_models()

    def _publish_models(self) -> None:
        self.metrics.clear_models()
        for m in self.models.loaded():
            self.metrics.set_model(m.profile, m.version, live=self.models.live.get(m.profile) == m.version)

    def check_health(self) -> None:
        self.models.health()

    async def activate(self, profile: str, version: str) -> str:
        await asyncio.to_thread(self.models.activate, profile, version)
        self._publish_models()
        return version

    async def ready(self) -> str:
        """ "" when every profile's model is loaded, else why not (for the gRPC health service)."""
        return "; ".join(f"{p}: {m}" for p, m in sorted(self.models.errors.items()))

    def metrics_text(self) -> str:
        return self.metrics.render()

    @rpc("Hash", hashing_pb2.HashResponse)
    async def Hash(self, request: hashing_pb2.HashRequest, grpc_context=None) -> hashing_pb2.HashResponse:
        served = self.models.get(request.model.profile, request.model.version)
        which = request.WhichOneof("input")
        if which == "hash_logits":
            packed = pipeline.hash_code(
                served.model, hash_logits=convert.tensor_from_proto(request.hash_logits, field="hash_logits")
            )
        elif which == "embedding":
            packed = pipeline.hash_code(
                served.model, embedding=convert.tensor_from_proto(request.embedding, field="embedding")
            )
        else:
            raise InvalidRequestError("give hash_logits or embedding", code="no_input", field="input")
        return hashing_pb2.HashResponse(
            model=convert.model_ref(served.profile, served.version),
            code=convert.code_to_proto(packed, served.model.code_bits),
        )
