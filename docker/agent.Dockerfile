# Lockstep sidecar (agent): the Python image (docker/python.Dockerfile) set up for one role. Next to each HAProxy,
# sharing the node directory with it (docker/README.md, "the shared-path rule").
#
# Nothing is installed here: the wheels, the venv and the user (10001:10001) come from PYTHON_IMAGE, which takes its
# own base image as BASE_IMAGE (debian:bookworm-slim, or lockstep-base:bookworm offline). So the issue's rule, every
# Dockerfile takes its base image as a build argument, holds one level down. The build context is empty: this file
# reads nothing but its base.
#   docker build -f docker/agent.Dockerfile -t lockstep-agent - < docker/agent.Dockerfile     # after lockstep-python
#   docker build --build-arg PYTHON_IMAGE=lockstep-python:<hash> -f ... -t lockstep-agent:<hash> -   # pinned
# scripts/build-images.sh builds it with content-hash tags (tests/harness/images.py).
ARG PYTHON_IMAGE=lockstep-python:latest
FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE

LABEL org.opencontainers.image.title="lockstep-agent" \
      org.opencontainers.image.description="Lockstep sidecar next to HAProxy: SPOE, certificate sync, enrollment" \
      org.opencontainers.image.vendor="Lockstep" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# The node directory: agent.yaml, bootstrap-token, certs/, pki/, run/ (HAProxy's admin socket), state/. Made here
# owned by 10001 and 0700, so a fresh named volume mounted at this path starts with that owner and mode (Docker
# copies them), and an unmounted run gets a writable anonymous volume instead of the read-only root.
USER 0:0
RUN install -d -o 10001 -g 10001 -m 0700 /var/lib/lockstep/node
USER 10001:10001
VOLUME ["/var/lib/lockstep/node"]
WORKDIR /var/lib/lockstep/node

# Documentation only (the stack runs with host networking; each agent binds what its agent.yaml says):
# spoe.port and status.port (/healthz, /metrics) as docker/compose.yaml sets them.
EXPOSE 12345/tcp 9100/tcp

# The agent's own /healthz, at the status address its agent.yaml gives (python -m lockstep.healthcheck): healthy
# once enrolled and the first desired state is in effect, unhealthy while the control plane refuses the node. The
# start period covers enrollment and the first sync. Same --config as CMD: give both when the file moves.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "lockstep.healthcheck", "agent", "--config", "/var/lib/lockstep/node/agent.yaml"]
CMD ["lockstep", "agent", "--config", "/var/lib/lockstep/node/agent.yaml"]
