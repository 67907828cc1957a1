"""A STOW-RS receive endpoint (PS3.18 10.5) in front of the same receiver as C-STORE.

``POST /studies`` (or ``/studies/{StudyInstanceUID}``) with ``multipart/related; type="application/dicom"``:
every part goes through :meth:`Receiver.store_instance` (the same checks, statuses, spool and series
assembly as a C-STORE; the request's end plays the association's release), and the answer is the
PS3.18 Store Instances Response: 200 when every instance was stored, 202 when some were, 409 when none,
with ReferencedSOPSequence / FailedSOPSequence (FailureReason = the DIMSE status) in DICOM JSON.

The pain this guards against (dicomweb-client #42: a chunked STOW-RS answered 200 with nothing stored):
chunked request bodies are decoded here (``http.server`` does not), and a 200 is only sent for instances
that are fsynced in the spool. Each request needs ``Authorization: Bearer <token>`` from
``stow_tokens`` (token -> caller AE title, whose site and profiles apply).
"""

from __future__ import annotations

import email.parser
import email.policy
import hmac
import io
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["StowServer", "parse_multipart_related"]

log = logging.getLogger(__name__)

_READ = 1 << 16


def parse_multipart_related(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """(part content type, part bytes) of a multipart/related body (the stdlib MIME parser does the work)."""
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not msg.is_multipart():
        raise ValueError("not a multipart body")
    return [(part.get_content_type(), part.get_payload(decode=True) or b"") for part in msg.iter_parts()]


class _Handler(BaseHTTPRequestHandler):
    server_version = "lungsearch-stow"
    protocol_version = "HTTP/1.1"
    stow: "StowServer"  # set on the subclass

    def log_message(self, *a: Any) -> None:  # no access log: request lines carry study UIDs
        return

    def _answer(self, code: int, doc: dict | None = None) -> None:
        body = json.dumps(doc or {}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self, limit: int) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while True:
                line = self.rfile.readline(1024)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(out)
                if len(out) + size > limit:
                    raise OverflowError
                out += self.rfile.read(size)
                self.rfile.readline(8)  # the CRLF after each chunk
        length = int(self.headers.get("Content-Length", "0") or 0)
        if length > limit:
            raise OverflowError
        return self.rfile.read(length)

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        stow = self.stow
        path = self.path.split("?")[0].rstrip("/")
        parts = path.split("/")
        if not path.endswith("/studies") and not (len(parts) >= 2 and parts[-2] == "studies"):
            return self._answer(404)
        auth = self.headers.get("Authorization", "")
        caller = stow.caller_for(auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else "")
        if caller is None:
            return self._answer(401)
        ctype = self.headers.get("Content-Type", "")
        if not ctype.lower().startswith("multipart/related"):
            return self._answer(415)
        try:
            body = self._body(stow.receiver.config.limits.max_bytes)
            items = parse_multipart_related(ctype, body)
        except OverflowError:
            return self._answer(413)
        except (ValueError, TypeError):
            return self._answer(400)
        study_uid = parts[-1] if parts[-2] == "studies" else None
        ok, failed = stow.store(caller, items, study_uid)
        code = 200 if ok and not failed else 202 if ok else 409
        doc: dict[str, Any] = {}
        if ok:
            doc["00081199"] = {
                "vr": "SQ",
                "Value": [
                    {"00081150": {"vr": "UI", "Value": [c]}, "00081155": {"vr": "UI", "Value": [i]}} for c, i in ok
                ],
            }
        if failed:
            doc["00081198"] = {
                "vr": "SQ",
                "Value": [
                    {
                        "00081150": {"vr": "UI", "Value": [c]},
                        "00081155": {"vr": "UI", "Value": [i]},
                        "00081197": {"vr": "US", "Value": [status]},
                    }
                    for c, i, status in failed
                ],
            }
        self._answer(code, doc)


class StowServer:
    """STOW-RS on ``host:port`` feeding ``receiver``; ``tokens`` maps bearer tokens to caller AE titles."""

    def __init__(self, receiver: Any, *, host: str = "127.0.0.1", port: int = 0, tokens: dict[str, str]) -> None:
        self.receiver = receiver
        self._tokens = dict(tokens)
        handler = type("StowHandler", (_Handler,), {"stow": self})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.port = self.httpd.server_address[1]
        self._thread: threading.Thread | None = None

    def caller_for(self, token: str):
        for known, ae in self._tokens.items():
            if token and hmac.compare_digest(known.encode(), token.encode()):  # constant time
                return self.receiver.config.caller(ae)
        return None

    def store(self, caller: Any, items: list[tuple[str, bytes]], study_uid: str | None):
        import pydicom

        from lungsearch.pacs.scp import CANNOT_UNDERSTAND, NOT_IMAGE, SUCCESS

        st = self.receiver.open_sender(caller)
        ok, failed = [], []
        try:
            for ctype, data in items:
                try:
                    ds = pydicom.dcmread(io.BytesIO(data))
                    ids = (str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", "")))
                except Exception:  # noqa: BLE001 - hostile bytes
                    failed.append(("", "", CANNOT_UNDERSTAND))
                    continue
                if ctype != "application/dicom" or (study_uid and str(ds.get("StudyInstanceUID", "")) != study_uid):
                    failed.append((*ids, NOT_IMAGE))
                    continue
                status = self.receiver.store_instance(st, len(data), lambda ds=ds: ds, None, lambda d=data: d)
                (ok.append(ids) if status == SUCCESS else failed.append((*ids, status)))
        finally:
            self.receiver.close_sender(st)
        return ok, failed

    def start(self) -> "StowServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="pacs-stow", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
