"""The internal PKI's records in the store, on SQLite and PostgreSQL: the CA (created once, key sealed), nodes
without a credential of their own, backends, one-time bootstrap tokens (atomic, expiring, replay for the same key),
the client-certificate registry (several valid at once, expiry, revocation on removal), and the schema 4 migration."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from controlplane import pki
from controlplane.store import (
    AlreadyExists,
    CertRegistration,
    Identity,
    IdentityRemoved,
    InvalidRecord,
    KeyEncryptionKey,
    NotFound,
    SqlStore,
    TokenRejected,
    open_store,
    sql,
)

from .conftest import T0, FakeClock
from .test_keys_and_schema import _sql

VALIDITY = pki.Validity(node_s=3600, backend_s=7200)
TOKEN = "bootstrap-token-0123456789abcdef"


def _ca() -> pki.InternalCa:
    return pki.create_ca(now=T0)


def _issuer(ca: pki.InternalCa, key: ec.EllipticCurvePrivateKey, *, now: dt.datetime = T0,
            calls: list[Identity] | None = None) -> Callable[[Identity], CertRegistration]:
    def issue(identity: Identity) -> CertRegistration:
        if calls is not None:
            calls.append(identity)
        profile = pki.Profile.NODE if identity.kind == "node" else pki.Profile.BACKEND
        cert = pki.issue(ca, key.public_key(), profile=profile, identity_id=identity.id, names=identity.names,
                         now=now, validity=VALIDITY)
        return CertRegistration(cert.fingerprint, cert.profile.value, cert.serial, cert.not_after, cert.pem)

    return issue


def _key_id(key: ec.EllipticCurvePrivateKey) -> str:
    return pki.spki_sha256(key.public_key())


async def test_internal_ca_is_created_once_and_its_key_sealed(backend: str, store_url: str, kek: KeyEncryptionKey,
                                                              request: pytest.FixtureRequest) -> None:
    made: list[pki.InternalCa] = []

    def create() -> tuple[str, bytes]:
        made.append(_ca())
        return made[-1].cert_pem, made[-1].key_pem

    async with await open_store(store_url, kek=kek) as store:
        cert_pem, key_pem = await store.ensure_internal_ca(create)
        again = await store.ensure_internal_ca(create)
        assert again == (cert_pem, key_pem) and len(made) == 1
        assert pki.load_ca(cert_pem, key_pem).fingerprint == made[0].fingerprint
        assert await store.internal_ca_certificates() == [cert_pem]
    async with await open_store(store_url, kek=kek) as store:  # a restart loads it, creates nothing
        assert await store.ensure_internal_ca(create) == (cert_pem, key_pem) and len(made) == 1
    # The key is sealed: its PEM body appears nowhere in the database.
    body = "".join(key_pem.decode().splitlines()[1:-1])
    dump = _sql(backend, store_url, request, "SELECT name, ciphertext FROM system_secrets")
    assert dump and all(body[:32] not in "".join(row) for row in dump)
    assert any(row[0] == "internal-ca-key:" + made[0].fingerprint for row in dump)


async def test_concurrent_first_starts_agree_on_one_ca(store_url: str, kek: KeyEncryptionKey) -> None:
    """Two control-plane processes starting at once on an empty store (here: two stores, two pools)."""
    async with await open_store(store_url, kek=kek) as a, await open_store(store_url, kek=kek) as b:
        results = await asyncio.gather(*(s.ensure_internal_ca(lambda: (lambda ca: (ca.cert_pem, ca.key_pem))(_ca()))
                                         for s in (a, b, a, b)))
        assert len({r[0] for r in results}) == 1
        assert len(await a.internal_ca_certificates()) == 1


async def test_pki_nodes_have_no_credential_of_their_own(store: SqlStore) -> None:
    one = await store.add_node("edge-1", pki=True)
    two = await store.add_node("edge-2", pki=True)  # NULL credentials do not collide
    assert (one.credential_kind, one.credential) == ("pki", None) and two.credential is None
    with pytest.raises(InvalidRecord):
        await store.add_node("edge-3", bearer_token="tok-0123456789abcdef", pki=True)
    with pytest.raises(AlreadyExists):
        await store.add_node("edge-1", pki=True)
    assert [n.node_id for n in await store.list_nodes()] == ["edge-1", "edge-2"]


async def test_token_redeemed_once_and_rejections_issue_nothing(store: SqlStore, clock: FakeClock) -> None:
    ca = _ca()
    await store.add_node("edge-1", pki=True)
    with pytest.raises(NotFound):
        await store.add_bootstrap_token(TOKEN, kind="node", identity_id="edge-9", expires_at=T0)
    with pytest.raises(InvalidRecord):
        await store.add_bootstrap_token("short", kind="node", identity_id="edge-1", expires_at=T0)
    stored = await store.add_bootstrap_token(TOKEN, kind="node", identity_id="edge-1",
                                             expires_at=T0 + dt.timedelta(hours=1))
    assert TOKEN not in repr(stored) and stored.token_hash.startswith("sha256:") and stored.used_at is None
    with pytest.raises(AlreadyExists):  # the same token again (a config re-read) never revives it
        await store.add_bootstrap_token(TOKEN, kind="node", identity_id="edge-1", expires_at=T0)

    calls: list[Identity] = []
    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    identity, reg = await store.redeem_bootstrap_token(TOKEN, now=T0, key_id=_key_id(key),
                                                       issue=_issuer(ca, key, calls=calls))
    assert identity == Identity("node", "edge-1", (), False) and len(calls) == 1
    assert (await store.identity_for_client_cert(reg.fingerprint, now=T0)).identity.id == "edge-1"  # type: ignore[union-attr]

    with pytest.raises(TokenRejected) as used:
        await store.redeem_bootstrap_token(TOKEN, now=T0, key_id=_key_id(other), issue=_issuer(ca, other, calls=calls))
    assert used.value.reason == "token_used" and TOKEN not in str(used.value)
    # The same key again (its first answer was lost): the same certificate, nothing new signed.
    _, replay = await store.redeem_bootstrap_token(TOKEN, now=T0, key_id=_key_id(key),
                                                   issue=_issuer(ca, key, calls=calls))
    assert replay == reg and len(calls) == 1
    with pytest.raises(TokenRejected, match="not known") as unknown:
        await store.redeem_bootstrap_token("never-issued-token-000000000", now=T0, key_id="x",
                                           issue=_issuer(ca, key, calls=calls))
    assert unknown.value.reason == "unknown_token"

    await store.add_bootstrap_token(TOKEN + "-2", kind="node", identity_id="edge-1",
                                    expires_at=T0 + dt.timedelta(minutes=5))
    with pytest.raises(TokenRejected) as expired:
        await store.redeem_bootstrap_token(TOKEN + "-2", now=T0 + dt.timedelta(minutes=5), key_id=_key_id(other),
                                           issue=_issuer(ca, other, calls=calls))
    assert expired.value.reason == "token_expired"
    assert len(calls) == 1 and len(await store.identity_certificates("node", "edge-1")) == 1
    tokens = await store.bootstrap_tokens("node", "edge-1")
    assert [t.used_at is not None for t in tokens] == [True, False]


async def test_a_failing_issue_leaves_the_token_unused(store: SqlStore) -> None:
    await store.add_node("edge-1", pki=True)
    await store.add_bootstrap_token(TOKEN, kind="node", identity_id="edge-1", expires_at=T0 + dt.timedelta(hours=1))

    def broken(identity: Identity) -> CertRegistration:
        raise pki.BadName("boom")

    with pytest.raises(pki.BadName):
        await store.redeem_bootstrap_token(TOKEN, now=T0, key_id="k", issue=broken)
    key = ec.generate_private_key(ec.SECP256R1())
    await store.redeem_bootstrap_token(TOKEN, now=T0, key_id=_key_id(key), issue=_issuer(_ca(), key))


async def test_concurrent_redemptions_one_wins(store_url: str, kek: KeyEncryptionKey) -> None:
    ca = _ca()
    async with await open_store(store_url, kek=kek) as a, await open_store(store_url, kek=kek) as b:
        await a.add_node("edge-1", pki=True)
        await a.add_bootstrap_token(TOKEN, kind="node", identity_id="edge-1", expires_at=T0 + dt.timedelta(hours=1))
        keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(8)]
        results = await asyncio.gather(
            *(s.redeem_bootstrap_token(TOKEN, now=T0, key_id=_key_id(k), issue=_issuer(ca, k))
              for s, k in zip(itertools.cycle((a, b)), keys)), return_exceptions=True)
        won = [r for r in results if not isinstance(r, BaseException)]
        lost = [r for r in results if isinstance(r, BaseException)]
        assert len(won) == 1, results
        assert all(isinstance(e, TokenRejected) and e.reason == "token_used" for e in lost), lost
        assert len(await a.identity_certificates("node", "edge-1")) == 1


async def test_rotation_keeps_the_old_certificate_until_it_expires(store: SqlStore, clock: FakeClock) -> None:
    ca = _ca()
    await store.add_node("edge-1", pki=True)
    k1, k2 = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    first = _issuer(ca, k1, now=T0)(Identity("node", "edge-1", (), False))
    later = T0 + dt.timedelta(minutes=40)
    second = _issuer(ca, k2, now=later)(Identity("node", "edge-1", (), False))
    await store.register_identity_cert("node", "edge-1", first, now=T0)
    await store.register_identity_cert("node", "edge-1", second, now=later)
    for reg in (first, second):
        found = await store.identity_for_client_cert(reg.fingerprint, now=later)
        assert found is not None and found.identity.id == "edge-1" and found.cert.revoked_at is None
    assert await store.identity_for_client_cert(first.fingerprint, now=first.not_after) is None  # expired: unknown
    assert await store.identity_for_client_cert(second.fingerprint, now=first.not_after) is not None
    with pytest.raises(NotFound):
        await store.register_identity_cert("node", "edge-9", second, now=later)
    certs = await store.identity_certificates("node", "edge-1")
    assert [c.fingerprint for c in certs] == [second.fingerprint, first.fingerprint]
    # Registrations expired for more than a week are cleaned up by the next registration.
    k3 = ec.generate_private_key(ec.SECP256R1())
    much_later = T0 + dt.timedelta(days=9)
    third = _issuer(ca, k3, now=much_later)(Identity("node", "edge-1", (), False))
    await store.register_identity_cert("node", "edge-1", third, now=much_later)
    assert [c.fingerprint for c in await store.identity_certificates("node", "edge-1")] == [third.fingerprint]


async def test_removal_revokes_at_once_and_burns_unused_tokens(store: SqlStore) -> None:
    ca = _ca()
    await store.add_node("edge-1", pki=True)
    key = ec.generate_private_key(ec.SECP256R1())
    reg = _issuer(ca, key)(Identity("node", "edge-1", (), False))
    await store.register_identity_cert("node", "edge-1", reg, now=T0)
    await store.add_bootstrap_token(TOKEN, kind="node", identity_id="edge-1", expires_at=T0 + dt.timedelta(hours=1))
    await store.remove_node("edge-1")
    found = await store.identity_for_client_cert(reg.fingerprint, now=T0)
    assert found is not None and found.identity.removed and found.cert.revoked_at is not None
    with pytest.raises(TokenRejected) as info:
        await store.redeem_bootstrap_token(TOKEN, now=T0, key_id=_key_id(key), issue=_issuer(ca, key))
    assert info.value.reason == "unknown_token"
    with pytest.raises(IdentityRemoved):
        await store.register_identity_cert("node", "edge-1", reg, now=T0)
    with pytest.raises(IdentityRemoved):
        await store.add_bootstrap_token(TOKEN + "x", kind="node", identity_id="edge-1", expires_at=T0)


async def test_backends(store: SqlStore) -> None:
    backend = await store.add_backend("app", ["app.internal", "10.0.0.5", "app.internal"])
    assert backend.names == ("app.internal", "10.0.0.5") and not backend.removed
    with pytest.raises(AlreadyExists):
        await store.add_backend("app", ["x.internal"])
    for bad_id, names in (("App!", ["a.internal"]), ("app2", []), ("app3", "a.internal")):
        with pytest.raises(InvalidRecord):
            await store.add_backend(bad_id, names)  # type: ignore[arg-type]
    await store.add_bootstrap_token(TOKEN, kind="backend", identity_id="app", expires_at=T0 + dt.timedelta(hours=1))
    key = ec.generate_private_key(ec.SECP256R1())
    identity, reg = await store.redeem_bootstrap_token(TOKEN, now=T0, key_id=_key_id(key),
                                                       issue=_issuer(_ca(), key))
    assert identity == Identity("backend", "app", ("app.internal", "10.0.0.5"), False)
    assert reg.profile == "backend"
    assert [b.backend_id for b in await store.list_backends()] == ["app"]
    assert (await store.remove_backend("app")).removed
    found = await store.identity_for_client_cert(reg.fingerprint, now=T0)
    assert found is not None and found.identity.removed
    with pytest.raises(NotFound):
        await store.remove_backend("nope")
    assert await store.get_backend("nope") is None


async def test_migration_from_schema_3_keeps_nodes(backend: str, store_url: str, kek: KeyEncryptionKey,
                                                   request: pytest.FixtureRequest,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:
        m.setattr(sql, "_MIGRATIONS", sql._MIGRATIONS[:3])
        m.setattr(sql, "SCHEMA_VERSION", 3)
        async with await open_store(store_url, kek=kek) as store:
            await store.add_node("edge-1", bearer_token="node-token-0123456789abcdef")
            await store.add_node("edge-2", client_cert_fingerprint="sha256:" + "ab" * 32)
    _sql(backend, store_url, request, "UPDATE nodes SET removed = TRUE WHERE node_id = 'edge-2'")
    async with await open_store(store_url, kek=kek) as store:
        assert (await store.node_for_bearer_token("node-token-0123456789abcdef")).node_id == "edge-1"  # type: ignore[union-attr]
        edge2 = await store.node_for_client_cert("sha256:" + "ab" * 32)
        assert edge2 is not None and edge2.removed
        await store.add_node("edge-3", pki=True)
        with pytest.raises(AlreadyExists):  # the UNIQUE constraint survived the rebuild
            await store.add_node("edge-4", bearer_token="node-token-0123456789abcdef")
    assert _sql(backend, store_url, request, "SELECT MAX(version) FROM schema_version") == [(str(sql.SCHEMA_VERSION),)]
