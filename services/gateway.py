"""Gateway deployment: the public ``lungsearch.v1.LungSearch`` service, composed of the Encoding,
Fusion, Hashing and Ranking deployments through handles; also the standard
``grpc.health.v1.Health`` service and, for operators, the internal services (forwarded).

The gateway is where the API's rules live: bearer-token auth (``lungsearch.serving.auth``), the
request limits (``lungsearch.serving.limits``, checked before any pixel is decoded), decoding and
de-identification (``lungsearch.data.read_study`` with the server's HMAC key), and the one mapping
from errors to gRPC statuses (``lungsearch.serving.status``): nothing escapes a method, so Serve
never sends a traceback to a client.

Each request resolves the live model version once and passes it explicitly to every stage, so
``ActivateModel`` (which loads the new version everywhere first, then flips one pointer) never
makes a request mix versions.

``app`` is the Serve application builder named in ``services/serve_config.yaml``
(``import_path: services.gateway:app``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

from grpc_health.v1 import health_pb2
from ray import serve

from lungsearch import inference
from lungsearch._proto.v1 import (
    common_pb2,
    encoding_pb2,
    fusion_pb2,
    gateway_pb2,
    hashing_pb2,
    ranking_pb2,
)
from lungsearch.errors import ConfigError, InvalidImageError, InvalidRequestError, NotFoundError
from lungsearch.serving import convert, limits, pipeline
from lungsearch.serving.appconfig import AppArgs, deployment_options
from lungsearch.serving.auth import Authenticator
from lungsearch.serving.health import HEALTH_SERVICES, health_status
from lungsearch.serving.logs import route_to_serve_log
from lungsearch.serving.metrics import ServingMetrics, merge_expositions
from lungsearch.serving.models import ModelSet, ServedModel, check_version, parse_profiles
from lungsearch.serving.pointers import RegistryPointers
from lungsearch.serving.rpc import rpc

__all__ = ["Gateway", "app", "HEALTH_SERVICES"]

log = logging.getLogger("lungsearch.services.gateway")

_READY_TIMEOUT_S = 3.0


@serve.deployment(name="Gateway", ray_actor_options={"num_cpus": 0.2}, max_ongoing_requests=64)
@serve.ingress()  # the web page (lungsearch.web.app) on Serve's HTTP ingress; gRPC routes by method name as before
class Gateway:
    """Args:
    encoding, fusion, hashing, ranking: deployment handles (bound by :func:`app`).
    args: the application's :class:`~lungsearch.serving.appconfig.AppArgs` as a dict.
    """

    def __init__(self, encoding, fusion, hashing, ranking, args: dict[str, Any]) -> None:
        route_to_serve_log()
        from lungsearch.data.deid import load_or_create_key

        self.args = AppArgs.parse(args)
        self.metrics = ServingMetrics("gateway")
        self.auth = Authenticator.from_file(
            self.args.tokens_file or None,
            insecure_local=self.args.insecure_local,
            loopback_only=self.args.loopback_only,
        )
        self.models = ModelSet(self.args.profiles, root=self.args.artifacts_dir, load_weights=False)
        self.models.load()
        self.hmac_key = load_or_create_key(self.args.hmac_key_file)
        self.encoding, self.fusion, self.hashing, self.ranking = encoding, fusion, hashing, ranking
        self.pointers = RegistryPointers(self.args.artifacts_dir, self.models.profiles)  # LIVE and STAGED
        self._publish_models()
        self.thumbs = self._open_thumbnails()
        self.audit = self._open_audit()
        # The report scrubber's first call imports spaCy (seconds): do it now, not in the first Ingest.
        threading.Thread(target=inference.deidentify_report, args=("warm-up",), daemon=True).start()
        log.info(
            "gateway up: profiles=%s auth=%s",
            ",".join(self.models.profiles),
            "tokens" if self.auth.secured else ("insecure-local" if self.auth.insecure_local else "deny-all"),
        )

    def _open_thumbnails(self):
        """The stored cases' thumbnails (``lungsearch.web.thumbs``), or None when turned off."""
        from lungsearch.web.thumbs import ThumbnailStore, default_path

        where = self.args.thumbnails_path
        if where == "off":
            return None
        return ThumbnailStore(where or default_path(self.args.hmac_key_file))

    def _open_audit(self):
        """The audit trail of external calls (``lungsearch.serving.audit``), or None when turned off."""
        from lungsearch.serving.audit import GatewayAudit

        where = self.args.audit_log
        if where == "off":
            return None
        return GatewayAudit(where or Path(self.args.hmac_key_file).resolve().parent / "audit" / "gateway.jsonl")

    def __serve_build_asgi_app__(self):
        """Serve's late-bound ingress hook: the page and its JSON API, over this replica's methods."""
        from lungsearch.web.app import build_web_app

        return build_web_app(self)

    # --- model resolution ------------------------------------------------------------------------
    def _refresh_live(self) -> None:
        """Follow a switch or a re-index another replica, an operator or ``lungsearch.reindex`` made
        (``lungsearch.serving.pointers``: a re-read at most every ``registry.POINTER_REFRESH_S``)."""
        for p, v in self.pointers.poll().items():
            if v != self.models.live.get(p):
                self.models.activate(p, v)
                log.info("following LIVE: %s@%s", p, v)
                self._publish_models()

    def _served(self, ref: common_pb2.ModelRef) -> ServedModel:
        self._refresh_live()
        return self.models.get(ref.profile, ref.version)

    def _publish_models(self) -> None:
        self.metrics.clear_models()
        for m in self.models.loaded():
            self.metrics.set_model(m.profile, m.version, live=self.models.live.get(m.profile) == m.version)

    # --- the encode path shared by Ingest, Search, Classify, Explain ---------------------------------------
    async def _decode(self, served: ServedModel, images) -> Any:
        from lungsearch.data import read_study

        lim = served.cfg.serve.limits
        limits.check_images(images, lim)
        study = await asyncio.to_thread(read_study, [im.data for im in images], limits=lim, hmac_key=self.hmac_key)
        if study.modality != served.cfg.modality:
            raise InvalidImageError(
                f"profile {served.profile} serves {served.cfg.modality} images, got {study.modality}",
                code="modality_mismatch",
                field="images",
            )
        return study

    async def _encode(
        self, served: ServedModel, images, report: common_pb2.Report, *, explain: bool = False, label: str = ""
    ) -> tuple[Any, str, encoding_pb2.EncodeResponse]:
        text = limits.check_report(report, served.cfg.serve.limits)
        if not images and not text:
            raise InvalidRequestError("give an image, a report, or both", code="empty_query")
        study = await self._decode(served, images) if images else None
        req = encoding_pb2.EncodeRequest(
            model=convert.model_ref(served.profile, served.version), report=report, explain=explain, explain_label=label
        )
        enc = await self.encoding.Encode.remote(req, study=study)
        return study, text, enc

    async def _embed(
        self, served: ServedModel, enc: encoding_pb2.EncodeResponse
    ) -> tuple[fusion_pb2.FuseResponse, common_pb2.HashCode | None]:
        ref = convert.model_ref(served.profile, served.version)
        fus = await self.fusion.Fuse.remote(fusion_pb2.FuseRequest(model=ref, features=enc.features))
        code = None
        if served.card.code_bits:
            # Learned codes come from the encoder (sign of hash_logits); LSH hashes the fused embedding.
            if enc.features.HasField("hash_logits"):
                hreq = hashing_pb2.HashRequest(model=ref, hash_logits=enc.features.hash_logits)
            else:
                hreq = hashing_pb2.HashRequest(model=ref, embedding=fus.embedding)
            code = (await self.hashing.Hash.remote(hreq)).code
        return fus, code

    async def _encode_embed(self, served: ServedModel, images, report: common_pb2.Report):
        """(study, text, features, fused, code) of a query or an ingested study.

        ``stages: graph`` (default) calls Encoding, Fusion and Hashing in turn; ``stages: fused``
        asks the Encoding replica to fuse and hash too (same library functions, same model), which
        saves two deployment hops per request (see docs/serving.md, "Serving overhead").
        """
        if self.args.stages == "fused":
            text = limits.check_report(report, served.cfg.serve.limits)
            if not images and not text:
                raise InvalidRequestError("give an image, a report, or both", code="empty_query")
            study = await self._decode(served, images) if images else None
            req = encoding_pb2.EncodeRequest(model=convert.model_ref(served.profile, served.version), report=report)
            enc, fus, code = await self.encoding.encode_fused.remote(req, study=study)
            return study, text, enc, fus, code
        study, text, enc = await self._encode(served, images, report)
        fus, code = await self._embed(served, enc)
        return study, text, enc, fus, code

    async def _rank(
        self, served: ServedModel, fus, code, top_k: int, flt: common_pb2.Filter | None = None
    ) -> ranking_pb2.RankResponse:
        req = ranking_pb2.RankRequest(
            model=convert.model_ref(served.profile, served.version), embedding=fus.embedding, top_k=top_k
        )
        if code is not None:
            req.code.CopyFrom(code)
        if flt is not None:
            req.filter.CopyFrom(flt)
        return await self.ranking.Rank.remote(req)

    # --- LungSearch ----------------------------------------------------------------------------------
    async def _ingest(self, request: gateway_pb2.IngestRequest) -> gateway_pb2.IngestResponse:
        served = self._served(request.model)
        lim = served.cfg.serve.limits
        size = limits.check_message(request, lim)
        self.metrics.observe_request_size("Ingest", size)
        labels = limits.check_labels(request.labels)
        source_id = limits.check_source_id(request.source_id)
        if not request.images:
            raise InvalidRequestError("ingest needs at least one image", code="no_image", field="images")
        report = await self._deidentified_report(request.report, lim)
        staged = self._staged_for(served, request.model.version)
        if staged is not None:
            # A re-index is building this version: write the case there first, so an OK means both
            # versions hold it and a failure fails the call before the live version acknowledges it
            # (the client retries; ingest is idempotent by case key).
            await self._store_case(staged, request.images, report, labels, source_id)
        return await self._store_case(served, request.images, report, labels, source_id)

    def _staged_for(self, served: ServedModel, requested_version: str) -> ServedModel | None:
        """The staged version to write an ingest to as well: only when the ingest targets the live
        version (unpinned, or pinned to it) and a different version is staged."""
        version = self.pointers.staged_for(served.profile)
        if not version or version == served.version or served.version != self.models.live.get(served.profile):
            return None
        return self.models.get(served.profile, version)

    async def _store_case(
        self, served: ServedModel, images, report: common_pb2.Report, labels, source_id: str
    ) -> gateway_pb2.IngestResponse:
        """Embed one study with ``served`` and upsert it into that version's collection; returns the
        ingest's answer for that version (with the radiomics ROI flag when the lung mask failed)."""
        study, text, enc, fus, code = await self._encode_embed(served, images, report)
        key = pipeline.derive_case_key(
            self.hmac_key, study=study, source_id=source_id, image_bytes=[im.data for im in images]
        )
        ref = convert.model_ref(served.profile, served.version)
        case = common_pb2.Case(
            case_key=key,
            modality=convert.modality_to_proto(study.modality),
            view=convert.view_to_proto(study.view),
            labels=labels,
            report_excerpt=pipeline.report_excerpt(text),
            model=ref,
            num_images=len(study.images),
        )
        case.ingested_at.CopyFrom(convert.timestamp(time.time()))
        record = ranking_pb2.CaseRecord(case=case, embedding=fus.embedding)
        if code is not None:
            record.code.CopyFrom(code)
        # Ranking writes Milvus and flushes before it answers: an OK here is durable.
        up = await self.ranking.Upsert.remote(ranking_pb2.UpsertRequest(model=ref, records=[record]))
        await self._store_thumbnail(served, key, study)
        return convert.copy_radiomics_roi(
            enc, gateway_pb2.IngestResponse(case_key=key, created=up.inserted > 0, model=ref)
        )

    async def _deidentified_report(self, report: common_pb2.Report, lim) -> common_pb2.Report:
        """The report an ingest stores and embeds: names, identifiers, dates, phones, addresses and
        ages over 89 removed (``lungsearch.inference.deidentify_report``); only counts are recorded."""
        text = limits.check_report(report, lim)
        if not text:
            return report
        scrubbed = await asyncio.to_thread(inference.deidentify_report, text)
        self.metrics.observe_report_scrub(dict(scrubbed.counts))
        return common_pb2.Report(text=scrubbed.text)

    async def _store_thumbnail(self, served: ServedModel, key: str, study) -> None:
        """Keep the case's preprocessed pixels as a thumbnail (ExplainMatch draws its heat map on it).
        The case is already durable: a failure here costs the page an image, not the ingest."""
        if self.thumbs is None:
            return
        from lungsearch.data import preprocess_study

        try:
            pixels = await asyncio.to_thread(preprocess_study, study, served.cfg.data)
            await asyncio.to_thread(self.thumbs.put, served.profile, key, pixels, model_version=served.version)
        except Exception as exc:  # noqa: BLE001 - see the docstring; logged without any value
            log.warning("thumbnail not stored: %s", type(exc).__name__)

    @rpc("Ingest", gateway_pb2.IngestResponse)
    async def Ingest(self, request: gateway_pb2.IngestRequest, grpc_context=None) -> gateway_pb2.IngestResponse:
        return await self._ingest(request)

    @rpc("IngestStream", gateway_pb2.IngestResponse)
    async def IngestStream(self, request_stream, grpc_context=None) -> gateway_pb2.IngestResponse:
        asm: limits.ChunkAssembler | None = None
        async for part in request_stream:
            if asm is None:
                # The header names the profile, whose limits then bound the rest of the stream.
                if part.WhichOneof("part") != "header":
                    raise InvalidRequestError("the first stream message must be the header", code="stream_order")
                served = self._served(part.header.model)
                asm = limits.ChunkAssembler(served.cfg.serve.limits)
            asm.add(part)
        if asm is None:
            raise InvalidRequestError("empty stream: no header", code="stream_header")
        return await self._ingest(asm.finish())

    @rpc("Search", gateway_pb2.SearchResponse)
    async def Search(self, request: gateway_pb2.SearchRequest, grpc_context=None) -> gateway_pb2.SearchResponse:
        served = self._served(request.model)
        lim = served.cfg.serve.limits
        self.metrics.observe_request_size("Search", limits.check_message(request, lim))
        k = limits.check_top_k(request.top_k, lim)
        convert.filter_from_proto(request.filter)  # validates label counts before any work
        _, _, enc, fus, code = await self._encode_embed(served, request.images, request.report)
        ranked = await self._rank(served, fus, code, k, request.filter)
        resp = convert.copy_radiomics_roi(enc, gateway_pb2.SearchResponse(model=ranked.model))
        for i, r in enumerate(ranked.results):
            resp.hits.add(case=r.case, score=r.score, rank=i + 1, hamming_distance=r.hamming_distance)
        return resp

    @rpc("Classify", gateway_pb2.ClassifyResponse)
    async def Classify(self, request: gateway_pb2.ClassifyRequest, grpc_context=None) -> gateway_pb2.ClassifyResponse:
        served = self._served(request.model)
        lim = served.cfg.serve.limits
        self.metrics.observe_request_size("Classify", limits.check_message(request, lim))
        k = limits.check_top_k(request.knn_k, lim, field="knn_k")
        _, _, enc, fus, code = await self._encode_embed(served, request.images, request.report)
        ranked = await self._rank(served, fus, code, k)
        vote = pipeline.knn_vote([list(r.case.labels) for r in ranked.results], served.card.targets)
        resp = convert.copy_radiomics_roi(
            enc, gateway_pb2.ClassifyResponse(model=fus.model, probabilities=list(fus.probabilities))
        )
        resp.knn_vote.extend(common_pb2.LabelScore(label=lab, score=float(s)) for lab, s in vote)
        resp.top_label = pipeline.top_label([(p.label, p.score) for p in fus.probabilities], vote)
        return resp

    @rpc("Explain", gateway_pb2.ExplainResponse)
    async def Explain(self, request: gateway_pb2.ExplainRequest, grpc_context=None) -> gateway_pb2.ExplainResponse:
        from lungsearch.data import preprocess_study

        served = self._served(request.model)
        lim = served.cfg.serve.limits
        self.metrics.observe_request_size("Explain", limits.check_message(request, lim))
        if not request.images:
            raise InvalidRequestError("explaining needs an image", code="explain_no_image", field="images")
        if request.label and request.label not in served.card.targets:
            raise InvalidRequestError("label is not one of the model's targets", code="unknown_label", field="label")
        study, _, enc = await self._encode(served, request.images, request.report, explain=True, label=request.label)
        fus = await self.fusion.Fuse.remote(fusion_pb2.FuseRequest(model=enc.model, features=enc.features))
        heat = convert.tensor_from_proto(enc.heatmap, field="heatmap")
        pixels = await asyncio.to_thread(preprocess_study, study, served.cfg.data)
        image = pixels[pixels.shape[0] // 2, 0]
        score = next((p.score for p in fus.probabilities if p.label == enc.heatmap_label), 0.0)
        heat_png, overlay = await asyncio.to_thread(
            lambda: (pipeline.heatmap_png(heat), pipeline.overlay_png(image, heat))
        )
        return convert.copy_radiomics_roi(
            enc,
            gateway_pb2.ExplainResponse(
                model=enc.model, label=enc.heatmap_label, score=float(score), heatmap_png=heat_png, overlay_png=overlay
            ),
        )

    async def _query_heat(self, served: ServedModel, study, report, label: str):
        """(encode response with the query's heat map for ``label``, fused response, code)."""
        ref = convert.model_ref(served.profile, served.version)
        req = encoding_pb2.EncodeRequest(model=ref, report=report, explain=study is not None, explain_label=label)
        enc = await self.encoding.Encode.remote(req, study=study)
        fus, code = await self._embed(served, enc)
        return enc, fus, code

    @rpc("ExplainMatch", gateway_pb2.ExplainMatchResponse)
    async def ExplainMatch(
        self, request: gateway_pb2.ExplainMatchRequest, grpc_context=None
    ) -> gateway_pb2.ExplainMatchResponse:
        from lungsearch.data import preprocess_study
        from lungsearch.web import match

        served = self._served(request.model)
        lim = served.cfg.serve.limits
        self.metrics.observe_request_size("ExplainMatch", limits.check_message(request, lim))
        key = limits.check_case_key(request.case_key)
        targets = list(served.card.targets)
        if request.label and request.label not in targets:
            raise InvalidRequestError("label is not one of the model's targets", code="unknown_label", field="label")
        text = limits.check_report(request.report, lim)
        if not request.images and not text:
            raise InvalidRequestError("give an image, a report, or both", code="empty_query")
        ref = convert.model_ref(served.profile, served.version)
        case = (await self.ranking.Get.remote(ranking_pb2.GetRequest(model=ref, case_key=key))).case
        study = await self._decode(served, request.images) if request.images else None
        # Explain for the label most likely to be shared first; a second pass only if the query's
        # own prediction shows another shared label.
        first = match.choose_label(request.label, [], list(case.labels), targets)
        enc, fus, code = await self._query_heat(served, study, request.report, first)
        if fus.probabilities:
            scores = [(p.label, float(p.score)) for p in fus.probabilities]
        else:  # no classifier head (ct-ild): the query's labels are its neighbours' vote
            ranked = await self._rank(served, fus, code, 10)
            scores = pipeline.knn_vote([list(r.case.labels) for r in ranked.results], targets)
        qlabels = match.predicted_labels(scores)
        shared = match.shared_labels([lab for lab, _ in qlabels], case.labels)
        label = match.choose_label(request.label, shared, list(case.labels), targets, qlabels[0][0] if qlabels else "")
        if study is not None and label != first:
            enc, _, _ = await self._query_heat(served, study, request.report, label)
        query_excerpt = pipeline.report_excerpt(text)
        resp = gateway_pb2.ExplainMatchResponse(
            model=ref, label=label, shared_labels=shared, case=case, query_excerpt=query_excerpt
        )
        convert.copy_radiomics_roi(enc, resp)
        resp.query_labels.extend(common_pb2.LabelScore(label=lab, score=s) for lab, s in qlabels)
        for ph in match.shared_phrases(query_excerpt, case.report_excerpt):
            sp = resp.shared_phrases.add(phrase=ph.phrase)
            sp.query_spans.extend(gateway_pb2.TextSpan(start=x.start, end=x.end) for x in ph.query_spans)
            sp.case_spans.extend(gateway_pb2.TextSpan(start=x.start, end=x.end) for x in ph.case_spans)
        if study is not None and enc.HasField("heatmap"):
            heat = convert.tensor_from_proto(enc.heatmap, field="heatmap")
            pixels = await asyncio.to_thread(preprocess_study, study, served.cfg.data)
            image = pixels[pixels.shape[0] // 2, 0]
            resp.query_heatmap_png, resp.query_overlay_png = await asyncio.to_thread(
                lambda: (pipeline.heatmap_png(heat), pipeline.overlay_png(image, heat))
            )
        thumb = await asyncio.to_thread(self.thumbs.get, served.profile, key) if self.thumbs is not None else None
        if thumb is not None:
            pixels = thumb.model_input(served.cfg.data.image_size)
            heat, _ = await self.encoding.explain_pixels.remote(ref, pixels, label, case.report_excerpt)
            resp.case_heatmap_png, resp.case_overlay_png = await asyncio.to_thread(
                lambda: (pipeline.heatmap_png(heat), pipeline.overlay_png(pixels[0, 0], heat))
            )
            resp.case_image_available = True
        return resp

    @rpc("GetCase", gateway_pb2.GetCaseResponse)
    async def GetCase(self, request: gateway_pb2.GetCaseRequest, grpc_context=None) -> gateway_pb2.GetCaseResponse:
        served = self._served(request.model)
        key = limits.check_case_key(request.case_key)
        res = await self.ranking.Get.remote(
            ranking_pb2.GetRequest(model=convert.model_ref(served.profile, served.version), case_key=key)
        )
        return gateway_pb2.GetCaseResponse(case=res.case)

    @rpc("DeleteCase", gateway_pb2.DeleteCaseResponse)
    async def DeleteCase(
        self, request: gateway_pb2.DeleteCaseRequest, grpc_context=None
    ) -> gateway_pb2.DeleteCaseResponse:
        served = self._served(request.model)
        key = limits.check_case_key(request.case_key)
        res = await self.ranking.Delete.remote(
            ranking_pb2.DeleteRequest(model=convert.model_ref(served.profile, served.version), case_key=key)
        )
        if self.thumbs is not None:  # a deleted case keeps no pixels either
            await asyncio.to_thread(self.thumbs.delete, served.profile, key)
        return gateway_pb2.DeleteCaseResponse(deleted=res.deleted)

    @rpc("ListModels", gateway_pb2.ListModelsResponse)
    async def ListModels(
        self, request: gateway_pb2.ListModelsRequest, grpc_context=None
    ) -> gateway_pb2.ListModelsResponse:
        from lungsearch.registry import list_cards

        self._refresh_live()
        profiles = [self.models.check_profile(request.profile)] if request.profile else self.models.profiles
        resp = gateway_pb2.ListModelsResponse()
        for p in profiles:
            cards = await asyncio.to_thread(list_cards, self.args.artifacts_dir, p)
            for card in cards:
                live = self.models.live.get(p) == card.version
                info = resp.models.add(
                    model=convert.model_ref(p, card.version),
                    live=live,
                    modality=convert.modality_to_proto(card.config.modality),
                    targets=list(card.targets),
                    input_size=card.input_size,
                    embedding_dim=card.embedding_dim,
                    code_bits=card.code_bits,
                    synthetic_data=card.synthetic_data,
                )
                info.metrics.update({k: float(v) for k, v in card.metrics.items()})
                if card.created_at:
                    try:
                        info.created_at.FromJsonString(card.created_at.replace("+00:00", "Z"))
                    except ValueError:
                        pass
                if live:  # counting opens (and indexes) a collection: only for the live version
                    stats = await self.ranking.Stats.remote(ranking_pb2.StatsRequest(model=info.model))
                    info.num_cases = stats.num_cases
        return resp

    @rpc("ActivateModel", gateway_pb2.ActivateModelResponse)
    async def ActivateModel(
        self, request: gateway_pb2.ActivateModelRequest, grpc_context=None
    ) -> gateway_pb2.ActivateModelResponse:
        from lungsearch import registry

        profile = self.models.check_profile(request.model.profile)
        version = check_version(request.model.version)
        if not version:
            raise InvalidRequestError("ActivateModel needs model.version", code="no_version", field="model.version")
        await asyncio.to_thread(registry.resolve, profile, version, self.args.artifacts_dir)  # NOT_FOUND early
        # Load the new version in every stage (and build its index) first: a failure here leaves
        # the old version live everywhere that matters (the gateway's pointer below).
        await asyncio.gather(
            self.encoding.activate.remote(profile, version),
            self.fusion.activate.remote(profile, version),
            self.hashing.activate.remote(profile, version),
            self.ranking.activate.remote(profile, version),
        )
        await asyncio.to_thread(registry.set_live, profile, version, self.args.artifacts_dir)
        previous, live = self.models.activate(profile, version)
        self.pointers.wrote_live(profile)
        self._publish_models()
        log.info("activated %s@%s (was %s)", profile, live, previous or "-")
        # The other Gateway replicas re-read LIVE at most POINTER_REFRESH_S apart: answering after that
        # means every request that follows, on whichever replica, uses the new version (the switch
        # as a caller sees it; a stale replica once answered an unpinned Search with the old one).
        await asyncio.sleep(registry.POINTER_REFRESH_S + 0.2)
        return gateway_pb2.ActivateModelResponse(
            previous=convert.model_ref(profile, previous), live=convert.model_ref(profile, live)
        )

    # --- internal services, forwarded for operators (roles in lungsearch.serving.auth) -------------------
    def _check_internal(self, request) -> None:
        served = self._served(request.model)
        limits.check_message(request, served.cfg.serve.limits)

    @rpc("Encode", encoding_pb2.EncodeResponse)
    async def Encode(self, request, grpc_context=None):
        self._check_internal(request)
        return await self.encoding.Encode.remote(request)

    @rpc("Fuse", fusion_pb2.FuseResponse)
    async def Fuse(self, request, grpc_context=None):
        self._check_internal(request)
        return await self.fusion.Fuse.remote(request)

    @rpc("Hash", hashing_pb2.HashResponse)
    async def Hash(self, request, grpc_context=None):
        self._check_internal(request)
        return await self.hashing.Hash.remote(request)

    @rpc("Rank", ranking_pb2.RankResponse)
    async def Rank(self, request, grpc_context=None):
        self._check_internal(request)
        return await self.ranking.Rank.remote(request)

    @rpc("Upsert", ranking_pb2.UpsertResponse)
    async def Upsert(self, request, grpc_context=None):
        self._check_internal(request)
        return await self.ranking.Upsert.remote(request)

    @rpc("Get", ranking_pb2.GetResponse)
    async def Get(self, request, grpc_context=None):
        self._check_internal(request)
        return await self.ranking.Get.remote(request)

    @rpc("Delete", ranking_pb2.DeleteResponse)
    async def Delete(self, request, grpc_context=None):
        self._check_internal(request)
        return await self.ranking.Delete.remote(request)

    @rpc("Stats", ranking_pb2.StatsResponse)
    async def Stats(self, request, grpc_context=None):
        self._check_internal(request)
        return await self.ranking.Stats.remote(request)

    # --- grpc.health.v1.Health ---------------------------------------------------------------------
    async def readiness(self) -> dict[str, str]:
        """Why each part is not ready ("" = ready): gateway models, each stage's models, the store."""
        out = {"gateway": "; ".join(f"{p}: {m}" for p, m in sorted(self.models.errors.items()))}

        async def ask(name: str, call) -> None:
            try:
                out[name] = await asyncio.wait_for(call, _READY_TIMEOUT_S)
            except asyncio.TimeoutError:
                out[name] = "no answer in time"
            except BaseException as exc:  # noqa: BLE001 - any failure means not ready
                out[name] = type(exc).__name__

        await asyncio.gather(
            ask("encoding", self.encoding.ready.remote()),
            ask("fusion", self.fusion.ready.remote()),
            ask("hashing", self.hashing.ready.remote()),
            ask("ranking", self.ranking.ready.remote()),
        )
        return out

    @rpc("Check", health_pb2.HealthCheckResponse, authorize=False)
    async def Check(self, request: health_pb2.HealthCheckRequest, grpc_context=None) -> health_pb2.HealthCheckResponse:
        if request.service not in HEALTH_SERVICES:
            raise NotFoundError("unknown service", code="unknown_service", field="service")
        ready = await self.readiness()
        return health_pb2.HealthCheckResponse(status=health_status(request.service, ready))

    @rpc("List", health_pb2.HealthListResponse, authorize=False)
    async def List(self, request: health_pb2.HealthListRequest, grpc_context=None) -> health_pb2.HealthListResponse:
        ready = await self.readiness()
        resp = health_pb2.HealthListResponse()
        for service in HEALTH_SERVICES:
            resp.statuses[service].status = health_status(service, ready)
        return resp

    async def Watch(self, request: health_pb2.HealthCheckRequest, grpc_context=None):
        """Streams the status now and on every change, polling every 5 s, for up to 60 s (then the
        client re-watches; Serve's request timeout would end an endless stream anyway)."""
        if request.service not in HEALTH_SERVICES:
            yield health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
            return
        last = None
        deadline = time.monotonic() + 60.0
        while True:
            status = health_status(request.service, await self.readiness())
            if status != last:
                last = status
                yield health_pb2.HealthCheckResponse(status=status)
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(5.0)

    # --- metrics -------------------------------------------------------------------------------------
    async def metrics_text(self) -> str:
        """The whole graph's metrics as one exposition: every live replica of every deployment of
        this app, once, as published to the metrics collector (:mod:`lungsearch.serving.metrics_board`;
        re-rendered for the scrape). Without a collector (not yet up, or lost), this replica merged
        with one replica of each stage, as a scrape must get an answer."""
        from lungsearch.serving import metrics_board

        try:
            app_name = serve.get_replica_context().app_name
            text = await asyncio.wait_for(
                metrics_board.collector(create=False).exposition.remote(app_name), _READY_TIMEOUT_S + 2.0
            )  # the collector waits up to 2 s for fresh ones
            if text:
                return text
        except BaseException as exc:  # noqa: BLE001 - fall back below
            log.warning("metrics collector unavailable: %s", type(exc).__name__)
        texts = [self.metrics.render()]
        for h in (self.encoding, self.fusion, self.hashing, self.ranking):
            try:
                texts.append(await asyncio.wait_for(h.metrics_text.remote(), _READY_TIMEOUT_S))
            except BaseException as exc:  # noqa: BLE001 - a missing part must not break the scrape
                log.warning("metrics of a deployment unavailable: %s", type(exc).__name__)
        return merge_expositions(texts)

    def check_health(self) -> None:
        self.models.health()


def _profile_config(profile: str, version: str | None, root: str):
    """Serve knobs of a profile: configs/<profile>.yaml (operators edit it), else the model card."""
    from lungsearch import registry
    from lungsearch.config import load_profile

    try:
        return load_profile(profile)
    except ConfigError:
        return registry.resolve(profile, version, root=root).config


def _abs(path: str) -> str:
    # Replicas may start in another working directory than the one `serve run` was called from.
    if not path or "://" in path:
        return path
    return str(Path(path).expanduser().resolve())


def app(args: dict[str, Any] | None = None):
    """Build the lungsearch Serve application (``import_path: services.gateway:app``).

    Args:
        args: :class:`~lungsearch.serving.appconfig.AppArgs` fields (profiles, artifacts_dir,
            milvus_uri, hmac_key_file, tokens_file, insecure_local, ...).

    Raises:
        ConfigError: bad args, or more than one Ranking replica on a milvus-lite file.
    """
    from lungsearch.store.milvus import is_lite_uri
    from services.encoding import Encoding
    from services.fusion import Fusion
    from services.hashing import Hashing
    from services.ranking import Ranking

    a = AppArgs.parse(args)
    a = a.model_copy(
        update={
            "artifacts_dir": _abs(a.artifacts_dir),
            "hmac_key_file": _abs(a.hmac_key_file),
            "tokens_file": _abs(a.tokens_file),
            "thumbnails_path": a.thumbnails_path if a.thumbnails_path == "off" else _abs(a.thumbnails_path),
            "audit_log": a.audit_log if a.audit_log == "off" else _abs(a.audit_log),
            "milvus_uri": _abs(a.milvus_uri) if is_lite_uri(a.milvus_uri) else a.milvus_uri,
        }
    )
    profile, version = parse_profiles(a.profiles)[0]
    cfg = _profile_config(profile, version, a.artifacts_dir)
    opts = {name: deployment_options(cfg, name) for name in ("gateway", "encoding", "fusion", "hashing", "ranking")}
    if is_lite_uri(a.milvus_uri) and (
        opts["ranking"].get("num_replicas", 1) != 1 or "autoscaling_config" in opts["ranking"]
    ):
        raise ConfigError(
            "a milvus-lite file is opened by one process: run exactly one Ranking replica (or use a Milvus server URI)"
        )
    profiles = list(a.profiles)
    enc = Encoding.options(**opts["encoding"]).bind(profiles, a.artifacts_dir, a.torch_threads)
    fus = Fusion.options(**opts["fusion"]).bind(profiles, a.artifacts_dir, a.torch_threads)
    hsh = Hashing.options(**opts["hashing"]).bind(profiles, a.artifacts_dir, a.torch_threads)
    rnk = Ranking.options(**opts["ranking"]).bind(
        profiles, a.artifacts_dir, a.milvus_uri, a.milvus_token_env, a.store_timeout, a.index_backend
    )
    return Gateway.options(**opts["gateway"]).bind(enc, fus, hsh, rnk, a.model_dump())
