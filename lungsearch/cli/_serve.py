"""`lungsearch serve`: the whole serving graph on this machine.

Starts (or attaches to) Ray, Serve's gRPC proxy on ``--grpc-port`` (9000) and deploys
``services/serve_config.yaml`` (the same config the Helm chart's RayService embeds) with the
command line's overrides: the registry's live models for each profile, milvus-lite by default.
A plain Prometheus ``/metrics`` endpoint for the whole graph (every replica of every deployment,
``lungsearch.serving.metrics_board``) listens on ``--metrics-port`` (9100). ``--replicas N`` sets
the Gateway's replicas (the config's 2 by default: one may die without failing a call).

Security: Serve 2.60's gRPC proxy has no TLS and listens on every interface. Without
``--tokens-file`` the server runs in insecure local mode: the gateway answers loopback clients
only, and ``--host``/``--tls-host`` must be loopback. ``--tls-cert/--tls-key`` put a real nginx
(``lungsearch.security.TLSProxy``) in front; the gateway then refuses non-loopback peers on the
plaintext port (unless ``--host`` is not loopback), and firewalling that port is still wise.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from lungsearch import constants
from lungsearch.errors import ConfigError, ModelNotFoundError

__all__ = ["register", "run", "build_config", "DEFAULT_CONFIG"]

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "services" / "serve_config.yaml"
APP_NAME = "lungsearch"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="start Ray Serve with the lungsearch gRPC API (port 9000) and /metrics (port 9100)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  lungsearch serve --profile cxr-hash --profile ct-ild\n"
        "  lungsearch serve --tokens-file tokens.yaml --tls-cert tls.crt --tls-key tls.key --tls-host 0.0.0.0",
    )
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="Serve config YAML (default: %(default)s)")
    p.add_argument(
        "--profile",
        action="append",
        default=None,
        metavar="NAME[@VERSION]",
        help="profile to serve (repeatable; default: the config's list)",
    )
    p.add_argument("--artifacts-dir", default=None, help="model registry (default: $LUNGSEARCH_ARTIFACTS_DIR)")
    p.add_argument(
        "--milvus-uri", default=None, help="milvus-lite file or http://host:19530 (default: $LUNGSEARCH_MILVUS_URI)"
    )
    p.add_argument("--hmac-key-file", default=None, help="case-key secret (default: $LUNGSEARCH_HMAC_KEY_FILE)")
    p.add_argument("--tokens-file", default=None, help="bearer tokens with roles (default: $LUNGSEARCH_TOKENS_FILE)")
    p.add_argument(
        "--insecure-local",
        action="store_true",
        help="no tokens: every loopback caller is admin (refused with a non-loopback --host)",
    )
    p.add_argument(
        "--replicas",
        type=int,
        default=None,
        metavar="N",
        help="Gateway replicas (default: the config's, 2: one may die without failing a call)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address clients use for the plaintext gRPC port (default: %(default)s)"
    )
    p.add_argument("--grpc-port", type=int, default=constants.GRPC_PORT, help="Serve gRPC port (default: %(default)s)")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=constants.METRICS_PORT,
        help="plain /metrics endpoint (0 = off; default: %(default)s)",
    )
    p.add_argument("--metrics-host", default="127.0.0.1", help="bind address of /metrics (default: %(default)s)")
    p.add_argument("--ray-metrics-port", type=int, default=0, help="Ray's own metrics export port (0 = Ray's choice)")
    p.add_argument("--tls-cert", default=None, help="PEM certificate: start nginx terminating TLS in front of Serve")
    p.add_argument("--tls-key", default=None, help="PEM private key for --tls-cert")
    p.add_argument("--tls-client-ca", default=None, help="require client certificates signed by this CA (mTLS)")
    p.add_argument("--tls-host", default="127.0.0.1", help="TLS listen address (default: %(default)s)")
    p.add_argument("--tls-port", type=int, default=9443, help="TLS listen port (default: %(default)s)")
    p.add_argument("--ray-address", default=None, help="attach to this Ray cluster (default: start a local one)")
    p.add_argument("--num-cpus", type=int, default=None, help="logical CPUs of a local Ray (default: all)")
    p.add_argument("--check", action="store_true", help="validate the config and the models, print the plan, exit")
    p.add_argument(
        "--dicom-port",
        type=int,
        default=0,
        help="also start the DICOM C-STORE receiver on this port, its own process (0 = off; docs/pacs.md)",
    )
    p.add_argument("--dicom-config", default=None, help="the DICOM receiver's YAML (AE titles, spool, TLS)")
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> dict[str, Any]:
    """The Serve config document to deploy: the YAML file plus the command line's overrides.

    Raises:
        ConfigError: unreadable/invalid config, or an unauthenticated non-loopback bind.
    """
    import yaml

    from lungsearch.serving.appconfig import AppArgs
    from lungsearch.serving.auth import check_bind, is_loopback

    path = Path(args.config)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the serve config ({type(exc).__name__})") from None
    apps = doc.get("applications") or []
    app_doc = next((a for a in apps if a.get("name") == APP_NAME), None)
    if app_doc is None:
        raise ConfigError(f"{path}: no application named {APP_NAME!r}")
    a = dict(app_doc.get("args") or {})
    if args.profile:
        a["profiles"] = list(args.profile)
    # Precedence: command line > LUNGSEARCH_* environment > the config file > built-in defaults.
    # (The shipped config spells out the defaults; an operator's environment must still win, or the
    # server would read another HMAC key, store or registry than the jobs beside it.)
    for key, value, default, env in (
        ("artifacts_dir", args.artifacts_dir, str(constants.ARTIFACTS_DIR), ("ARTIFACTS_DIR",)),
        ("milvus_uri", args.milvus_uri, constants.MILVUS_URI, ("MILVUS_URI", "DATA_DIR")),
        ("hmac_key_file", args.hmac_key_file, str(constants.HMAC_KEY_FILE), ("HMAC_KEY_FILE", "DATA_DIR")),
    ):
        if value is not None:
            a[key] = value
        elif any(f"LUNGSEARCH_{e}" in os.environ for e in env):
            a[key] = default
        else:
            a[key] = a.get(key, default)
    tokens = args.tokens_file if args.tokens_file is not None else (a.get("tokens_file") or constants.TOKENS_FILE)
    a["tokens_file"] = tokens or ""
    if tokens:
        a["insecure_local"] = False
    elif args.insecure_local:
        a["insecure_local"] = True
    if args.tls_cert and is_loopback(args.host):
        # Serve's plaintext gRPC port listens on every interface whatever --host says; with TLS
        # in front and a loopback --host, only the proxy (on loopback) may use it: any other peer
        # is going around TLS, bearer token in clear text.
        a["loopback_only"] = True
    parsed = AppArgs.parse(a)
    secured = bool(parsed.tokens_file)
    check_bind(args.host, secured=secured, insecure_local=parsed.insecure_local)
    if args.tls_cert:
        check_bind(args.tls_host, secured=secured, insecure_local=parsed.insecure_local)
    app_doc["args"] = parsed.model_dump()
    if args.replicas is not None:
        _set_gateway_replicas(app_doc, args.replicas)
    doc["applications"] = [app_doc]
    doc.setdefault("grpc_options", {})["port"] = int(args.grpc_port)
    from ray.serve.schema import ServeDeploySchema

    try:
        ServeDeploySchema.model_validate(doc)
    except ValueError as exc:
        raise ConfigError(f"{path}: not a valid Serve config ({str(exc).splitlines()[0][:200]})") from None
    return doc


def _set_gateway_replicas(app_doc: dict[str, Any], n: int) -> None:
    """``--replicas N``: N Gateway replicas (fixed; replaces an autoscaling_config).

    Raises:
        ConfigError: N < 1.
    """
    if n < 1:
        raise ConfigError(f"--replicas {n}: the Gateway needs at least one replica")
    deps = app_doc.setdefault("deployments", [])
    gw = next((d for d in deps if d.get("name") == "Gateway"), None)
    if gw is None:
        gw = {"name": "Gateway"}
        deps.append(gw)
    gw.pop("autoscaling_config", None)
    gw["num_replicas"] = n


def _check_models(app_args: dict[str, Any]) -> list[str]:
    from lungsearch import registry
    from lungsearch.serving.models import parse_profiles

    lines = []
    for profile, version in parse_profiles(app_args["profiles"]):
        try:
            card = registry.resolve(profile, version, root=app_args["artifacts_dir"])
        except ModelNotFoundError as exc:
            raise ModelNotFoundError(
                f"{exc.message}: train it first (`lungsearch train {profile}`, or `make demo`)", code=exc.code
            ) from None
        lines.append(
            f"  {card.ref}  ({'synthetic data' if card.synthetic_data else 'real data'}, "
            f"{card.embedding_dim}-d, {card.code_bits} code bits)"
        )
    return lines


class _MetricsHandler(BaseHTTPRequestHandler):
    fetch = None  # set on the subclass: () -> str

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.split("?")[0] not in ("/metrics", "/"):
            self.send_error(404)
            return
        try:
            body = type(self).fetch().encode()
            code = 200
        except Exception as exc:  # noqa: BLE001 - a scrape must get an answer, not a hang
            body, code = f"# metrics unavailable: {type(exc).__name__}\n".encode(), 503
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a: Any) -> None:  # no access log
        return


def start_metrics_server(host: str, port: int, fetch) -> ThreadingHTTPServer:
    """Serve ``fetch()`` (Prometheus text) on ``http://host:port/metrics`` in a daemon thread."""
    handler = type("MetricsHandler", (_MetricsHandler,), {"fetch": staticmethod(fetch)})
    server = ThreadingHTTPServer((host, port), handler)
    threading.Thread(target=server.serve_forever, name="lungsearch-metrics", daemon=True).start()
    return server


