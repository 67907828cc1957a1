"""A real Prometheus (Debian's ``/usr/bin/prometheus``) scraping a lungsearch ``/metrics`` endpoint
during a benchmark, and what it stored: the series count, the label names and values, and whether
any label value carries PHI (a needle the benchmark put in its inputs) or looks like an identifier.

    with PrometheusScrape("127.0.0.1:9100", workdir) as prom:
        ...                                   # the load
        report = prom.report(needles=["Doe^Jane"])

Loopback only: Prometheus listens on 127.0.0.1 on a free port; its TSDB lives in ``workdir``.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterable

__all__ = ["PrometheusScrape", "label_findings", "PROMETHEUS"]

PROMETHEUS = "/usr/bin/prometheus"
JOB = "lungsearch"
# The serving schema's own test for identifier-like label values (a case key, a DICOM UID).
_IDENTIFIER_RE = re.compile(r"^([0-9a-f]{24,}|[0-9]+(\.[0-9]+){3,})$")
# Labels Prometheus adds itself, not lungsearch's.
_OWN_LABELS = {"__name__", "job", "instance"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def label_findings(series: list[dict[str, str]], needles: Iterable[str] = ()) -> dict:
    """Label statistics of ``series`` (Prometheus' /api/v1/series answer) and every label value that
    contains a needle or looks like an identifier (the PHI check)."""
    needles = [n for n in needles if n]
    values: dict[str, set[str]] = {}
    phi, identifier_like = [], []
    for s in series:
        for k, v in s.items():
            if k in _OWN_LABELS:
                continue
            values.setdefault(k, set()).add(v)
            if any(n.lower() in v.lower() for n in needles):
                phi.append(f"{s.get('__name__')}:{k}")  # the label, never the value
            if _IDENTIFIER_RE.match(v):
                identifier_like.append(f"{s.get('__name__')}:{k}")
    return {
        "series": len(series),
        "metric_names": len({s.get("__name__") for s in series}),
        "label_values": {k: len(v) for k, v in sorted(values.items())},
        "labels_with_phi": sorted(set(phi)),
        "labels_identifier_like": sorted(set(identifier_like)),
    }


class PrometheusScrape:
    """Run Prometheus against ``target`` ("host:port", path /metrics) every ``interval_s`` seconds.

    Raises:
        FileNotFoundError: Prometheus is not installed.
        TimeoutError: it did not become ready, or never scraped the target successfully.
    """

    def __init__(
        self,
        target: str,
        workdir: str | Path,
        *,
        interval_s: float = 1.0,
        binary: str = PROMETHEUS,
        ready_timeout_s: float = 30.0,
    ) -> None:
        if not Path(binary).exists() and shutil.which(binary) is None:
            raise FileNotFoundError(f"{binary} not found (Debian package prometheus)")
        self.target, self.binary = target, binary
        self.workdir = Path(workdir)
        self.interval_s = float(interval_s)
        self.ready_timeout_s = float(ready_timeout_s)
        self.port = 0
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "PrometheusScrape":
        self.workdir.mkdir(parents=True, exist_ok=True)
        interval = f"{max(1, int(round(self.interval_s * 1000)))}ms"
        config = {
            "global": {"scrape_interval": interval, "scrape_timeout": interval},
            "scrape_configs": [
                {"job_name": JOB, "metrics_path": "/metrics", "static_configs": [{"targets": [self.target]}]}
            ],
        }
        (self.workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.port = _free_port()
        self._log = open(self.workdir / "prometheus.log", "wb")
        self._proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise TimeoutError(
                    f"prometheus exited with {self._proc.returncode} (see {self.workdir / 'prometheus.log'})"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError("prometheus did not become ready")

    def _api(self, path: str, **params) -> object:
        q = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{q}", timeout=10) as r:
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus API {path}: {body.get('error', body)}")
        return body["data"]

    def wait_scraped(self, timeout_s: float = 30.0) -> dict:
        """Block until the target was scraped successfully at least once; its /api/v1/targets entry."""
        deadline = time.monotonic() + timeout_s
        last = {}
        while time.monotonic() < deadline:
            targets = self._api("targets")["activeTargets"]
            last = next((t for t in targets if t["labels"].get("job") == JOB), {})
            if last.get("health") == "up":
                return last
            time.sleep(0.3)
        raise TimeoutError(f"target never scraped successfully: {last.get('lastError', 'no target')}")

    def series(self) -> list[dict[str, str]]:
        """Every series Prometheus stored from the target."""
        return self._api("series", **{"match[]": f'{{job="{JOB}"}}'})

    def report(self, needles: Iterable[str] = ()) -> dict:
        """Series count, label statistics and the PHI check, plus the scrape health."""
        target = self.wait_scraped()
        out = label_findings(self.series(), needles)
        out.update(
            {
                "scrape_health": target.get("health"),
                "last_scrape_duration_s": target.get("lastScrapeDuration"),
                "prometheus": self.binary,
            }
        )
        return out

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        self._proc = None
        log = getattr(self, "_log", None)
        if log is not None:
            log.close()

    def __enter__(self) -> "PrometheusScrape":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
