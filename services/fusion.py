"""Fusion deployment (``lungsearch.v1.Fusion``): features of one study -> the indexed embedding
and class probabilities. Concurrent requests are fused in one batch (``@serve.batch``)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
from ray import serve

from lungsearch._proto.v1 import common_pb2, fusion_pb2
from lungsearch.errors import InvalidRequestError
from lungsearch.serving import convert, pipeline
from lungsearch.serving.logs import route_to_serve_log
from lungsearch.serving.metrics import ServingMetrics
from lungsearch.serving.models import ModelSet
from lungsearch.serving.rpc import rpc

__all__ = ["Fusion"]

log = logging.getLogger("lungsearch.services.fusion")


@serve.deployment(name="Fusion", ray_actor_options={"num_cpus": 0.2}, max_ongoing_requests=32)
class Fusion:
    """Args:
    profiles: profiles (or ``profile@version``) to serve.
    artifacts_dir: model registry root.
    torch_threads: intra-op threads per replica.
    """

    def __init__(self, profiles: list[str], artifacts_dir: str | None = None, torch_threads: int = 1) -> None:
        route_to_serve_log()
        self.metrics = ServingMetrics("fusion")
        self.models = ModelSet(profiles, root=artifacts_dir, load_weights=True, torch_threads=torch_threads)
        self.models.load()
        for p in self.models.errors:
            self.metrics.model_load_failed(p)
        self._publish_models()

    def _publish_models(self) -> None:
        self.metrics.clear_models()
        for m in self.models.loaded():
            self.metrics.set_model(m.profile, m.version, live=self.models.live.get(m.profile) == m.version)

    def reconfigure(self, config: dict[str, Any]) -> None:
        if "max_batch_size" in config:
            self._fuse_batched.set_max_batch_size(int(config["max_batch_size"]))
        if "batch_wait_timeout_s" in config:
            self._fuse_batched.set_batch_wait_timeout_s(float(config["batch_wait_timeout_s"]))

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

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def _fuse_batched(self, items: list[tuple[Any, dict[str, np.ndarray]]]) -> list[dict[str, np.ndarray]]:
        out: list[Any] = [None] * len(items)
        groups: dict[tuple[str, str], list[int]] = {}
        for i, (served, _) in enumerate(items):
            groups.setdefault((served.profile, served.version), []).append(i)
        for idx in groups.values():
            served = items[idx[0]][0]
            res = await asyncio.to_thread(pipeline.fuse_batch, served.model, [items[i][1] for i in idx])
            for i, r in zip(idx, res):
                out[i] = r
        return out

    @rpc("Fuse", fusion_pb2.FuseResponse)
    async def Fuse(self, request: fusion_pb2.FuseRequest, grpc_context=None) -> fusion_pb2.FuseResponse:
        served = self.models.get(request.model.profile, request.model.version)
        feats = convert.features_from_proto(request.features)
        if not feats:
            raise InvalidRequestError("no features to fuse", code="no_features", field="features")
        res = await self._fuse_batched((served, feats))
        resp = fusion_pb2.FuseResponse(
            model=convert.model_ref(served.profile, served.version), embedding=convert.tensor_to_proto(res["embedding"])
        )
        if "probabilities" in res:
            targets = list(served.card.targets)
            resp.probabilities.extend(
                common_pb2.LabelScore(label=t, score=float(p)) for t, p in zip(targets, res["probabilities"])
            )
        return resp
