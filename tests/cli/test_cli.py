import subprocess
import sys


def _run(*args):
    return subprocess.run([sys.executable, "-m", "lungsearch.cli", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_commands():
    r = _run("--help")
    assert r.returncode == 0 and "demo" in r.stdout


def test_no_command_is_usage_error():
    assert _run().returncode == 2


def test_version():
    r = _run("--version")
    assert r.returncode == 0 and "lungsearch 0.1.0" in r.stdout
