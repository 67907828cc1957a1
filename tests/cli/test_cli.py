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


def test_the_whole_thorax_flag_is_noted_on_stderr(capsys):
    from lungsearch.cli._client import _print_roi
    from lungsearch.client import RadiomicsRoi

    _print_roi(None)
    _print_roi(RadiomicsRoi(whole_thorax=True, reason="empty", message=""))
    out = capsys.readouterr()
    assert out.out == "" and out.err == "note: radiomics read the whole thorax: lung mask empty\n"
