"""``python -m lungsearch.pacs``: the DICOM receiver as its own process.

``lungsearch serve --dicom-port N`` starts it next to the Serve app (:func:`start_receiver_process`);
the Helm chart runs it as its own Deployment behind its own Service. SIGTERM stops it after the
series already being ingested finish; waiting series stay in the spool for the next start.
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import threading
from pathlib import Path

__all__ = ["main", "run_receiver", "start_receiver_process"]

log = logging.getLogger("lungsearch.pacs")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lungsearch.pacs", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default=None, help="receiver YAML (docs/pacs.md); flags below override it")
    p.add_argument("--host", default=None, help="listen address (default: the config's, else 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="DICOM port (default: the config's, else 11112)")
    p.add_argument("--ae-title", default=None, help="this SCP's AE title (default: LUNGSEARCH)")
    p.add_argument("--target", default=None, help="the platform's gRPC address (default: 127.0.0.1:9000)")
    p.add_argument("--spool-dir", default=None, help="where received instances wait (default: data/dicom-spool)")
    p.add_argument("--audit-log", default=None, help="append-only audit log (default: data/audit/pacs.jsonl)")
    p.add_argument("--settle-s", type=float, default=None, help="seconds of quiet after which a series is ingested")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


def run_receiver(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=[logging.INFO, logging.DEBUG][min(args.verbose, 1)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # pynetdicom's own INFO/DEBUG lines carry SOP Instance UIDs and AE-supplied text: keep them out.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    from lungsearch.errors import ConfigError, LungsearchError
    from lungsearch.pacs.config import load_receiver_config
    from lungsearch.pacs.scp import Receiver

    try:
        cfg = load_receiver_config(
            args.config,
            host=args.host,
            port=args.port,
            ae_title=args.ae_title,
            target=args.target,
            spool_dir=args.spool_dir,
            audit_log=args.audit_log,
            settle_s=args.settle_s,
        )
        on_ingested = None
        if cfg.destination is not None:
            from lungsearch.pacs.results import results_hook

            on_ingested = results_hook(cfg)
        receiver = Receiver(cfg, on_ingested=on_ingested).start()
        stow = None
        if cfg.stow_port:
            from lungsearch.pacs.stow import StowServer

            tokens = cfg.stow_tokens()
            if not tokens:
                raise ConfigError("stow_port needs stow_tokens_file (bearer token -> caller AE title)")
            stow = StowServer(receiver, host=cfg.host, port=cfg.stow_port, tokens=tokens).start()
        if cfg.metrics_port:
            import prometheus_client

            from lungsearch.pacs import metrics

            prometheus_client.start_http_server(cfg.metrics_port, addr=cfg.host, registry=metrics.REGISTRY)
    except LungsearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"ready: DICOM receiver {cfg.ae_title} on {cfg.host}:{receiver.port}", flush=True)
    stop.wait()
    if stow is not None:
        stow.stop()
    receiver.stop()
    return 0


def start_receiver_process(
    *, port: int, target: str, config: str | None = None, host: str | None = None, log_file: str | Path | None = None
) -> subprocess.Popen:
    """Start ``python -m lungsearch.pacs`` as a child process (used by ``lungsearch serve --dicom-port``)."""
    cmd = [sys.executable, "-m", "lungsearch.pacs", "--port", str(port), "--target", target]
    if host:
        cmd += ["--host", host]
    if config:
        cmd += ["--config", str(config)]
    out = open(log_file, "ab") if log_file else None
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out else None)


main = run_receiver

if __name__ == "__main__":
    sys.exit(run_receiver())
