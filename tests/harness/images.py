"""Every Lockstep image, built offline on `lockstep-base:bookworm` and tagged by a hash of exactly what goes in.

* `lockstep-haproxy:<hash>`: docker/haproxy.Dockerfile (`container.build_haproxy_image`, the same tags the
  container tests use, so one build serves both);
* `lockstep-python:<hash>`: docker/python.Dockerfile over the wheels of scripts/build-wheels.sh (Lockstep and its
  runtime dependencies); the build context is the wheel directory alone.

An existing tag is reused, so an unchanged tree builds nothing; a changed Dockerfile, wheel or base image builds a
new tag. Old tags are left behind (`docker image ls lockstep-python`). `python -m tests.harness.images` (what
scripts/build-images.sh runs) also moves the stable tags `:latest` that docker/compose.yaml defaults to, and prints
the hash tags as shell assignments.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path

import docker
import docker.errors

from .container import BASE_IMAGE, DockerUnavailable, build_haproxy_image, docker_client

__all__ = ["PYTHON_DOCKERFILE", "PYTHON_REPOSITORY", "WHEEL_DIR", "build_images", "build_python_image",
           "build_wheels"]

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON_DOCKERFILE = REPO_ROOT / "docker" / "python.Dockerfile"
PYTHON_REPOSITORY = "lockstep-python"
WHEEL_DIR = REPO_ROOT / "var" / "wheels"
STABLE_TAG = "latest"


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


def _tar(files: list[tuple[str, bytes]]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def build_python_image(client: docker.DockerClient, *, wheels: Path = WHEEL_DIR, base_image: str = BASE_IMAGE) -> str:
    """Builds docker/python.Dockerfile over `wheels` unless that exact image exists; returns its tag.

    Raises:
        DockerUnavailable: no base image, no wheels, or the build failed (with the end of the build log).
    """
    try:
        base_id = client.images.get(base_image).id
    except docker.errors.ImageNotFound:
        raise DockerUnavailable(
            f"base image {base_image} is missing; run scripts/build-base-image.sh (no registry is reachable here)"
        ) from None
    files = [("docker/python.Dockerfile", PYTHON_DOCKERFILE.read_bytes()), *_wheel_files(wheels)]
    digest = hashlib.sha256()
    for name, data in files:
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    digest.update(f"base\0{base_image}\0{base_id}".encode())
    source_hash = digest.hexdigest()
    tag = f"{PYTHON_REPOSITORY}:{source_hash[:16]}"
    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    try:
        client.images.build(fileobj=_tar(files), custom_context=True, dockerfile="docker/python.Dockerfile",
                            tag=tag, buildargs={"BASE_IMAGE": base_image}, network_mode="host", rm=True,
                            forcerm=True, pull=False, labels={"org.lockstep.source-hash": source_hash})
    except docker.errors.BuildError as exc:
        log = "".join(str(chunk.get("stream") or chunk.get("error") or "") for chunk in exc.build_log)
        raise DockerUnavailable(f"building {tag} failed: {exc.msg}\n{log[-4000:]}") from exc
    except docker.errors.APIError as exc:
        raise DockerUnavailable(f"building {tag} failed: {exc}") from exc
    return tag


def build_images(client: docker.DockerClient, *, base_image: str = BASE_IMAGE) -> dict[str, str]:
    """Wheels, then both images; returns {compose variable: hash tag} for docker/compose.yaml."""
    wheels = build_wheels()
    return {
        "LOCKSTEP_HAPROXY_IMAGE": build_haproxy_image(client, base_image=base_image),
        "LOCKSTEP_PYTHON_IMAGE": build_python_image(client, wheels=wheels, base_image=base_image),
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
