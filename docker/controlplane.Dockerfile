# Lockstep control plane: the Python image (docker/python.Dockerfile) set up for one role. Operator API, agents'
# sync API, the internal PKI and the provisioning pipeline; state (store.db with the sealed CA key, secrets,
# controlplane.yaml) in one directory.
#
# Nothing is installed here: the wheels, the venv and the user (10001:10001) come from PYTHON_IMAGE, which takes its
# own base image as BASE_IMAGE (debian:bookworm-slim, or lockstep-base:bookworm offline). So the issue's rule, every
# Dockerfile takes its base image as a build argument, holds one level down. The build context is empty: this file
# reads nothing but its base.
#   docker build -f docker/controlplane.Dockerfile -t lockstep-controlplane - < docker/controlplane.Dockerfile
#   docker build --build-arg PYTHON_IMAGE=lockstep-python:<hash> ... -t lockstep-controlplane:<hash> -   # pinned
# scripts/build-images.sh builds it with content-hash tags (tests/harness/images.py).
ARG PYTHON_IMAGE=lockstep-python:latest
FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE

LABEL org.opencontainers.image.title="lockstep-controlplane" \
      org.opencontainers.image.description="Lockstep control plane: APIs, internal PKI, provisioning" \
      org.opencontainers.image.vendor="Lockstep" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# controlplane.yaml, kek, api-token, bootstrap-tokens/, store.db (SQLite). Made here owned by 10001 and 0700, so a
# fresh named volume mounted at this path starts with that owner and mode (Docker copies them), and an unmounted
# run gets a writable anonymous volume instead of the read-only root.
USER 0:0
RUN install -d -o 10001 -g 10001 -m 0700 /var/lib/lockstep/controlplane
USER 10001:10001
VOLUME ["/var/lib/lockstep/controlplane"]
WORKDIR /var/lib/lockstep/controlplane

# Documentation only (the stack runs with host networking; the control plane binds its `listen`): HTTPS API.
EXPOSE 8000/tcp

# The control plane's own /healthz on its `listen` address (python -m lockstep.healthcheck): with `tls: internal`
# over HTTPS verified against its internal CA for a name of tls_names, so a serving certificate that expired or
# does not name the address is unhealthy too. The start period covers a first start (the CA is created, tokens
# registered). Same --config as CMD: give both when the file moves.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "lockstep.healthcheck", "controlplane", \
         "--config", "/var/lib/lockstep/controlplane/controlplane.yaml"]
CMD ["lockstep", "controlplane", "serve", "--config", "/var/lib/lockstep/controlplane/controlplane.yaml"]
