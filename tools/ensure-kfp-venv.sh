#!/usr/bin/env bash
# Create .venv-kfp for compiling the Kubeflow pipeline (`make kubeflow`). kfp pins its own protobuf major,
# which conflicts with the main .venv (protobuf 7 for grpcio 1.85), so it lives apart. The pipeline's
# component logic (k8s/kubeflow/components.py) imports without kfp, so the main venv tests it.
# Re-runs take ~0 s unless this script changes (the stamp holds its hash).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
PINS=(kfp==2.17.3 kfp-kubernetes==2.17.3 pyyaml==6.0.4)
want=$(cat tools/ensure-kfp-venv.sh | sha256sum | cut -d' ' -f1)
stamp=.venv-kfp/.lungsearch-stamp
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv-kfp/bin/python ]; then
  exit 0
fi
echo ">> setting up .venv-kfp (${PINS[*]})"
[ -x .venv-kfp/bin/python ] || "$PY" -m venv .venv-kfp
pipq() { .venv-kfp/bin/python -m pip --disable-pip-version-check -q "$@" 2>&1 | { grep -v -E "^WARNING: Location .* is ignored" || true; }; }
pipq install "${PINS[@]}"
.venv-kfp/bin/python -c "import kfp, kfp.kubernetes, yaml; print('kfp', kfp.__version__)" \
  || { echo "!! kfp check failed" >&2; exit 1; }
echo "$want" > "$stamp"
echo ">> .venv-kfp ready"
