"""Every Lockstep image, built offline on `lockstep-base:bookworm` and tagged by a hash of exactly what goes in.

* `lockstep-haproxy:<hash>`: docker/haproxy.Dockerfile (`container.build_haproxy_image`, the same tags the
  container tests use, so one build serves both);
* `lockstep-python:<hash>`: docker/python.Dockerfile over the wheels of scripts/build-wheels.sh (Lockstep and its
  runtime dependencies); the build context is the wheel directory alone;
* `lockstep-agent:<hash>`, `lockstep-controlplane:<hash>`: docker/agent.Dockerfile and docker/controlplane.Dockerfile
  `FROM` that Python image (build argument PYTHON_IMAGE = its hash tag); the context is the Dockerfile alone, the
  hash covers it and the Python image's ID.

An existing tag is reused, so an unchanged tree builds nothing; a changed Dockerfile, wheel or base image builds a
new tag (a new Python image also means new role images). Old tags are left behind (`docker image ls 'lockstep-*'`).
`python -m tests.harness.images` (what scripts/build-images.sh runs) also moves the stable tags `:latest` that
docker/compose.yaml defaults to, and prints the hash tags as shell assignments.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import docker
import docker.errors

from .container import BASE_IMAGE, DockerUnavailable, build_haproxy_image, context_tar, docker_client

__all__ = ["PYTHON_DOCKERFILE", "PYTHON_REPOSITORY", "ROLE_IMAGES", "WHEEL_DIR", "build_images",
           "build_python_image", "build_role_image", "build_wheels"]

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON_DOCKERFILE = REPO_ROOT / "docker" / "python.Dockerfile"
PYTHON_REPOSITORY = "lockstep-python"
WHEEL_DIR = REPO_ROOT / "var" / "wheels"
STABLE_TAG = "latest"
# role -> (Dockerfile, repository, docker/compose.yaml's variable); each FROM the Python image.
ROLE_IMAGES = {
    "agent": (REPO_ROOT / "docker" / "agent.Dockerfile", "lockstep-agent", "LOCKSTEP_AGENT_IMAGE"),
    "controlplane": (REPO_ROOT / "docker" / "controlplane.Dockerfile", "lockstep-controlplane",
                     "LOCKSTEP_CONTROLPLANE_IMAGE"),
}


def build_wheels(out: Path = WHEEL_DIR, *, python: str = sys.executable, timeout_s: float = 900.0) -> Path:
    """Runs scripts/build-wheels.sh (idempotent: a no-op when nothing changed) and returns `out`.

    Raises:
        DockerUnavailable: the script failed (its output is in the message).
    """
    try:
        res = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "build-wheels.sh"), str(out)],
                             cwd=REPO_ROOT, env={**os.environ, "PYTHON": python},
                             capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise DockerUnavailable(f"scripts/build-wheels.sh did not finish within {timeout_s} s") from exc
    if res.returncode != 0:
        raise DockerUnavailable(f"scripts/build-wheels.sh failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return out


def _wheel_files(wheels: Path) -> list[tuple[str, bytes]]:
    files = [(p.relative_to(wheels).as_posix(), p.read_bytes())
             for p in sorted(wheels.rglob("*.whl")) if p.is_file()]
    if not any(name.startswith("app/lockstep-") for name, _ in files):
        raise DockerUnavailable(f"{wheels} has no app/lockstep-*.whl; run scripts/build-wheels.sh")
    return files


def _image_id(client: docker.DockerClient, image: str, hint: str) -> str:
    try:
        return str(client.images.get(image).id)
    except docker.errors.ImageNotFound:
        raise DockerUnavailable(f"image {image} is missing; {hint}") from None


def _build(client: docker.DockerClient, *, repository: str, dockerfile: str, files: list[tuple[str, bytes]],
           buildargs: dict[str, str], inputs: str) -> str:
    """Builds `dockerfile` over a context of exactly `files` as repository:<hash of files and `inputs`> unless that
    tag exists; returns the tag.

    Raises:
        DockerUnavailable: the build failed (with the end of the build log).
    """
    digest = hashlib.sha256()
    for name, data in files:
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    digest.update(inputs.encode())
    source_hash = digest.hexdigest()
    tag = f"{repository}:{source_hash[:16]}"
    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    try:
        client.images.build(fileobj=context_tar(files), custom_context=True, dockerfile=dockerfile, tag=tag,
                            buildargs=buildargs, network_mode="host", rm=True, forcerm=True, pull=False,
                            labels={"org.lockstep.source-hash": source_hash})
    except docker.errors.BuildError as exc:
        log = "".join(str(chunk.get("stream") or chunk.get("error") or "") for chunk in exc.build_log)
        raise DockerUnavailable(f"building {tag} failed: {exc.msg}\n{log[-4000:]}") from exc
    except docker.errors.APIError as exc:
        raise DockerUnavailable(f"building {tag} failed: {exc}") from exc
    return tag


def build_python_image(client: docker.DockerClient, *, wheels: Path = WHEEL_DIR, base_image: str = BASE_IMAGE) -> str:
    """Builds docker/python.Dockerfile over `wheels` unless that exact image exists; returns its tag.

    Raises:
        DockerUnavailable: no base image, no wheels, or the build failed (with the end of the build log).
    """
    base_id = _image_id(client, base_image, "run scripts/build-base-image.sh (no registry is reachable here)")
    files = [("docker/python.Dockerfile", PYTHON_DOCKERFILE.read_bytes()), *_wheel_files(wheels)]
    return _build(client, repository=PYTHON_REPOSITORY, dockerfile="docker/python.Dockerfile", files=files,
                  buildargs={"BASE_IMAGE": base_image}, inputs=f"base\0{base_image}\0{base_id}")


def build_role_image(client: docker.DockerClient, role: str, *, python_image: str) -> str:
    """Builds the Dockerfile of `role` (ROLE_IMAGES) FROM `python_image` unless that exact image exists; returns its
    tag. The hash covers the Dockerfile and the Python image's ID, not its name: the same Python image under
    another tag reuses the role image.

    Raises:
        DockerUnavailable: no such Python image, or the build failed.
    """
    path, repository, _ = ROLE_IMAGES[role]
    python_id = _image_id(client, python_image, "build it first (build_python_image)")
    name = f"docker/{path.name}"
    return _build(client, repository=repository, dockerfile=name, files=[(name, path.read_bytes())],
                  buildargs={"PYTHON_IMAGE": python_image}, inputs=f"python\0{python_id}")


def build_images(client: docker.DockerClient, *, base_image: str = BASE_IMAGE) -> dict[str, str]:
    """Wheels, then every image; returns {compose variable: hash tag} for docker/compose.yaml."""
    wheels = build_wheels()
    python_image = build_python_image(client, wheels=wheels, base_image=base_image)
    return {
        "LOCKSTEP_HAPROXY_IMAGE": build_haproxy_image(client, base_image=base_image),
        "LOCKSTEP_PYTHON_IMAGE": python_image,
        **{variable: build_role_image(client, role, python_image=python_image)
           for role, (_, _, variable) in ROLE_IMAGES.items()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/build-images.sh", description="Build every Lockstep image.")
    parser.add_argument("--base-image", default=BASE_IMAGE, help=f"FROM of every image (default {BASE_IMAGE})")
    args = parser.parse_args(argv)
    try:
        client = docker_client()
        tags = build_images(client, base_image=args.base_image)
        for tag in tags.values():
            repository = tag.partition(":")[0]
            client.images.get(tag).tag(repository, STABLE_TAG)
    except DockerUnavailable as exc:
        print(f"build-images: {exc}", file=sys.stderr)
        return 1
    for variable, tag in tags.items():
        print(f"{variable}={tag}  # also {tag.partition(':')[0]}:{STABLE_TAG}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
