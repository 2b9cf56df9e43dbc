"""Fixtures for the store tests: every test that takes `store_url` (or `store`) runs once on SQLite and once on
PostgreSQL. The PostgreSQL server is this session's own (tests/harness/postgres.py), started on first use and
stopped by its pid at the end; each test gets a fresh database in it."""

from __future__ import annotations

import datetime as dt
import itertools
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from controlplane.store import KeyEncryptionKey, SqlStore, open_store
from tests.harness.postgres import PostgresServer, PostgresUnavailable

BACKENDS = ("sqlite", "postgresql")
T0 = dt.datetime(2026, 11, 24, 9, 0, tzinfo=dt.timezone.utc)
FILEAUTH = "/.well-known/pki-validation/fileauth.txt"

_db_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.fail("psycopg is not installed: run the project's setup (make setup / pip install -e '.[test]')")
    root = Path(tempfile.mkdtemp(prefix="lspg-", dir="/tmp"))  # short: the unix socket lives here
    try:
        server = PostgresServer(root).start()
    except PostgresUnavailable as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(str(exc))
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite://{tmp_path / 'store.db'}"
    server: PostgresServer = request.getfixturevalue("pg_server")
    return server.create_database(f"t{next(_db_numbers)}")


@pytest.fixture
def kek() -> KeyEncryptionKey:
    return KeyEncryptionKey(os.urandom(32))


class FakeClock:
    def __init__(self, now: dt.datetime = T0) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(store_url: str, kek: KeyEncryptionKey, clock: FakeClock) -> AsyncIterator[SqlStore]:
    async with await open_store(store_url, kek=kek, clock=clock, poll_interval_s=0.05) as s:
        yield s


class Issued:
    """One certificate for tests: the chain PEM, the key in several encodings (to search the database for)."""

    def __init__(self, name: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.name = name
        self.key = key
        self.cert = cert
        self.chain_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        self.key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()).decode()
        self.key_der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())
        self.key_scalar = key.private_numbers().private_value.to_bytes(32, "big")

    @property
    def key_pem_body(self) -> str:
        return "".join(line for line in self.key_pem.splitlines() if not line.startswith("-----"))


@pytest.fixture(scope="session")
def issue() -> Callable[..., Issued]:
    """issue(name, *, days=90, names=None) -> a fresh self-signed EC P-256 certificate and key."""

    def make(name: str, *, days: int = 90, names: tuple[str, ...] | None = None) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(T0 - dt.timedelta(days=1)).not_valid_after(T0 + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in (names or (name,))]),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        return Issued(name, key, cert)

    return make