def deploy(doc: dict[str, Any]) -> None:
    """Deploy like ``serve run <config>`` does, so per-deployment overrides in the YAML apply."""
    from ray import serve
    from ray.serve.config import gRPCOptions
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(doc)
    serve.start(
        proxy_location=config.proxy_location,
        http_options=config.http_options.model_dump(),
        grpc_options=gRPCOptions(**config.grpc_options.model_dump()),
    )
    try:
        from ray.serve.context import _get_global_client  # private in 2.60: what `serve run config.yaml` uses

        _get_global_client().deploy_apps(config, _blocking=False)
    except (ImportError, AttributeError):  # pragma: no cover - a future Ray without it
        from services.gateway import app

        log.warning("per-deployment overrides in the config are not applied (Serve API changed)")
        serve.run(app(doc["applications"][0]["args"]), name=APP_NAME, route_prefix="/lungsearch", blocking=False)


def wait_running(timeout_s: float = 900.0) -> None:
    from ray import serve

    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        st = serve.status().applications.get(APP_NAME)
        status = str(getattr(st, "status", "")) if st else "NOT_STARTED"
        if status.endswith("RUNNING"):
            return
        if status.endswith("DEPLOY_FAILED") or status.endswith("UNHEALTHY"):
            raise ModelNotFoundError(
                f"the serving app failed to start: {getattr(st, 'message', '')[:500]}", code="deploy_failed"
            )
        if status != last:
            print(f"  app {status.split('.')[-1].lower()} ...", flush=True)
            last = status
        time.sleep(2)
    raise ModelNotFoundError("the serving app did not become RUNNING in time", code="deploy_timeout")


