"""The radiologist's page: a FastAPI app the Gateway serves on Ray Serve's HTTP ingress.

``services.gateway.Gateway`` is a Serve ingress (``@serve.ingress()`` with
``__serve_build_asgi_app__``), so this app runs inside the Gateway replica and calls the same
methods the gRPC proxy calls (``Search``, ``Classify``, ``ExplainMatch``, ``GetCase``,
``ListModels``) in process: the same limits, de-identification, model resolution and error
mapping. Those in-process calls are trusted like handle calls, so this module authorises every
API request itself with the Gateway's :class:`~lungsearch.serving.auth.Authenticator` (the same
bearer tokens and roles as gRPC, ``Authorization: Bearer <token>``).

The page itself (``/``, ``/static/*``) is static and carries no data: without a token it can only
ask for one. What the API returns is what the gRPC API returns (case keys are keyed hashes,
excerpts are the stored de-identified excerpts, images are preprocessed pixels as PNG data);
uploads travel as base64 JSON without file names (a file name can carry a patient's name), never
in a URL. Responses are ``Cache-Control: no-store``; a strict Content-Security-Policy keeps the page
to its own scripts and images.

Routes (relative to the application's route prefix, ``/lungsearch`` by default):

* ``GET /`` the page; ``GET /static/{file}`` its JS and CSS;
* ``GET /api/session`` the caller's role (401 without a valid token);
* ``GET /api/models``; ``POST /api/search``; ``POST /api/classify``; ``POST /api/explain_match``;
* ``GET /api/case/{case_key}?profile=`` the stored case and its thumbnail slices.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from pathlib import Path
from typing import Any

import grpc
from fastapi import Request  # module level: FastAPI resolves the (string) annotations against these globals

from lungsearch._proto.v1 import common_pb2, gateway_pb2
from lungsearch.errors import InvalidRequestError, LimitExceededError, LungsearchError
from lungsearch.serving.status import status_for

__all__ = [
    "build_web_app",
    "STATIC_DIR",
    "HTTP_STATUS",
    "query_from_json",
    "filter_from_json",
    "case_json",
    "MAX_BODY_BYTES",
]

log = logging.getLogger("lungsearch.web")

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: Largest JSON body accepted (base64 of the largest gRPC message, with room for the JSON around it).
MAX_BODY_BYTES = 96 * 1024 * 1024

#: gRPC status -> HTTP status of the JSON API.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
}
_FORMATS = {
    "": common_pb2.IMAGE_FORMAT_UNSPECIFIED,
    "dicom": common_pb2.IMAGE_FORMAT_DICOM,
    "png": common_pb2.IMAGE_FORMAT_PNG,
    "jpeg": common_pb2.IMAGE_FORMAT_JPEG,
}
_MODALITIES = {"": 0, "cxr": common_pb2.MODALITY_CXR, "ct": common_pb2.MODALITY_CT, "mr": common_pb2.MODALITY_MR}
_VIEWS = {
    "": 0,
    "PA": common_pb2.VIEW_PA,
    "AP": common_pb2.VIEW_AP,
    "LATERAL": common_pb2.VIEW_LATERAL,
    "AXIAL": common_pb2.VIEW_AXIAL,
}


# ----------------------------------------------------------------------------------- pure helpers


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii") if data else ""


def _labels(value: Any, field: str) -> list[str]:
    if value in (None, ""):
        return []
    if isinstance(value, str):
        value = [v for v in (p.strip() for p in value.split(",")) if v]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequestError(f"{field} must be a list of labels", code="bad_filter", field=field)
    return value


def filter_from_json(doc: Any) -> common_pb2.Filter:
    """``{"modality": "cxr", "view": "PA", "labels_any": [...], "labels_all": [...], "labels_none": [...]}``."""
    doc = doc or {}
    if not isinstance(doc, dict):
        raise InvalidRequestError("filter must be an object", code="bad_filter", field="filter")
    modality, view = str(doc.get("modality") or "").lower(), str(doc.get("view") or "").upper()
    if modality not in _MODALITIES or view not in _VIEWS:
        raise InvalidRequestError("filter modality or view unknown", code="bad_filter", field="filter")
    return common_pb2.Filter(
        modality=_MODALITIES[modality],
        view=_VIEWS[view],
        labels_any=_labels(doc.get("labels_any"), "filter.labels_any"),
        labels_all=_labels(doc.get("labels_all"), "filter.labels_all"),
        labels_none=_labels(doc.get("labels_none"), "filter.labels_none"),
    )


def query_from_json(doc: Any) -> tuple[common_pb2.ModelRef, list[common_pb2.Image], common_pb2.Report]:
    """The query part of an API body: ``{"profile", "images": [{"data": base64, "format"}], "report"}``.

    Raises:
        InvalidRequestError: a malformed body (the message names the field, never a value).
    """
    if not isinstance(doc, dict):
        raise InvalidRequestError("the body must be a JSON object", code="bad_body")
    profile = doc.get("profile") or ""
    if not isinstance(profile, str):
        raise InvalidRequestError("profile must be a string", code="bad_body", field="profile")
    name, _, version = profile.partition("@")
    images = []
    raw = doc.get("images") or []
    if not isinstance(raw, list):
        raise InvalidRequestError("images must be a list", code="bad_body", field="images")
    for i, im in enumerate(raw):
        if not isinstance(im, dict) or not isinstance(im.get("data"), str):
            raise InvalidRequestError("each image is {data: base64, format}", code="bad_body", field=f"images[{i}]")
        fmt = str(im.get("format") or "").lower()
        try:
            data = base64.b64decode(im["data"], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequestError("image data is not base64", code="bad_base64", field=f"images[{i}]") from None
        images.append(common_pb2.Image(data=data, format=_FORMATS.get(fmt, 0)))
    report = doc.get("report") or ""
    if not isinstance(report, str):
        raise InvalidRequestError("report must be a string", code="bad_body", field="report")
    return common_pb2.ModelRef(profile=name, version=version), images, common_pb2.Report(text=report)


def _enum_tail(value: str, prefix: str) -> str:
    """``MODALITY_CXR`` -> ``cxr``; ``*_UNSPECIFIED`` -> ""."""
    tail = value[len(prefix) :] if value.lower().startswith(prefix) else value
    return "" if tail.upper() == "UNSPECIFIED" else tail.lower()


def case_json(case: common_pb2.Case) -> dict[str, Any]:
    """A stored case for the page (the same fields the gRPC ``Case`` carries)."""
    return {
        "case_key": case.case_key,
        "modality": _enum_tail(common_pb2.Modality.Name(case.modality), "modality_"),
        "view": _enum_tail(common_pb2.View.Name(case.view), "view_").upper(),
        "labels": list(case.labels),
        "report_excerpt": case.report_excerpt,
        "model": {"profile": case.model.profile, "version": case.model.version},
        "num_images": case.num_images,
        "ingested_at": case.ingested_at.ToJsonString() if case.HasField("ingested_at") else "",
    }


def _spans(spans) -> list[list[int]]:
    return [[s.start, s.end] for s in spans]


def explain_json(r: gateway_pb2.ExplainMatchResponse) -> dict[str, Any]:
    return {
        "model": {"profile": r.model.profile, "version": r.model.version},
        "label": r.label,
        "shared_labels": list(r.shared_labels),
        "case": case_json(r.case),
        "query_excerpt": r.query_excerpt,
        "query_labels": [{"label": x.label, "score": x.score} for x in r.query_labels],
        "shared_phrases": [
            {"phrase": p.phrase, "query_spans": _spans(p.query_spans), "case_spans": _spans(p.case_spans)}
            for p in r.shared_phrases
        ],
        "query_heatmap_png": _b64(r.query_heatmap_png),
        "query_overlay_png": _b64(r.query_overlay_png),
        "case_heatmap_png": _b64(r.case_heatmap_png),
        "case_overlay_png": _b64(r.case_overlay_png),
        "case_image_available": r.case_image_available,
    }


def _peer(request) -> str:
    client = request.client
    if client is None:
        return ""
    host = client.host or ""
    return f"ipv6:[{host}]:{client.port}" if ":" in host else f"ipv4:{host}:{client.port}"


# ------------------------------------------------------------------------------------------ app


def build_web_app(gateway: Any):
    """The FastAPI app over a live Gateway instance (called once per replica by Serve)."""
    from fastapi import FastAPI
    from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
    from fastapi.staticfiles import StaticFiles

    web = FastAPI(title="lungsearch", docs_url=None, redoc_url=None, openapi_url=None)

    def respond(body: Any, status: int = 200) -> JSONResponse:
        return JSONResponse(body, status_code=status, headers=_SECURITY_HEADERS)

    def fail(exc: BaseException) -> JSONResponse:
        st = status_for(exc)  # PHI-free message; unknown exceptions get a generic one and a reference
        if not isinstance(exc, LungsearchError):
            log.error("web API failed: type=%s", type(exc).__name__)
        return respond(
            {"error": {"code": st.code_name, "reason": st.reason, "message": st.details, "field": st.detail.field}},
            HTTP_STATUS.get(st.code, 500),
        )

    def authorize(request: Request, method: str):
        header = request.headers.get("authorization")
        meta = [("authorization", header)] if header is not None else []
        return gateway.auth.authorize(method, meta, _peer(request))

    async def audit(method: str, who: str, outcome: Any, message: Any, response: Any) -> None:
        """One audit line, as the gRPC path writes (lungsearch.serving.rpc): the page is an external
        caller reading cases like any other. ``outcome`` is "ok" or the exception that ended the call."""
        trail = getattr(gateway, "audit", None)
        if trail is None or isinstance(outcome, asyncio.CancelledError):
            return
        if isinstance(outcome, BaseException):
            st = status_for(outcome)
            outcome = str(st.reason or st.code_name).lower()
        await trail.record(method, who, outcome, message, response)

    async def audited(request: Request, method: str, build, call):
        """Authorize ``method``, build its request message from the HTTP request (``build``, async),
        run ``call(message)`` on the Gateway and audit the outcome, failures included (a refused
        token, a bad body, an unknown case). Returns ``(message, response)``."""
        who, message = "anonymous", None
        try:
            principal = authorize(request, method)
            who = principal.name if principal is not None else who
            message = await build()
            response = await call(message)
        except BaseException as exc:
            await audit(method, who, exc, message, None)
            raise
        await audit(method, who, "ok", message, response)
        return message, response

    async def body(request: Request) -> dict[str, Any]:
        size = int(request.headers.get("content-length") or 0)
        if size > MAX_BODY_BYTES:
            raise LimitExceededError("request body too large", code="body_bytes")
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise LimitExceededError("request body too large", code="body_bytes")
        try:
            return json.loads(raw or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise InvalidRequestError("the body must be JSON", code="bad_json") from None

    def int_field(doc: dict, name: str, default: int) -> int:
        v = doc.get(name, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise InvalidRequestError(f"{name} must be an integer", code="bad_body", field=name)
        return v

    async def preview(ref: common_pb2.ModelRef, images) -> dict[str, Any]:
        """The query as the model sees it (lung-windowed, preprocessed slices) for the slider."""
        if not images:
            return {"slices": [], "modality": ""}
        from lungsearch.data import preprocess_study
        from lungsearch.web.thumbs import MAX_SLICES, pick_slices, quantize, slice_png

        served = gateway._served(ref)
        study = await gateway._decode(served, images)

        def render():
            px = preprocess_study(study, served.cfg.data)
            u8 = quantize(px)
            kept = pick_slices(u8.shape[0], MAX_SLICES * 2)
            return [_b64(slice_png(u8[i])) for i in kept], kept.index(u8.shape[0] // 2)

        slices, middle = await asyncio.to_thread(render)
        return {"slices": slices, "middle": middle, "modality": study.modality, "num_images": len(study.images)}

    @web.get("/")
    async def index(request: Request):
        # The page's URLs are relative ("static/app.js", "api/search"): they need the trailing slash.
        path = request.scope.get("root_path", "") + request.url.path.removeprefix(request.scope.get("root_path", ""))
        if not path.endswith("/"):
            return RedirectResponse(path + "/", status_code=307, headers=_SECURITY_HEADERS)
        return FileResponse(STATIC_DIR / "index.html", headers=_SECURITY_HEADERS)

    web.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")

    @web.get("/api/session")
    async def session(request: Request):
        try:
            principal = authorize(request, "ListModels")
            return respond({"role": principal.role if principal else "", "secured": gateway.auth.secured})
        except Exception as exc:  # noqa: BLE001 - mapped like the gRPC API
            return fail(exc)

    @web.get("/api/models")
    async def models(request: Request):
        try:
            authorize(request, "ListModels")
            r = await gateway.ListModels(gateway_pb2.ListModelsRequest())
            return respond(
                {
                    "models": [
                        {
                            "profile": m.model.profile,
                            "version": m.model.version,
                            "live": m.live,
                            "modality": _enum_tail(common_pb2.Modality.Name(m.modality), "modality_"),
                            "targets": list(m.targets),
                            "num_cases": m.num_cases,
                            "code_bits": m.code_bits,
                            "synthetic_data": m.synthetic_data,
                        }
                        for m in r.models
                    ]
                }
            )
        except Exception as exc:  # noqa: BLE001 - mapped like the gRPC API
            return fail(exc)

    @web.post("/api/search")
    async def search(request: Request):
        try:

            async def build():
                doc = await body(request)
                ref, images, report = query_from_json(doc)
                return gateway_pb2.SearchRequest(
                    model=ref,
                    images=images,
                    report=report,
                    top_k=int_field(doc, "top_k", 5),
                    filter=filter_from_json(doc.get("filter")),
                )

            shown: dict[str, Any] = {}

            async def run(req):  # the query's preview beside the search; the audit sees the Search answer
                res, shown["query"] = await asyncio.gather(gateway.Search(req), preview(req.model, req.images))
                return res

            _, res = await audited(request, "Search", build, run)
            prev = shown["query"]
            return respond(
                {
                    "model": {"profile": res.model.profile, "version": res.model.version},
                    "query": prev,
                    "hits": [
                        {
                            "rank": h.rank,
                            "score": h.score,
                            "hamming_distance": h.hamming_distance,
                            "case": case_json(h.case),
                        }
                        for h in res.hits
                    ],
                }
            )
        except Exception as exc:  # noqa: BLE001 - mapped like the gRPC API
            return fail(exc)

    @web.post("/api/classify")
    async def classify(request: Request):
        try:

            async def build():
                doc = await body(request)
                ref, images, report = query_from_json(doc)
                return gateway_pb2.ClassifyRequest(
                    model=ref, images=images, report=report, knn_k=int_field(doc, "knn_k", 10)
                )

            _, r = await audited(request, "Classify", build, gateway.Classify)
            return respond(
                {
                    "model": {"profile": r.model.profile, "version": r.model.version},
                    "top_label": r.top_label,
                    "probabilities": [{"label": p.label, "score": p.score} for p in r.probabilities],
                    "knn_vote": [{"label": p.label, "score": p.score} for p in r.knn_vote],
                    # the query's radiomics read the whole thorax (its lung mask failed): shown on the page
                    "radiomics_roi": (
                        {"reason": r.radiomics_roi.reason, "message": r.radiomics_roi.message}
                        if r.HasField("radiomics_roi")
                        else None
                    ),
                }
            )
        except Exception as exc:  # noqa: BLE001 - mapped like the gRPC API
            return fail(exc)

    @web.post("/api/explain_match")
    async def explain_match(request: Request):
        try:

            async def build():
                doc = await body(request)
                ref, images, report = query_from_json(doc)
                key, label = doc.get("case_key"), doc.get("label") or ""
                if not isinstance(key, str) or not isinstance(label, str):
                    raise InvalidRequestError("case_key and label must be strings", code="bad_body", field="case_key")
                return gateway_pb2.ExplainMatchRequest(
                    model=ref, images=images, report=report, case_key=key, label=label
                )

            _, r = await audited(request, "ExplainMatch", build, gateway.ExplainMatch)
            return respond(explain_json(r))
        except Exception as exc:  # noqa: BLE001 - mapped like the gRPC API
            return fail(exc)

    @web.get("/api/case/{case_key}")
    async def get_case(request: Request, case_key: str, profile: str = ""):
        try:
            name, _, version = profile.partition("@")
            ref = common_pb2.ModelRef(profile=name, version=version)

            async def build():
                return gateway_pb2.GetCaseRequest(model=ref, case_key=case_key)

            _, r = await audited(request, "GetCase", build, gateway.GetCase)
            out = case_json(r.case)
            out["slices"] = []
            if gateway.thumbs is not None:
                served = gateway._served(ref)
                thumb = await asyncio.to_thread(gateway.thumbs.get, served.profile, r.case.case_key)
                if thumb is not None:
                    out["slices"] = [_b64(p) for p in await asyncio.to_thread(thumb.pngs)]
                    out["middle"] = thumb.middle
            return respond(out)
        except Exception as exc:  # noqa: BLE001 - mapped like the gRPC API
            return fail(exc)

    return web
