"""Encoding deployment (``lungsearch.v1.Encoding``): images, report text and radiomics -> features.

Studies from concurrent requests are batched with ``@serve.batch`` (``max_batch_size`` and
``batch_wait_timeout_s`` come from ``user_config`` via :meth:`Encoding.reconfigure`); a lone request
(nothing else being encoded) skips the batch wait. The model work runs in a thread so the replica
keeps accepting requests while a batch computes.

The gateway calls :meth:`Encoding.Encode` through a handle with the already decoded and
de-identified ``study`` (a ``lungsearch.data.Study``) so a large CT series is decoded once; a client
of the Encoding service itself sends image bytes, decoded here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ray import serve

from lungsearch._proto.v1 import common_pb2, encoding_pb2, fusion_pb2
from lungsearch.errors import InvalidRequestError, LungsearchError
from lungsearch.serving import convert, limits, pipeline
from lungsearch.serving.logs import route_to_serve_log
from lungsearch.serving.metrics import ServingMetrics
from lungsearch.serving.models import ModelSet
from lungsearch.serving.rpc import rpc

__all__ = ["Encoding"]

log = logging.getLogger("lungsearch.services.encoding")


@serve.deployment(name="Encoding", ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
class Encoding:
    """Args:
    profiles: profiles (or ``profile@version``) to serve.
    artifacts_dir: model registry root.
    torch_threads: intra-op threads per replica (1 keeps 2-core machines responsive).
    """

    def __init__(self, profiles: list[str], artifacts_dir: str | None = None, torch_threads: int = 1) -> None:
        route_to_serve_log()
        self.metrics = ServingMetrics("encoding")
        self.models = ModelSet(profiles, root=artifacts_dir, load_weights=True, torch_threads=torch_threads)
        self.models.load()
        for p in self.models.errors:
            self.metrics.model_load_failed(p)
        self._publish_models()
        self._in_flight = 0  # encodes under way in this replica (see _encode)

    def _publish_models(self) -> None:
        self.metrics.clear_models()
        for m in self.models.loaded():
            self.metrics.set_model(m.profile, m.version, live=self.models.live.get(m.profile) == m.version)

    def reconfigure(self, config: dict[str, Any]) -> None:
        """``user_config``: ``max_batch_size``, ``batch_wait_timeout_s``, ``torch_threads``."""
        if "max_batch_size" in config:
            self._encode_batched.set_max_batch_size(int(config["max_batch_size"]))
        if "batch_wait_timeout_s" in config:
            self._encode_batched.set_batch_wait_timeout_s(float(config["batch_wait_timeout_s"]))
        if int(config.get("torch_threads", 0) or 0) > 0:
            import torch

            torch.set_num_threads(int(config["torch_threads"]))

    def check_health(self) -> None:
        """Unhealthy (with the reason) while a profile's model failed to load."""
        self.models.health()

    async def activate(self, profile: str, version: str) -> str:
        """Load a version and make it live here (ActivateModel warms every stage first)."""
        await asyncio.to_thread(self.models.activate, profile, version)
        self._publish_models()
        return version

    async def ready(self) -> str:
        """ "" when every profile's model is loaded, else why not (for the gRPC health service)."""
        return "; ".join(f"{p}: {m}" for p, m in sorted(self.models.errors.items()))

    def metrics_text(self) -> str:
        return self.metrics.render()

    @staticmethod
    def _prepare_and_encode(served, jobs: list[tuple[Any, str | None]]) -> list[Any]:
        """Preprocess then encode a batch in one worker thread: running preprocessing in many
        threads beside the model's thread fights for the GIL and starves the batch (measured:
        mean batch 6 instead of 16 and half the throughput). A study that fails preprocessing
        fails alone (its error is returned in its slot)."""
        items: list[Any] = []
        for study, text in jobs:
            try:
                items.append(pipeline.prepare_study(study, text, served.cfg, served.model))
            except LungsearchError as exc:
                items.append(exc)
        ok = [i for i, it in enumerate(items) if not isinstance(it, LungsearchError)]
        feats = pipeline.encode_batch(served.model, [items[i] for i in ok]) if ok else []
        out: list[Any] = list(items)
        for i, f in zip(ok, feats):
            out[i] = (items[i], f)
        return out

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _encode_batched(self, requests: list[tuple[Any, Any, str | None]]) -> list[Any]:
        out: list[Any] = [None] * len(requests)
        groups: dict[tuple[str, str], list[int]] = {}
        for i, (served, _, _) in enumerate(requests):
            groups.setdefault((served.profile, served.version), []).append(i)
        for (profile, _), idx in groups.items():
            served = requests[idx[0]][0]
            start = time.perf_counter()
            res = await asyncio.to_thread(self._prepare_and_encode, served, [requests[i][1:] for i in idx])
            self.metrics.observe_batch(profile, len(idx), time.perf_counter() - start)
            for i, r in zip(idx, res):
                out[i] = r
        return out

    async def _encode(self, served, study, text: str | None) -> Any:
        """One study's (prepared item, features), or its error. A lone request (nothing else being
        encoded here) runs at once: ``@serve.batch`` would hold it ``batch_wait_timeout_s`` for
        company that is not coming. Requests that arrive while one is under way queue into a batch."""
        lone = self._in_flight == 0
        self._in_flight += 1
        try:
            if not lone:
                return await self._encode_batched((served, study, text))
            start = time.perf_counter()
            (res,) = await asyncio.to_thread(self._prepare_and_encode, served, [(study, text)])
            self.metrics.observe_batch(served.profile, 1, time.perf_counter() - start)
            return res
        finally:
            self._in_flight -= 1

    @rpc("Encode", encoding_pb2.EncodeResponse)
    async def Encode(
        self, request: encoding_pb2.EncodeRequest, grpc_context=None, *, study=None
    ) -> encoding_pb2.EncodeResponse:
        served = self.models.get(request.model.profile, request.model.version)
        lim = served.cfg.serve.limits
        text = limits.check_report(request.report, lim)
        if study is None and request.images:
            limits.check_images(request.images, lim)
            from lungsearch.data import read_study

            study = await asyncio.to_thread(read_study, [im.data for im in request.images], limits=lim)
        if study is None and not text:
            raise InvalidRequestError("give an image, a report, or both", code="empty_query")
        res = await self._encode(served, study, text or None)
        if isinstance(res, LungsearchError):
            raise res
        item, feats = res
        resp = encoding_pb2.EncodeResponse(
            model=convert.model_ref(served.profile, served.version),
            modality=convert.modality_to_proto(item.modality),
            view=convert.view_to_proto(item.view),
        )
        roi = convert.radiomics_roi_to_proto(item.roi_fallback, item.roi_reason)
        if roi is not None:  # radiomics read the whole thorax: every answer about this study says so
            resp.radiomics_roi.CopyFrom(roi)
        if request.explain:
            if item.pixels is None:
                raise InvalidRequestError("explaining needs an image", code="explain_no_image", field="images")
            heat, label = await asyncio.to_thread(pipeline.explain_study, served.model, item, request.explain_label)
            resp.heatmap.CopyFrom(convert.tensor_to_proto(heat))
            resp.heatmap_label = label
        resp.features.CopyFrom(convert.features_to_proto(feats))
        return resp

    async def explain_pixels(
        self, model: common_pb2.ModelRef, pixels: Any, label: str = "", text: str | None = None
    ) -> tuple[Any, str]:
        """Grad-CAM of already preprocessed pixels ``[S, 1, H, W]`` (a stored case's thumbnail, for the
        Gateway's ExplainMatch): ``(heat map [H, W] in [0, 1], the label explained)``."""
        import numpy as np

        served = self.models.get(model.profile, model.version)
        has_text = getattr(served.model, "text_encoder", None) is not None
        item = pipeline.StudyInput(pixels=np.asarray(pixels, dtype=np.float32), text=(text or "") if has_text else None)
        return await asyncio.to_thread(pipeline.explain_study, served.model, item, label)

    async def encode_fused(
        self, request: encoding_pb2.EncodeRequest, *, study=None
    ) -> tuple[encoding_pb2.EncodeResponse, fusion_pb2.FuseResponse, common_pb2.HashCode | None]:
        """Encode (batched), then fuse and hash in this replica: the gateway's ``stages: fused`` mode.

        The same library calls as the Fusion and Hashing deployments (``fuse_batch``,
        ``hash_code``) on the same registry model, so the results are identical; only the hops go.
        """
        enc = await self.Encode(request, study=study)
        served = self.models.get(request.model.profile, request.model.version)
        feats = convert.features_from_proto(enc.features)

        def fuse_and_hash():
            fused = pipeline.fuse_batch(served.model, [feats])[0]
            packed = None
            if served.model.code_bits:
                packed = (
                    pipeline.hash_code(served.model, hash_logits=feats["hash_logits"])
                    if "hash_logits" in feats
                    else pipeline.hash_code(served.model, embedding=fused["embedding"])
                )
            return fused, packed

        fused, packed = await asyncio.to_thread(fuse_and_hash)
        fus = fusion_pb2.FuseResponse(model=enc.model, embedding=convert.tensor_to_proto(fused["embedding"]))
        if "probabilities" in fused:
            fus.probabilities.extend(
                common_pb2.LabelScore(label=t, score=float(p))
                for t, p in zip(served.card.targets, fused["probabilities"])
            )
        code = convert.code_to_proto(packed, served.model.code_bits) if packed is not None else None
        return enc, fus, code
