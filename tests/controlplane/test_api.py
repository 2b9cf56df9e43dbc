"""The operators' REST API over a real SQLite store: bad names refused with the reason and nothing stored,
duplicates, normalisation, listing with filters and paging, removal, authentication."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from controlplane.app import make_app
from controlplane.store import generate_kek, load_kek, open_store

TOKEN = "operator-token-123"
NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.timezone.utc)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, object]]:
    store = await open_store(f"sqlite:///{tmp_path}/cp.db", kek=load_kek(generate_kek()))
    app = make_app(store=store, api_token=TOKEN, now=lambda: NOW)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client, store
    await runner.cleanup()
    await store.aclose()


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("*.example.com", "wildcard"),
        ("192.0.2.1", "ip_literal"),
        ("[2001:db8::1]", "ip_literal"),
        ("a" * 64 + ".example.com", "label_too_long"),
        (".".join(["abcdefghij"] * 24) + ".com", "too_long"),
        ("exa mple.com", "invalid_character"),
        ("shop_x.example.com", "invalid_character"),
        ("shop.example.com/x", "invalid_character"),
        ("localhost", "single_label"),
        ("-shop.example.com", "bad_label"),
        ("", "empty"),
    ],
)
async def test_bad_names_are_refused_and_nothing_is_stored(api: tuple[httpx.AsyncClient, object], name: str,
                                                          reason: str) -> None:
    client, store = api
    resp = await client.post("/v1/domains", json={"name": name})
    assert resp.status_code == 400
    assert resp.json()["error"] == reason and resp.json()["message"]
    assert (await store.count_domains()) == {}  # type: ignore[attr-defined]


async def test_add_normalises_and_refuses_duplicates(api: tuple[httpx.AsyncClient, object]) -> None:
    client, _ = api
    resp = await client.post("/v1/domains", json={"name": "Bücher.Example.COM."})
    assert resp.status_code == 201
    assert resp.json()["name"] == "xn--bcher-kva.example.com" and resp.json()["status"] == "pending"
    dup = await client.post("/v1/domains", json={"name": "xn--bcher-kva.example.com"})
    assert dup.status_code == 409 and dup.json()["error"] == "duplicate"
    shown = await client.get("/v1/domains/BÜCHER.example.com")
    assert shown.status_code == 200 and shown.json()["name"] == "xn--bcher-kva.example.com"


async def test_bulk_list_filters_paging_and_remove(api: tuple[httpx.AsyncClient, object]) -> None:
    client, _ = api
    names = [f"d{i:03d}.example.com" for i in range(25)] + ["*.bad.example.com", "d000.example.com"]
    resp = await client.post("/v1/domains", json={"names": names})
    assert resp.status_code == 200
    body = resp.json()
    assert body["added"] == 25
    assert [r["http_status"] for r in body["results"][-2:]] == [400, 409]
    seen: list[str] = []
    after = None
    while True:
        page = (await client.get("/v1/domains", params={"limit": 10, **({"after": after} if after else {})})).json()
        seen += [d["name"] for d in page["domains"]]
        after = page["next_after"]
        if not after:
            break
    assert seen == sorted(names[:25])
    prefixed = (await client.get("/v1/domains", params={"prefix": "d01"})).json()["domains"]
    assert [d["name"] for d in prefixed] == [f"d01{i}.example.com" for i in range(10)]
    removed = await client.delete("/v1/domains/d001.example.com")
    assert removed.status_code == 202 and removed.json()["status"] == "removing"
    removing = (await client.get("/v1/domains", params={"status": "removing"})).json()["domains"]
    assert [d["name"] for d in removing] == ["d001.example.com"]
    assert (await client.delete("/v1/domains/nope.example.com")).status_code == 404


async def test_operator_token_required(api: tuple[httpx.AsyncClient, object]) -> None:
    client, _ = api
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}):
        resp = await client.get("/v1/domains", headers=headers)
        assert resp.status_code == 401
    assert (await client.get("/healthz", headers={"Authorization": ""})).status_code == 200


async def test_apex_quota(tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path}/q.db", kek=load_kek(generate_kek()))
    app = make_app(store=store, api_token=TOKEN, now=lambda: NOW, max_names_per_apex=3)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            names = ["example.com", "a.example.com", "b.c.example.com", "d.example.com", "x.example.org",
                     "a.shop.co.uk", "b.shop.co.uk"]
            body = (await client.post("/v1/domains", json={"names": names})).json()
            statuses = {r["name"]: (r["http_status"], r.get("error")) for r in body["results"]}
            assert statuses["d.example.com"] == (422, "apex_quota")
            assert "example.com" in body["results"][3]["message"]
            assert all(statuses[n][0] == 201 for n in names if n != "d.example.com")
            assert (await client.get("/v1/domains/d.example.com")).status_code == 404  # nothing stored
    finally:
        await runner.cleanup()
        await store.aclose()


async def test_a_node_removed_during_its_long_poll_gets_403_not_the_next_change(
        api: tuple[httpx.AsyncClient, object]) -> None:
    import asyncio

    from controlplane.sync.state import Token

    client, store = api
    await store.add_node("node-r", bearer_token="node-r-token-0123456789")  # type: ignore[attr-defined]
    headers = {"Authorization": "Bearer node-r-token-0123456789"}
    snap = await client.get("/v1/sync/snapshot", headers=headers)
    assert snap.status_code == 200
    since = snap.json()["revision"]
    poll = asyncio.create_task(client.get("/v1/sync/changes", params={"since": since, "wait_s": 10},
                                          headers=headers, timeout=20))
    await asyncio.sleep(0.3)  # the long-poll is admitted and waiting
    await store.remove_node("node-r")  # type: ignore[attr-defined]
    await store.put_token(Token("new.example.test", "/.well-known/pki-validation/fileauth.txt", "secret-value",  # type: ignore[attr-defined]
                                NOW + dt.timedelta(hours=1)))
    resp = await poll
    assert resp.status_code == 403 and "node_removed" in resp.text
    assert "secret-value" not in resp.text
