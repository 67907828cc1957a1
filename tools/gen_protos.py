#!/usr/bin/env python3
"""Generate lungsearch/_proto/ from protos/lungsearch/v1/*.proto with grpcio-tools.

protoc writes imports as ``from lungsearch.v1 import x_pb2``; the generated modules live in
``lungsearch._proto.v1`` instead, so those imports are rewritten. ``--check`` regenerates into a
temporary folder and exits 1 when the committed code differs (the drift test uses it too).
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT = ROOT / "lungsearch" / "_proto"

HEADER_INIT = '"""Generated gRPC/protobuf code for lungsearch.v1 (by tools/gen_protos.py; do not edit)."""\n'


def generate(out: Path) -> None:
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "lungsearch" / "v1").glob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        gen = Path(tmp) / "lungsearch" / "v1"
        (out / "v1").mkdir(parents=True, exist_ok=True)
        for f in sorted(gen.iterdir()):
            text = f.read_text()
            text = re.sub(r"^from lungsearch\.v1 import", "from lungsearch._proto.v1 import", text, flags=re.M)
            # The messages' __module__ must be importable, or pickling them (Ray Serve passes
            # requests between the gRPC proxy and replicas by pickle) fails.
            text = re.sub(r"'lungsearch\.v1\.(\w+_pb2)'", r"'lungsearch._proto.v1.\1'", text)
            (out / "v1" / f.name).write_text(text)
    (out / "__init__.py").write_text(HEADER_INIT)
    (out / "v1" / "__init__.py").write_text(HEADER_INIT)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true", help="fail if lungsearch/_proto is stale")
    args = ap.parse_args()
    if not args.check:
        if OUT.exists():
            shutil.rmtree(OUT)
        generate(OUT)
        print(f"generated {OUT.relative_to(ROOT)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        cmp = filecmp.dircmp(tmp, OUT)
        stale = _diff(cmp)
    if stale:
        print("stale generated code (run `make protos`): " + ", ".join(stale), file=sys.stderr)
        return 1
    print("generated code is current")
    return 0


def _diff(cmp: filecmp.dircmp, prefix: str = "") -> list[str]:
    out = [prefix + n for n in cmp.left_only + cmp.right_only + cmp.diff_files if n != "__pycache__"]
    # dircmp compares shallowly by stat; compare bytes to be sure.
    for n in cmp.same_files:
        if Path(cmp.left, n).read_bytes() != Path(cmp.right, n).read_bytes():
            out.append(prefix + n)
    for name, sub in cmp.subdirs.items():
        if name != "__pycache__":
            out += _diff(sub, prefix + name + "/")
    return out


if __name__ == "__main__":
    sys.exit(main())
