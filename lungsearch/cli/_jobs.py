"""`lungsearch jobs`: submit training, evaluation and index jobs to a Ray cluster and watch them."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

__all__ = ["register"]

_EXAMPLES = """examples:
  lungsearch jobs submit train --address http://127.0.0.1:8265 --config configs/cxr-cnn.yaml train.epochs=2 --follow
  lungsearch jobs submit train --address $DASH --config configs/ct-ild.gpu.yaml --folds 5
  lungsearch jobs submit build-index --address $DASH --config cxr-report --model cxr-report
  lungsearch jobs status  --address $DASH raysubmit_XXXX
  lungsearch jobs logs    --address $DASH raysubmit_XXXX --follow
  lungsearch jobs stop    --address $DASH raysubmit_XXXX
Auth: set RAY_AUTH_MODE identically here and on the head; the token comes from --token-file,
RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (never from the command line)."""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address",
        default=os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_DASHBOARD_ADDRESS"),
        help="Ray dashboard URL, e.g. http://head:8265 (default: $RAY_API_SERVER_ADDRESS)",
    )
    p.add_argument("--token-file", type=Path, default=None, help="file holding the Ray auth token")
    p.add_argument("--auth-mode", choices=["token", "disabled"], default=None, help="default: $RAY_AUTH_MODE")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "jobs",
        help="submit/watch/stop train, evaluate and build-index jobs on a Ray cluster",
        description="Ray job submission for lungsearch (the repository is uploaded as working_dir).",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    jsub = p.add_subparsers(dest="jobs_command", metavar="ACTION")

    s = jsub.add_parser(
        "submit", help="submit a job", epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    s.add_argument("kind", choices=["train", "evaluate", "build-index", "reproduce"])
    _common(s)
    s.add_argument(
        "--config",
        required=True,
        nargs="+",
        metavar=("CONFIG", "KEY=VALUE"),
        help="profile name or YAML path inside the repository, then dotted.key=value overrides",
    )
    s.add_argument("--folds", type=int, default=None, help="train: K-fold cross-validation")
    s.add_argument("--model", default=None, help="evaluate/build-index: registry ref profile[@version]")
    s.add_argument("--script-args", default="", help="further flags for the job script, one quoted string")
    s.add_argument(
        "--pip", default=None, help="'lock' (requirements/lock.txt), a requirements file, or omit (image has deps)"
    )
    s.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra job environment (repeatable)")
    s.add_argument("--submission-id", default=None)
    s.add_argument("--num-cpus", type=float, default=None, help="CPUs reserved for the driver")
    s.add_argument("--num-gpus", type=float, default=None, help="GPUs reserved for the driver")
    s.add_argument("--follow", action="store_true", help="stream the logs and exit with the job's outcome")
    s.add_argument("--dry-run", action="store_true", help="print the entrypoint and runtime_env, submit nothing")
    s.set_defaults(func=_submit)

    for name, func, helptext in (
        ("status", _status, "a job's status"),
        ("logs", _logs, "a job's logs"),
        ("stop", _stop, "stop a job"),
    ):
        a = jsub.add_parser(name, help=helptext)
        a.add_argument("job_id")
        _common(a)
        if name == "logs":
            a.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")
        if name == "status":
            a.add_argument("--wait", action="store_true", help="block until the job ends")
        a.set_defaults(func=func)

    ls = jsub.add_parser("list", help="jobs on the cluster")
    _common(ls)
    ls.set_defaults(func=_list)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _client(args: argparse.Namespace):
    from lungsearch.errors import ConfigError
    from lungsearch.jobs import JobsClient

    if not args.address:
        raise ConfigError("--address (the Ray dashboard URL) is required")
    token = None
    if args.token_file:
        try:
            token = args.token_file.read_text().strip()
        except OSError:
            raise ConfigError("cannot read --token-file") from None
    return JobsClient(args.address, token=token, auth_mode=args.auth_mode)


def _split(args: argparse.Namespace) -> tuple[str, list[str], list[str]]:
    """(config, overrides, script flags) from ``--config CONFIG k=v ...`` and the flag options."""
    import shlex

    from lungsearch.errors import ConfigError

    config, *overrides = args.config
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"override {bad[0]!r}: expected dotted.key=value")
    flags = []
    if args.folds is not None:
        flags += ["--folds", str(args.folds)]
    if args.model:
        flags += ["--model", args.model]
    flags += shlex.split(args.script_args)
    return config, overrides, flags


def _submit(args: argparse.Namespace) -> int:
    from lungsearch.errors import ConfigError
    from lungsearch.jobs import build_entrypoint, build_runtime_env

    config, overrides, flags = _split(args)
    env = {}
    for item in args.env:
        k, sep, v = item.partition("=")
        if not sep:
            raise ConfigError(f"--env {item!r}: expected KEY=VALUE")
        env[k] = v
    if args.dry_run:
        print(
            json.dumps(
                {
                    "entrypoint": build_entrypoint(args.kind, config, overrides=overrides, args=flags),
                    "runtime_env": build_runtime_env(pip=args.pip, env_vars=env),
                },
                indent=2,
            )
        )
        return 0
    client = _client(args)
    job_id = client.submit(
        args.kind,
        config,
        overrides=overrides,
        args=flags,
        pip=args.pip,
        env_vars=env,
        submission_id=args.submission_id,
        entrypoint_num_cpus=args.num_cpus,
        entrypoint_num_gpus=args.num_gpus,
    )
    print(job_id, flush=True)
    if not args.follow:
        return 0
    for chunk in client.follow(job_id):
        sys.stdout.write(chunk)
        sys.stdout.flush()
    info = client.wait(job_id, timeout=60)
    print(f"job {job_id}: {info.status}", file=sys.stderr)
    return 0 if info.status == "SUCCEEDED" else 1


def _status(args: argparse.Namespace) -> int:
    client = _client(args)
    info = client.wait(args.job_id) if args.wait else client.info(args.job_id)
    print(
        json.dumps(
            {
                "job_id": info.job_id,
                "status": info.status,
                "entrypoint": info.entrypoint,
                "message": info.message,
                "start_time": info.start_time,
                "end_time": info.end_time,
            },
            indent=2,
        )
    )
    return 0 if info.status not in ("FAILED", "STOPPED") else 1


def _logs(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.follow:
        for chunk in client.follow(args.job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()
    else:
        sys.stdout.write(client.logs(args.job_id))
    return 0


def _stop(args: argparse.Namespace) -> int:
    stopped = _client(args).stop(args.job_id)
    print("stop requested" if stopped else "job had already ended")
    return 0


def _list(args: argparse.Namespace) -> int:
    for info in _client(args).list():
        print(f"{info.job_id}\t{info.status}\t{info.entrypoint}")
    return 0
