"""The certificates one test session needs, made once and written 0600 into a private directory."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from pathlib import Path

from lockstep.pki import Issued, issue, make_ca

DEFAULT_NAME = "default.edge.lockstep.test"
BACKEND_NAME = "app.internal.lockstep.test"
HAPROXY_CLIENT_NAME = "edge.internal.lockstep.test"


def write_private(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return path


@dataclasses.dataclass(frozen=True)
class TestPki:
    """Edge CA (signs customer and default certificates in tests) and internal CA (backends, mTLS)."""

    __test__ = False  # not a pytest class

    edge_ca: Issued
    default: Issued
    internal_ca: Issued
    backend: Issued
    haproxy_client: Issued
    dir: Path

    @classmethod
    def create(cls, directory: Path) -> TestPki:
        now = dt.datetime.now(dt.timezone.utc)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        edge_ca = make_ca("Lockstep Test Edge CA", now=now)
        internal_ca = make_ca("Lockstep Test Internal CA", now=now)
        pki = cls(
            edge_ca=edge_ca,
            default=issue(edge_ca, [DEFAULT_NAME], now=now),
            internal_ca=internal_ca,
            backend=issue(internal_ca, [BACKEND_NAME], now=now),
            haproxy_client=issue(internal_ca, [HAPROXY_CLIENT_NAME], now=now, client=True, server=False),
            dir=directory,
        )
        write_private(pki.edge_ca_file, edge_ca.cert_pem)
        write_private(pki.default_file, pki.default.bundle_pem)
        write_private(pki.internal_ca_file, internal_ca.cert_pem)
        write_private(pki.backend_file, pki.backend.bundle_pem)
        write_private(pki.haproxy_client_file, pki.haproxy_client.bundle_pem)
        return pki

    @property
    def edge_ca_file(self) -> Path:
        return self.dir / "edge-ca.pem"

    @property
    def default_file(self) -> Path:
        return self.dir / "default.pem"

    @property
    def internal_ca_file(self) -> Path:
        return self.dir / "internal-ca.pem"

    @property
    def backend_file(self) -> Path:
        return self.dir / "backend.pem"

    @property
    def haproxy_client_file(self) -> Path:
        return self.dir / "haproxy-client.pem"
