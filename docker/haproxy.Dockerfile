# Lockstep edge: Debian's HAProxy (2.6 on bookworm) running the shipped configuration (haproxy/ in this repository).
#
# Build context is the repository root:
#   docker build -f docker/haproxy.Dockerfile -t lockstep-haproxy .                   # public base image
#   docker build --network host --build-arg BASE_IMAGE=lockstep-base:bookworm \
#       -f docker/haproxy.Dockerfile -t lockstep-haproxy .                            # offline (scripts/build-base-image.sh)
# The test harness (tests/harness/container.py) builds it with a context holding only this file and haproxy/.
#
# Every address and path comes from LOCKSTEP_* variables (see the header of haproxy/haproxy.cfg); only
# LOCKSTEP_HAPROXY_DIR is set here. Run with host networking and the same host paths mounted at the same place, so
# the file names the agent sends over the admin socket mean the same thing on both sides.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

# One layer: install without recommends, then drop apt's lists and caches (the debootstrap base image has no
# docker-clean hook, so clean explicitly). The haproxy package's postinst cannot start a service here and says so.
RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends haproxy; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log; \
    haproxy -v

COPY haproxy/ /etc/lockstep/haproxy/
ENV LOCKSTEP_HAPROXY_DIR=/etc/lockstep/haproxy

# SIGUSR1 is HAProxy's soft stop (stop listening, finish current connections, exit), as agent.haproxy does.
STOPSIGNAL SIGUSR1
# Exec form: HAProxy is PID 1 in the foreground (-db, no master process) and receives signals directly.
CMD ["haproxy", "-db", "-f", "/etc/lockstep/haproxy/haproxy.cfg"]
