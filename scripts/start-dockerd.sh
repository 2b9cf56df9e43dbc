#!/usr/bin/env bash
# Starts a Docker engine if none answers. This machine has no bridge networking, so the engine runs with
# --bridge=none --iptables=false and every container uses host networking on 127.0.0.1.
set -euo pipefail
if docker info >/dev/null 2>&1; then exit 0; fi
if ! command -v dockerd >/dev/null; then
    echo "start-dockerd: dockerd not installed (run scripts/install-system.sh)" >&2; exit 1
fi
mkdir -p var
nohup dockerd --bridge=none --iptables=false --ip6tables=false >var/dockerd.log 2>&1 &
for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && exit 0
    sleep 0.5
done
echo "start-dockerd: engine did not answer within 30 s; see var/dockerd.log" >&2
tail -20 var/dockerd.log >&2
exit 1
