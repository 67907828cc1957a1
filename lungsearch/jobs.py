"""Submit lungsearch jobs to a Ray cluster through its dashboard (Ray's ``JobSubmissionClient``).

The repository is shipped as the job's ``working_dir`` (virtualenvs, data and artifacts are
excluded), so the cluster runs exactly the code of this checkout; pinned pip dependencies are
optional (``pip="lock"`` installs ``requirements/lock.txt`` in the job's environment, for clusters
whose image lacks them).

Ray 2.60 authenticates the dashboard with a token (see FACTS.md): this module sends
``Authorization: Bearer <token>`` itself, with the token taken from, in order, the ``token``
argument, ``RAY_AUTH_TOKEN``, the file named by ``RAY_AUTH_TOKEN_PATH``, then ``~/.ray/auth_token``.
``RAY_AUTH_MODE`` must be set identically on the head and here; ``auth_mode="disabled"`` sends no
token. Tokens are never logged or put in the job's metadata.

Example::

    >>> jobs = JobsClient("http://127.0.0.1:8265")
    >>> job_id = jobs.submit("train", "configs/cxr-cnn.yaml", overrides=["train.epochs=2"])
    >>> for chunk in jobs.follow(job_id):
    ...     print(chunk, end="")
    >>> jobs.status(job_id)
    'SUCCEEDED'
"""

from __future__ import annotations

import asyncio
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from lungsearch.errors import ConfigError, InvalidRequestError, NotFoundError, UnauthenticatedError

__all__ = [
    "JOB_SCRIPTS",
    "REPO_ROOT",
    "RUNTIME_ENV_EXCLUDES",
    "TERMINAL_STATUSES",
    "JobsClient",
    "JobInfo",
    "build_entrypoint",
    "build_runtime_env",
    "job_summary",
    "resolve_token",
]

#: The repository root shipped as ``working_dir``.
REPO_ROOT = Path(__file__).resolve().parent.parent

#: Job kinds -> entrypoint script (relative to the working dir).
JOB_SCRIPTS = {
    "train": "ray_jobs/train.py",
    "evaluate": "ray_jobs/evaluate.py",
    "build-index": "ray_jobs/build_index.py",
    "reproduce": "ray_jobs/reproduce.py",
}

#: Never uploaded: environments, data, trained artifacts, caches (Ray caps working_dir size).
#: gitignore syntax, so a bare name matches at any depth: the repository-root folders are anchored
#: with a leading "/" ("data" alone also dropped the ``lungsearch/data`` package from every job, which
#: then imported it from whatever lungsearch the cluster's image had installed).
RUNTIME_ENV_EXCLUDES = [
    "/.venv",
    "/.venv-*",
    "/data",
    "/artifacts",
    ".git",
    "**/__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".hypothesis",
    "/benchmarks/results",
    "*.egg-info",
    "/build",
    "/dist",
    "/.gl",
    "/.whl",
]

#: Job statuses after which nothing changes.
TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
#: Seconds a submission waits for a just-started head's job agent ("No available agent ... try again later").
AGENT_WAIT_S = 90.0

# Environment every lungsearch job runs with: offline model hubs, stable hashing.
_JOB_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONHASHSEED": "0", "RAY_USAGE_STATS_ENABLED": "0"}


@dataclass(frozen=True)
class JobInfo:
    """What ``status`` reports about one job."""

    job_id: str
    status: str
    entrypoint: str
    message: str
    start_time: float | None
    end_time: float | None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_STATUSES


def job_summary(stdout: str) -> dict[str, Any]:
    """The summary a ``ray_jobs/*.py`` entrypoint prints: the last top-level JSON object of its
    output (Ray may log after it); ``{}`` when there is none."""
    import json

    dec = json.JSONDecoder()
    text = "\n" + stdout
    pos = len(text)
    while (pos := text.rfind("\n{", 0, pos)) >= 0:
        try:
            doc = dec.raw_decode(text[pos + 1 :])[0]
        except ValueError:
            continue
        if isinstance(doc, dict):
            return doc
    return {}


