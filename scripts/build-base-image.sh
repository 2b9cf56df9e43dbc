#!/usr/bin/env bash
# Builds the local base image every Lockstep Dockerfile starts FROM (build arg BASE_IMAGE), without any image
# registry: a Debian bookworm minbase rootfs made by debootstrap from the Debian mirror apt already uses, turned into
# an image by `docker import`. Elsewhere, pass BASE_IMAGE=debian:bookworm-slim to the Dockerfiles instead.
set -euo pipefail
image=${1:-lockstep-base:bookworm}
if docker image inspect "$image" >/dev/null 2>&1; then exit 0; fi

mirror=$(grep -h -E '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null \
         | grep -v security | head -1 | sed -E 's/^(URIs:|deb)[[:space:]]+(\[[^]]*\][[:space:]]+)?//; s/[[:space:]].*//' || true)
mirror=${mirror:-http://deb.debian.org/debian}
root=$(mktemp -d /var/tmp/lockstep-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "build-base-image: debootstrap bookworm from $mirror"
debootstrap --variant=minbase --include=python3,ca-certificates bookworm "$root" "$mirror" >/dev/null
# Images inherit the host's apt sources so `apt-get install` inside `docker build --network host` reaches the same
# mirror; apt lists are dropped to keep the image small.
# Same sources as the host (bookworm, -updates, -security), so images get the host's HAProxy patch level.
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    cp /etc/apt/sources.list.d/debian.sources "$root"/etc/apt/sources.list.d/debian.sources
    : > "$root"/etc/apt/sources.list
fi
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb
tar -C "$root" -c . | docker import -c 'CMD ["/bin/bash"]' - "$image" >/dev/null
echo "build-base-image: $image ready"
