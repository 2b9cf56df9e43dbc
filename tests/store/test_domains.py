"""Domains: CRUD, compare-and-set, filters, keyset paging, due list; nodes."""

from __future__ import annotations

import datetime as dt

import pytest

from controlplane.store import (
    UNSET,
    AlreadyExists,
    Conflict,
    InvalidRecord,
    NotFound,
    SqlStore,
    hash_bearer_token,
)

from .conftest import T0, FakeClock


async def test_create_get_update(store: SqlStore, clock: FakeClock) -> None:
    created = await store.create_domain("shop.example.test", status="pending", issuer="digicert",
                                        pipeline={"step": "validate", "attempts": 0})
    assert created.version == 1 and created.created_at == created.updated_at == T0
    assert created.ca_order_id is None and created.next_retry_at is None
    assert await store.get_domain("shop.example.test") == created
    assert await store.get_domain("other.example.test") is None
    with pytest.raises(AlreadyExists):
        await store.create_domain("shop.example.test", status="pending")

    clock.advance(5)
    retry = T0 + dt.timedelta(minutes=10)
    updated = await store.update_domain("shop.example.test", expect_version=1, status="ordering",
                                        status_detail="waiting for DCV", next_retry_at=retry, ca_order_id="4711",
                                        pipeline={"step": "order"})
    assert (updated.status, updated.status_detail, updated.ca_order_id, updated.version) == (
        "ordering", "waiting for DCV", "4711", 2)
    assert updated.next_retry_at == retry and updated.updated_at == T0 + dt.timedelta(seconds=5)
    assert updated.created_at == T0 and updated.issuer == "digicert" and dict(updated.pipeline) == {"step": "order"}
    assert await store.get_domain("shop.example.test") == updated

    cleared = await store.update_domain("shop.example.test", status_detail=None, next_retry_at=None,
                                        status=UNSET)
    assert cleared.status == "ordering" and cleared.status_detail is None and cleared.next_retry_at is None


async def test_order_id_compare_and_set(store: SqlStore) -> None:
    """Two pipeline workers read version 1; only the first may record its CA order."""
    d = await store.create_domain("a.test", status="pending")
    await store.update_domain("a.test", expect_version=d.version, ca_order_id="first")
    with pytest.raises(Conflict) as info:
        await store.update_domain("a.test", expect_version=d.version, ca_order_id="second")
    assert "version is 2" in str(info.value)
    assert (await store.get_domain("a.test")).ca_order_id == "first"  # type: ignore[union-attr]
    with pytest.raises(NotFound):
        await store.update_domain("missing.test", status="x")


@pytest.mark.parametrize("name", ["Shop.Example.Test", "shop.example.test.", "shop example.test", "", "a..b",
                                  "-a.test", "xn--bcher-kva.test:443", "bücher.test", "a" * 254])
async def test_names_must_be_normalised(store: SqlStore, name: str) -> None:
    with pytest.raises(InvalidRecord):
        await store.create_domain(name, status="pending")


async def test_invalid_values(store: SqlStore) -> None:
    with pytest.raises(InvalidRecord, match="timezone-aware"):
        await store.create_domain("a.test", status="p", next_retry_at=dt.datetime(2030, 1, 1))
    with pytest.raises(InvalidRecord, match="JSON"):
        await store.create_domain("a.test", status="p", pipeline={"x": object()})
    await store.create_domain("*.wild.test", status="p")  # wildcards and A-labels are names too
    await store.create_domain("xn--bcher-kva.test", status="p")


async def test_filters_and_keyset_paging(store: SqlStore) -> None:
    for i in range(25):
        await store.create_domain(f"d{i:02d}.shop.test", status="active" if i % 3 else "failed")
    await store.create_domain("other.test", status="active")
    await store.create_domain("d99.shop.testing", status="active")  # same prefix up to a label boundary

    seen: list[str] = []
    after = None
    while True:
        page = await store.list_domains(after=after, limit=10)
        seen += [d.name for d in page.domains]
        if page.next_after is None:
            break
        after = page.next_after
    assert seen == sorted(seen) and len(seen) == 27

    failed = await store.list_domains(status="failed", limit=100)
    assert [d.name for d in failed.domains] == [f"d{i:02d}.shop.test" for i in range(0, 25, 3)]
    both = await store.list_domains(status=["failed", "active"], prefix="d0", limit=100)
    assert [d.name for d in both.domains] == [f"d{i:02d}.shop.test" for i in range(10)]
    assert (await store.list_domains(status=[], limit=5)).domains == []
    page = await store.list_domains(status="active", prefix="d1", limit=4)
    assert [d.name for d in page.domains] == ["d10.shop.test", "d11.shop.test", "d13.shop.test", "d14.shop.test"]
    assert page.next_after == "d14.shop.test"
    page = await store.list_domains(status="active", prefix="d1", after=page.next_after, limit=4)
    assert [d.name for d in page.domains] == ["d16.shop.test", "d17.shop.test", "d19.shop.test"]
    assert page.next_after is None
    exact = await store.list_domains(prefix="d20.shop.test", limit=10)
    assert [d.name for d in exact.domains] == ["d20.shop.test"]
    assert await store.count_domains() == {"active": 18, "failed": 9}
    with pytest.raises(InvalidRecord):
        await store.list_domains(limit=0)


async def test_due_domains(store: SqlStore) -> None:
    await store.create_domain("late.test", status="retry", next_retry_at=T0 + dt.timedelta(hours=1))
    await store.create_domain("early.test", status="retry", next_retry_at=T0 - dt.timedelta(hours=1))
    await store.create_domain("now.test", status="retry", next_retry_at=T0)
    await store.create_domain("idle.test", status="active")
    assert [d.name for d in await store.due_domains(T0)] == ["early.test", "now.test"]
    assert [d.name for d in await store.due_domains(T0 + dt.timedelta(days=1), limit=2)] == ["early.test",
                                                                                             "now.test"]


async def test_nodes(store: SqlStore) -> None:
    token = "node-token-0123456789abcdef"
    node = await store.add_node("edge-1", bearer_token=token)
    assert node.credential == hash_bearer_token(token) and token not in repr(node) and not node.removed
    await store.add_node("edge-2", client_cert_fingerprint="sha256:" + "ab" * 32)
    assert (await store.node_for_bearer_token(token)) == node
    assert await store.node_for_bearer_token("node-token-wrong-0000000000") is None
    assert (await store.node_for_client_cert("sha256:" + "ab" * 32)).node_id == "edge-2"  # type: ignore[union-attr]
    with pytest.raises(AlreadyExists):
        await store.add_node("edge-1", bearer_token="another-token-0123456789")
    with pytest.raises(AlreadyExists):
        await store.add_node("edge-3", bearer_token=token)
    with pytest.raises(InvalidRecord):
        await store.add_node("edge-4")
    with pytest.raises(InvalidRecord):
        await store.add_node("edge-4", bearer_token="")
    removed = await store.remove_node("edge-1")
    assert removed.removed and (await store.node_for_bearer_token(token)).removed  # type: ignore[union-attr]
    assert [n.node_id for n in await store.list_nodes()] == ["edge-1", "edge-2"]
    with pytest.raises(NotFound):
        await store.remove_node("edge-9")