def resolve_token(token: str | None = None, env: dict[str, str] | None = None) -> str | None:
    """The Ray auth token: ``token``, ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``'s file, ``~/.ray/auth_token``.

    ``RAY_*`` are Ray's own variables (not lungsearch settings), so they are read here rather
    than in ``lungsearch.constants``.
    """
    env = os.environ if env is None else env
    if token:
        return token.strip()
    if env.get("RAY_AUTH_TOKEN"):
        return env["RAY_AUTH_TOKEN"].strip()
    candidates = [Path(env["RAY_AUTH_TOKEN_PATH"]).expanduser()] if env.get("RAY_AUTH_TOKEN_PATH") else []
    candidates.append(Path.home() / ".ray" / "auth_token")
    for path in candidates:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text:
            return text
    return None


def _config_arg(config: str, working_dir: Path) -> str:
    """The ``--config`` value as the job sees it (a profile name, or a path inside working_dir)."""
    path = Path(config)
    if not path.suffix and not path.exists():
        return config  # a profile name: load_profile finds configs/<name>.yaml in the uploaded tree
    try:
        return str(path.resolve().relative_to(working_dir.resolve()))
    except ValueError:
        raise ConfigError(
            f"config {path.name} is outside the uploaded working dir; put it under {working_dir.name}/configs/"
        ) from None


def build_entrypoint(
    kind: str,
    config: str,
    *,
    overrides: Sequence[str] = (),
    args: Sequence[str] = (),
    python: str = "python",
    working_dir: Path = REPO_ROOT,
) -> str:
    """The shell command the job runs, e.g. ``python ray_jobs/train.py --config configs/x.yaml k=v``.

    Args:
        kind: ``train``, ``evaluate``, ``build-index`` or ``reproduce``.
        config: profile name or YAML path inside ``working_dir``.
        overrides: ``dotted.key=value`` config overrides.
        args: further script flags (``--folds 4``, ``--model cxr-cnn@v``).
        python: interpreter on the cluster.

    Raises:
        InvalidRequestError: unknown kind.
        ConfigError: a config file outside the working dir (it would not be uploaded).
    """
    if kind not in JOB_SCRIPTS:
        raise InvalidRequestError(f"unknown job kind {kind!r}; expected one of {', '.join(JOB_SCRIPTS)}")
    parts = [python, JOB_SCRIPTS[kind], "--config", _config_arg(config, working_dir), *args, *overrides]
    return shlex.join(parts)


def build_runtime_env(
    *,
    working_dir: Path | str = REPO_ROOT,
    pip: str | Sequence[str] | None = None,
    env_vars: dict[str, str] | None = None,
    excludes: Sequence[str] = (),
) -> dict[str, Any]:
    """The job's ``runtime_env``.

    Args:
        working_dir: folder uploaded as the job's working directory (the repository).
        pip: ``None`` (the cluster image has the deps), ``"lock"`` (``requirements/lock.txt``),
            a requirements file path, or a list of pinned requirement strings.
        env_vars: extra environment for the job (e.g. ``LUNGSEARCH_MILVUS_URI``); never put tokens here.
        excludes: extra upload exclusions (gitignore syntax).
    """
    working_dir = Path(working_dir)
    env = dict(_JOB_ENV)
    env.update(env_vars or {})
    runtime_env: dict[str, Any] = {
        "working_dir": str(working_dir),
        "excludes": [*RUNTIME_ENV_EXCLUDES, *excludes],
        "env_vars": env,
    }
    if pip == "lock":
        pip = str(working_dir / "requirements" / "lock.txt")
    if isinstance(pip, str):
        path = Path(pip)
        if not path.is_file():
            raise ConfigError(f"pip requirements file {path.name} not found")
        lines = [ln.strip() for ln in path.read_text().splitlines()]
        runtime_env["pip"] = {"packages": [ln for ln in lines if ln and not ln.startswith("#")], "pip_check": False}
    elif pip:
        runtime_env["pip"] = {"packages": list(pip), "pip_check": False}
    return runtime_env


