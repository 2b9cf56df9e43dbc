"""Key-encryption key commands as an operator runs them: rotate-key keeps every key readable (with the new KEK
only), and a control plane started with the wrong KEK refuses to start with a clear message."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from controlplane.store import WrongKeyEncryptionKey, generate_kek, load_kek, open_store
from lockstep.pki import issue, make_ca
from tests.harness.agentproc import REPO_ROOT

NOW = dt.datetime.now(dt.timezone.utc)


def _lockstep(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lockstep.cli", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})


def _config(tmp_path: Path, kek_file: str) -> Path:
    cfg = tmp_path / "cp.yaml"
    cfg.write_text(yaml.safe_dump({
        "listen": "127.0.0.1:0", "store_url": f"sqlite:///{tmp_path}/store.db", "kek_file": kek_file,
        "api_token": "t" * 32, "issuer": {"kind": "digicert", "base_url": "http://127.0.0.1:9", "api_key": "k"},
    }))
    return cfg


async def test_rotate_key_and_wrong_key(tmp_path: Path) -> None:
    old, new = generate_kek(), generate_kek()
    (tmp_path / "old.kek").write_text(old)
    (tmp_path / "new.kek").write_text(new)
    ca = make_ca("ca", now=NOW)
    certs = {f"k{i}.example.test": issue(ca, [f"k{i}.example.test"], now=NOW) for i in range(3)}
    async with await open_store(f"sqlite:///{tmp_path}/store.db", kek=load_kek(old)) as store:
        for name, c in certs.items():
            await store.create_domain(name, status="deployed")
            await store.put_certificate(name, chain_pem=c.cert_pem, key_pem=c.key_pem, issuer="test")

    res = _lockstep("controlplane", "rotate-key", "--config", str(_config(tmp_path, "old.kek")),
                    "--new-kek-file", str(tmp_path / "new.kek"))
    assert res.returncode == 0, res.stderr
    assert "re-wrapped" in res.stdout

    async with await open_store(f"sqlite:///{tmp_path}/store.db", kek=load_kek(new)) as store:
        materials = await store.material_many(list(certs))
        for name, c in certs.items():
            assert c.key_pem.strip() in materials[name][1]
    with pytest.raises(WrongKeyEncryptionKey):
        await open_store(f"sqlite:///{tmp_path}/store.db", kek=load_kek(old))

    res = _lockstep("controlplane", "serve", "--config", str(_config(tmp_path, "old.kek")))
    assert res.returncode == 2
    assert "key" in res.stderr.lower() and "Traceback" not in res.stderr
    assert old not in res.stderr and new not in res.stderr


async def test_ca_command_creates_the_internal_ca_once_and_pins_it(tmp_path: Path) -> None:
    """`lockstep controlplane ca --pin` before the first start: the pin a setup step hands to agents is the CA the
    control plane then uses (created once, its key sealed: absent from the database file)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    (tmp_path / "k.kek").write_text(generate_kek())
    cfg = str(_config(tmp_path, "k.kek"))
    pins = [_lockstep("controlplane", "ca", "--config", cfg, "--pin") for _ in range(2)]
    assert all(p.returncode == 0 for p in pins), pins[0].stderr
    assert pins[0].stdout == pins[1].stdout and pins[0].stdout.startswith("sha256:")
    pem = _lockstep("controlplane", "ca", "--config", cfg)
    cert = x509.load_pem_x509_certificate(pem.stdout.encode())
    assert pins[0].stdout.strip() == "sha256:" + cert.fingerprint(hashes.SHA256()).hex()
    assert b"PRIVATE KEY" not in (tmp_path / "store.db").read_bytes()
    wrong = _lockstep("controlplane", "ca", "--config", str(_config(tmp_path, "missing.kek")))
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
