#!/usr/bin/env bash
# Builds the wheels docker/python.Dockerfile installs: Lockstep itself, every runtime dependency (plus the `fast`
# extra, uvloop) and pip's own wheel, which the image runs once to install the others with --no-index. Neither the
# build nor the image's pip then touches the network.
#
#   scripts/build-wheels.sh [OUT_DIR]        # default var/wheels; PYTHON picks the interpreter (.venv/bin/python)
#
# Dependencies are downloaded as binary wheels for the image's platform (CPython 3.11, glibc 2.36: Debian
# bookworm), not the host's, so any host Python >= 3.11 with pip will do. A dependency published only as an sdist
# would make pip fail here ("no matching distribution"): the image has no compiler, by design.
# Idempotent: the dependency wheels are fetched again only when pyproject.toml changes, the Lockstep wheel is
# rebuilt only when a file of its packages changes (stamps in OUT_DIR.stamps). The Lockstep wheel is built from a
# copy of the sources (no build/ or *.egg-info in the tree) with SOURCE_DATE_EPOCH fixed, so the same sources give
# the same bytes, and the image tag (a hash of the wheels) stays the same.
# OUT_DIR is the whole build context of docker/python.Dockerfile: deps/*.whl (dependencies and pip) and
# app/lockstep-*.whl, apart so that an edit to Lockstep reuses the image layer of the dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-var/wheels}
python=${PYTHON:-.venv/bin/python}
packages=(spoa agent controlplane lockstep certcentral_sim)
stamps=${out}.stamps

arch=$(uname -m)
case "$arch" in x86_64|aarch64) ;; *) echo "build-wheels: unsupported architecture $arch" >&2; exit 1 ;; esac
# Every manylinux tag bookworm's glibc (2.36) satisfies; pip does not expand one --platform into the older ones.
platform_args=(--platform "linux_$arch" --platform "manylinux2014_$arch")
for minor in 17 24 26 27 28 31 32 33 34 35 36; do platform_args+=(--platform "manylinux_2_${minor}_$arch"); done
target_args=(--only-binary=:all: "${platform_args[@]}" --python-version 3.11 --implementation cp
             --abi cp311 --abi abi3 --abi none)

mkdir -p "$out/deps" "$out/app" "$stamps"
digest() { sha256sum | cut -c1-64; }
deps_key=$( (cat pyproject.toml; echo "${target_args[*]}") | digest)
src_key=$( (cat pyproject.toml README.md
            find "${packages[@]}" -name __pycache__ -prune -o -type f -print | LC_ALL=C sort | while read -r f; do
                printf '%s\0' "$f"; cat "$f"; done) | digest)
tmp=$(mktemp -d /tmp/lockstep-wheels.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

if [ "$(cat "$stamps/deps" 2>/dev/null)" != "$deps_key" ]; then
    echo "build-wheels: downloading the dependency wheels (first build, or pyproject.toml changed)"
    "$python" - pyproject.toml > "$tmp/requirements.txt" <<'EOF'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"]["fast"]))
EOF
    mkdir "$tmp/deps"
    "$python" -m pip download --quiet --disable-pip-version-check "${target_args[@]}" --dest "$tmp/deps" \
        -r "$tmp/requirements.txt" pip
    rm -f "$out"/deps/*.whl
    mv "$tmp"/deps/*.whl "$out"/deps/
    echo "$deps_key" > "$stamps/deps"
fi

if [ "$(cat "$stamps/lockstep" 2>/dev/null)" != "$src_key" ] || ! ls "$out"/app/lockstep-*.whl >/dev/null 2>&1; then
    echo "build-wheels: building the lockstep wheel"
    mkdir "$tmp/src"
    tar -c --exclude=__pycache__ pyproject.toml README.md "${packages[@]}" | tar -x -C "$tmp/src"
    # Fixed timestamps inside the zip: the same sources make the same wheel, byte for byte.
    SOURCE_DATE_EPOCH=315532800 "$python" -m pip wheel --quiet --disable-pip-version-check --no-deps \
        --wheel-dir "$tmp/dist" "$tmp/src"
    rm -f "$out"/app/*.whl
    mv "$tmp"/dist/lockstep-*.whl "$out"/app/
    echo "$src_key" > "$stamps/lockstep"
fi
echo "build-wheels: $(find "$out" -name '*.whl' | wc -l) wheels in $out"