class JobsClient:
    """A thin, typed wrapper over ``ray.job_submission.JobSubmissionClient``.

    Args:
        address: the dashboard URL (``http://head:8265``).
        token: Ray auth token (default: see :func:`resolve_token`).
        auth_mode: ``"token"`` (a token is required), ``"disabled"`` (none is sent) or ``None``
            (``RAY_AUTH_MODE``; when unset a token is sent if one is found).
        verify: TLS verification for ``https://`` dashboards (a CA bundle path or bool).
    """

    def __init__(
        self, address: str, *, token: str | None = None, auth_mode: str | None = None, verify: str | bool = True
    ) -> None:
        if not address.startswith(("http://", "https://")):
            raise ConfigError(f"jobs address must be the dashboard URL (http://host:8265), got {address!r}")
        mode = (auth_mode or os.environ.get("RAY_AUTH_MODE") or "").lower()
        if mode not in ("", "token", "disabled"):
            raise ConfigError(f"RAY_AUTH_MODE must be 'token' or 'disabled', got {mode!r}")
        headers: dict[str, str] = {}
        if mode != "disabled":
            tok = resolve_token(token)
            if tok:
                headers["Authorization"] = f"Bearer {tok}"
            elif mode == "token":
                raise UnauthenticatedError(
                    "RAY_AUTH_MODE=token but no token: pass --token-file, "
                    "set RAY_AUTH_TOKEN or create ~/.ray/auth_token"
                )
        self.address = address
        self._client = self._connect(address, headers, verify)

    def _connect(self, address: str, headers: dict[str, str], verify: str | bool):
        from ray.job_submission import JobSubmissionClient

        return self._call(lambda: JobSubmissionClient(address, headers=headers, verify=verify))

    def _call(self, fn):
        """Run one SDK call, mapping Ray's auth and connection failures to lungsearch errors."""
        from ray.exceptions import AuthenticationError

        try:
            return fn()
        except AuthenticationError:
            raise UnauthenticatedError(
                f"the Ray dashboard at {self.address} refused the token "
                "(check RAY_AUTH_MODE and the token on both sides)"
            ) from None
        except ConnectionError as exc:
            raise ConfigError(f"cannot reach the Ray dashboard at {self.address} ({type(exc).__name__})") from None
        except RuntimeError as exc:
            msg = str(exc)
            if "Unauthorized" in msg or "Missing authentication" in msg:
                raise UnauthenticatedError(
                    f"the Ray dashboard at {self.address} wants a token (set RAY_AUTH_MODE=token here and on the head)"
                ) from None
            if "does not exist" in msg or "404" in msg:
                raise NotFoundError("no such job on this cluster") from None
            if "Failed to connect" in msg or "Cannot connect" in msg:
                raise ConfigError(f"cannot reach the Ray dashboard at {self.address}") from None
            raise

    def submit(
        self,
        kind: str,
        config: str,
        *,
        overrides: Sequence[str] = (),
        args: Sequence[str] = (),
        pip: str | Sequence[str] | None = None,
        env_vars: dict[str, str] | None = None,
        submission_id: str | None = None,
        entrypoint_num_cpus: float | None = None,
        entrypoint_num_gpus: float | None = None,
        working_dir: Path = REPO_ROOT,
    ) -> str:
        """Submit a ``train`` / ``evaluate`` / ``build-index`` / ``reproduce`` job; returns its id."""
        entrypoint = build_entrypoint(kind, config, overrides=overrides, args=args, working_dir=working_dir)
        return self.submit_entrypoint(
            entrypoint,
            pip=pip,
            env_vars=env_vars,
            submission_id=submission_id,
            entrypoint_num_cpus=entrypoint_num_cpus,
            entrypoint_num_gpus=entrypoint_num_gpus,
            working_dir=working_dir,
            metadata={"lungsearch_kind": kind},
        )

    def submit_entrypoint(
        self,
        entrypoint: str,
        *,
        pip: str | Sequence[str] | None = None,
        env_vars: dict[str, str] | None = None,
        submission_id: str | None = None,
        entrypoint_num_cpus: float | None = None,
        entrypoint_num_gpus: float | None = None,
        working_dir: Path = REPO_ROOT,
        metadata: dict[str, str] | None = None,
    ) -> str:
        """Submit any shell command with the repository as working dir; returns the job id."""
        runtime_env = build_runtime_env(working_dir=working_dir, pip=pip, env_vars=env_vars)
        submit = lambda: self._client.submit_job(  # noqa: E731
            entrypoint=entrypoint,
            runtime_env=runtime_env,
            submission_id=submission_id,
            entrypoint_num_cpus=entrypoint_num_cpus,
            entrypoint_num_gpus=entrypoint_num_gpus,
            metadata={"submitted_by": "lungsearch", **(metadata or {})},
        )
        # A freshly started head answers "No available agent to submit job, please try again later"
        # until its job agent is up (seen on a loaded 2-core machine): nothing was created, so retry.
        deadline = time.monotonic() + AGENT_WAIT_S
        delay = 0.5
        while True:
            try:
                return self._call(submit)
            except RuntimeError as exc:
                if "No available agent" not in str(exc) or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def info(self, job_id: str) -> JobInfo:
        """Status and timing of ``job_id``. Raises NotFoundError for an unknown id."""
        d = self._call(lambda: self._client.get_job_info(job_id))
        status = getattr(d.status, "value", str(d.status))
        to_s = lambda ms: None if ms in (None, 0) else ms / 1000.0  # noqa: E731 - Ray reports ms
        return JobInfo(
            job_id=job_id,
            status=str(status),
            entrypoint=d.entrypoint,
            message=d.message or "",
            start_time=to_s(d.start_time),
            end_time=to_s(d.end_time),
        )

    def status(self, job_id: str) -> str:
        """``PENDING`` / ``RUNNING`` / ``SUCCEEDED`` / ``FAILED`` / ``STOPPED``."""
        return self.info(job_id).status

    def logs(self, job_id: str) -> str:
        """The job's whole log so far."""
        return self._call(lambda: self._client.get_job_logs(job_id))

    def follow(self, job_id: str) -> Iterator[str]:
        """Yield log chunks as the job writes them, until it ends (a websocket tail)."""
        loop = asyncio.new_event_loop()
        agen = self._client.tail_job_logs(job_id)
        try:
            while True:
                try:
                    yield loop.run_until_complete(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            loop.run_until_complete(agen.aclose())
            loop.close()

    def wait(self, job_id: str, *, timeout: float = 3600.0, poll: float = 1.0) -> JobInfo:
        """Block until the job ends (or ``timeout`` seconds pass) and return its info."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.info(job_id)
            if info.done or time.monotonic() >= deadline:
                return info
            time.sleep(poll)

    def stop(self, job_id: str) -> bool:
        """Ask the job to stop; True if a stop was requested (False if it had already ended)."""
        return bool(self._call(lambda: self._client.stop_job(job_id)))

    def list(self) -> list[JobInfo]:
        """Every job the cluster knows, newest first."""
        out = []
        for d in self._call(self._client.list_jobs):
            jid = d.submission_id or d.job_id or ""
            out.append(
                JobInfo(
                    job_id=jid,
                    status=str(getattr(d.status, "value", d.status)),
                    entrypoint=d.entrypoint,
                    message=d.message or "",
                    start_time=(d.start_time or 0) / 1000 or None,
                    end_time=(d.end_time or 0) / 1000 or None,
                )
            )
        return sorted(out, key=lambda j: j.start_time or 0, reverse=True)
