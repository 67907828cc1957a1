"""The README's quickstart is what the code does: its serve step is the command `make demo` prints
(which serves the demo's own milvus-lite file), and its search step names files the demo makes."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _quickstart_lines() -> list[str]:
    text = README.read_text()
    block = text.split("## Quickstart in more detail", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [ln.split("#", 1)[0].strip() for ln in block.strip().splitlines() if ln.strip()]


def test_the_serve_step_is_the_command_the_demo_prints(monkeypatch):
    from lungsearch import constants
    from lungsearch.demo import serve_command

    monkeypatch.delenv("LUNGSEARCH_HMAC_KEY_FILE", raising=False)
    serve = next(ln for ln in _quickstart_lines() if ln.startswith("lungsearch serve"))
    expected = serve_command(Path(constants.DATA_DIR) / "demo")
    assert shlex.split(serve) == expected


def test_the_search_step_names_a_phantom_the_demo_generates(tmp_path):
    from lungsearch.data.phantoms import generate

    search = next(ln for ln in _quickstart_lines() if ln.startswith("lungsearch search"))
    pattern = re.search(r'--image "\$\(ls (\S+) \| head -1\)"', search).group(1)
    assert pattern.startswith("data/phantoms/")
    out = tmp_path / "data" / "phantoms" / "cxr-x"
    generate("cxr", 2, out, size=32)
    found = sorted(tmp_path.glob(pattern))
    assert found, f"{pattern} matches no generated phantom"
    # and the command, with the path filled in, is one the CLI takes
    from lungsearch.cli import build_parser

    argv = shlex.split(search.replace(re.search(r'"\$\(.*?\)"', search).group(0), str(found[0])))
    args = build_parser().parse_args(argv[1:])
    assert args.image == [str(found[0])] and args.model == "cxr-hash"