def run(args: argparse.Namespace) -> int:
    doc = build_config(args)
    app_args = doc["applications"][0]["args"]
    models = _check_models(app_args)
    secured = bool(app_args["tokens_file"])
    print("lungsearch serve")
    print("  models:\n" + "\n".join(models))
    print(f"  store:   {app_args['milvus_uri']}")
    gw = next((d for d in doc["applications"][0].get("deployments") or [] if d.get("name") == "Gateway"), {})
    print(f"  gateway: {'autoscaling' if 'autoscaling_config' in gw else gw.get('num_replicas', 1)} replica(s)")
    auth = "bearer tokens from " + app_args["tokens_file"] if secured else "insecure local mode (loopback clients only)"
    print(f"  auth:    {auth}")
    if args.check:
        return 0
    import signal

    from lungsearch.runtime import init_ray, shutdown_ray

    extra: dict[str, Any] = {}
    if args.ray_metrics_port and not args.ray_address:
        extra["_metrics_export_port"] = args.ray_metrics_port
    init_ray(args.ray_address, num_cpus=args.num_cpus, **extra)

    def _stop(signum, frame):  # SIGTERM (container stop, systemd) shuts down like Ctrl-C
        raise KeyboardInterrupt

    # After ray.init: Ray's core worker installs its own SIGTERM handler, which would win otherwise.
    signal.signal(signal.SIGTERM, _stop)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background: still honour SIGINT
        signal.signal(signal.SIGINT, _stop)
    proxy = metrics_server = dicom = None
    try:
        deploy(doc)
        wait_running()
        print(f"  gRPC:    {args.host}:{args.grpc_port} (plaintext; reflection and grpc.health.v1 on)")
        http = doc.get("http_options") or {}
        print(
            f"  web:     http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}/lungsearch/ "
            "(the page; same tokens)"
        )
        if args.metrics_port:
            from lungsearch.serving.metrics_board import graph_exposition

            # Every replica of every deployment once, from the collector the replicas publish to
            # (not one Gateway handle: with two Gateways each scrape would see another replica).
            metrics_server = start_metrics_server(
                args.metrics_host, args.metrics_port, lambda: graph_exposition(APP_NAME, timeout_s=15)
            )
            print(f"  metrics: http://{args.metrics_host}:{args.metrics_port}/metrics")
        if args.tls_cert:
            from lungsearch.security import TLSProxy

            proxy = TLSProxy(
                listen_host=args.tls_host,
                listen_port=args.tls_port,
                upstream=f"127.0.0.1:{args.grpc_port}",
                cert_file=args.tls_cert,
                key_file=args.tls_key or "",
                client_ca_file=args.tls_client_ca,
                http_upstream=f"127.0.0.1:{http.get('port', 8000)}",
            ).start()
            print(
                f"  TLS:     {args.tls_host}:{args.tls_port}{' (mTLS)' if args.tls_client_ca else ''}; "
                f"page: https://{args.tls_host}:{args.tls_port}/lungsearch/"
            )
        if args.dicom_port:
            from lungsearch.pacs import start_receiver_process

            dicom = start_receiver_process(
                port=args.dicom_port, target=f"127.0.0.1:{args.grpc_port}", config=args.dicom_config
            )
            print(f"  DICOM:   port {args.dicom_port} (C-STORE receiver, pid {dicom.pid})")
        print("ready; Ctrl-C stops", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping ...")
        return 130
    finally:
        if dicom is not None:
            dicom.terminate()
            dicom.wait(30)
        if proxy is not None:
            proxy.stop()
        if metrics_server is not None:
            metrics_server.shutdown()
        shutdown_ray()
