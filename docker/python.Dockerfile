# Lockstep's Python services, one image for all of them (pick one with the command):
#   lockstep agent --config FILE                the sidecar next to each HAProxy
#   lockstep controlplane serve --config FILE   the control plane
#   lockstep demo-backend ...                   the mTLS-only demo application server
#   python -m certcentral_sim ...               the DigiCert CertCentral simulator (tests and the demo stack)
#   python -m lockstep.stack init --root DIR    the compose stack's one-shot setup (docker/compose.yaml)
# The agent and the control plane also have role images FROM this one (docker/agent.Dockerfile,
# docker/controlplane.Dockerfile: command, volume, healthcheck), which install nothing more.
#
# The build context is the wheel directory scripts/build-wheels.sh makes (deps/*.whl and app/lockstep-*.whl),
# nothing else: no source tree, no .venv. pip runs with --no-index, so the build needs no network on a base image
# that already has python3 (lockstep-base does; debian:bookworm-slim gets it from apt):
#   scripts/build-wheels.sh var/wheels
#   docker build -f docker/python.Dockerfile -t lockstep var/wheels                         # public base image
#   docker build --network host --build-arg BASE_IMAGE=lockstep-base:bookworm \
#       -f docker/python.Dockerfile -t lockstep var/wheels                                  # offline (this repo)
# scripts/build-images.sh does both steps with content-hash tags.
ARG BASE_IMAGE=debian:bookworm-slim

# Python 3.11 and the CA bundle; nothing else (no compiler, no pip) in any stage that ships.
FROM ${BASE_IMAGE} AS python
RUN set -eux; \
    if ! command -v python3 >/dev/null || [ ! -e /etc/ssl/certs/ca-certificates.crt ]; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 ca-certificates; \
        apt-get clean; \
        rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log; \
    fi; \
    python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), f"wheels are for CPython 3.11, not {sys.version}"'

# A venv without pip holding the dependencies; pip runs from its own wheel (a wheel is an importable zip) and only
# from local files. The classic builder keeps the build stages as untagged images: they are the next build's layer
# cache (`docker image prune --filter label=org.lockstep.build-stage` drops them).
FROM python AS deps
LABEL org.lockstep.build-stage=python-deps
ENV PIP_NO_INDEX=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
COPY deps/ /tmp/wheels/deps/
RUN set -eux; \
    python3 -m venv --without-pip /opt/lockstep; \
    pip_wheel=$(echo /tmp/wheels/deps/pip-*.whl); \
    /opt/lockstep/bin/python "$pip_wheel/pip" install --find-links /tmp/wheels/deps \
        $(ls /tmp/wheels/deps/*.whl | grep -v '/pip-'); \
    site=$(/opt/lockstep/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))'); \
    echo /opt/lockstep/app > "$site/lockstep-app.pth"

# Lockstep itself apart, in /opt/lockstep/app (on sys.path through the .pth above): an edit to Lockstep rebuilds a
# layer of a few hundred kB, and the dependencies' layer of the final image stays cached.
FROM deps AS app
LABEL org.lockstep.build-stage=python-app
COPY app/ /tmp/wheels/app/
# pip check fails the build if a dependency of Lockstep is missing from the wheels.
RUN set -eux; \
    pip_wheel=$(echo /tmp/wheels/deps/pip-*.whl); \
    /opt/lockstep/bin/python "$pip_wheel/pip" install --no-deps --target /opt/lockstep/app \
        /tmp/wheels/app/lockstep-*.whl; \
    /opt/lockstep/bin/python "$pip_wheel/pip" check; \
    /opt/lockstep/app/bin/lockstep --help >/dev/null

FROM python
# Fixed uid:gid 10001: HAProxy's container runs as the same ids to share the admin socket and certificate files.
RUN set -eux; \
    groupadd --system --gid 10001 lockstep; \
    useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/lockstep --no-create-home \
        --shell /usr/sbin/nologin lockstep; \
    install -d -o 10001 -g 10001 -m 0700 /var/lib/lockstep
COPY --from=deps /opt/lockstep /opt/lockstep
COPY --from=app /opt/lockstep/app /opt/lockstep/app
ENV PATH=/opt/lockstep/app/bin:/opt/lockstep/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /var/lib/lockstep
# Every Lockstep process stops cleanly on SIGTERM (the agent, control plane, demo backend and simulator handle it).
STOPSIGNAL SIGTERM
CMD ["lockstep", "--help"]
