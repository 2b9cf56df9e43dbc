#!/usr/bin/env bash
# Builds every Lockstep image without a registry, on lockstep-base:bookworm (scripts/build-base-image.sh):
#   lockstep-haproxy:<hash>       docker/haproxy.Dockerfile (Debian's HAProxy + haproxy/)
#   lockstep-python:<hash>        docker/python.Dockerfile over the wheels of scripts/build-wheels.sh
#   lockstep-agent:<hash>         docker/agent.Dockerfile, FROM that lockstep-python (the sidecar)
#   lockstep-controlplane:<hash>  docker/controlplane.Dockerfile, FROM that lockstep-python (the control plane)
# and points each one's :latest (what docker/compose.yaml uses by default) at them.
# Idempotent: tags are hashes of the inputs, so an unchanged tree builds nothing. The tests build the same way
# (tests/harness/images.py). PYTHON picks the interpreter (.venv/bin/python, which has the docker SDK).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
bash scripts/build-base-image.sh
PYTHONPATH=$PWD PYTHON=$python exec "$python" -m tests.harness.images "$@"
