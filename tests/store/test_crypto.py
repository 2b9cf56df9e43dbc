"""controlplane/store/crypto.py: KEK loading, envelope sealing, associated-data binding, rotation, check value."""

from __future__ import annotations

import base64
import copy
import os
import pickle
from pathlib import Path

import pytest

from controlplane.store import crypto
from controlplane.store.errors import (
    DecryptionFailed,
    InvalidKeyEncryptionKey,
    WrongKeyEncryptionKey,
)

SECRET = bytes(range(32))
SECRET_B64 = base64.b64encode(SECRET).decode()


def test_load_kek_forms(tmp_path: Path) -> None:
    ids = {
        crypto.load_kek(SECRET_B64).key_id,
        crypto.load_kek(f"  {SECRET_B64}\n").key_id,
        crypto.load_kek(base64.urlsafe_b64encode(SECRET).rstrip(b"=")).key_id,
        crypto.KeyEncryptionKey(SECRET).key_id,
    }
    (tmp_path / "b64").write_text(SECRET_B64 + "\n")
    (tmp_path / "raw").write_bytes(SECRET)
    ids |= {crypto.load_kek_file(tmp_path / "b64").key_id, crypto.load_kek_file(tmp_path / "raw").key_id}
    assert len(ids) == 1
    (only,) = ids
    assert only.startswith("kek-") and len(only) == 20
    assert crypto.KeyEncryptionKey(os.urandom(32)).key_id != only
    assert crypto.load_kek(SECRET_B64, key_id="kek-2026").key_id == "kek-2026"
    assert len(base64.b64decode(crypto.generate_kek())) == 32


@pytest.mark.parametrize("value", ["", "not base64!", base64.b64encode(b"x" * 31).decode(),
                                   base64.b64encode(b"x" * 33).decode(), base64.b64encode(b"y" * 64).decode()])
def test_load_kek_rejects_without_echoing(value: str) -> None:
    with pytest.raises(InvalidKeyEncryptionKey) as info:
        crypto.load_kek(value)
    assert not value or value not in str(info.value)


def test_load_kek_file_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidKeyEncryptionKey, match="cannot read"):
        crypto.load_kek_file(tmp_path / "missing")
    (tmp_path / "short").write_text("c2hvcnQ=\n")
    with pytest.raises(InvalidKeyEncryptionKey, match="exactly 32 bytes"):
        crypto.load_kek_file(tmp_path / "short")


def test_kek_never_shows_its_key() -> None:
    kek = crypto.KeyEncryptionKey(SECRET)
    for text in (repr(kek), str(kek), repr(crypto.seal(kek, b"secret payload", aad=b"a"))):
        assert SECRET_B64 not in text and SECRET.hex() not in text and "secret payload" not in text
    with pytest.raises(TypeError):
        pickle.dumps(kek)
    with pytest.raises(TypeError):
        copy.copy(kek)


def test_seal_roundtrip_and_fresh_keys() -> None:
    kek = crypto.KeyEncryptionKey(SECRET)
    aad = crypto.record_aad("certificate-key", "a.test", "sha256:00")
    one, two = crypto.seal(kek, b"payload", aad=aad), crypto.seal(kek, b"payload", aad=aad)
    assert one.kek_id == kek.key_id
    assert one.wrapped_key != two.wrapped_key and one.ciphertext != two.ciphertext  # a data key per secret
    assert b"payload" not in one.ciphertext
    assert crypto.unseal(kek, one, aad=aad) == crypto.unseal(kek, two, aad=aad) == b"payload"


def test_associated_data_binds_to_the_record() -> None:
    kek = crypto.KeyEncryptionKey(SECRET)
    aad_a = crypto.record_aad("certificate-key", "a.test", "sha256:00")
    aad_b = crypto.record_aad("certificate-key", "b.test", "sha256:00")
    a, b = crypto.seal(kek, b"key a", aad=aad_a), crypto.seal(kek, b"key b", aad=aad_b)
    with pytest.raises(DecryptionFailed, match="row b"):
        crypto.unseal(kek, a, aad=aad_b, record="row b")
    # only the payload moved; only the wrapped key moved
    for mixed in (crypto.SealedKey(b.kek_id, b.wrapped_key, a.ciphertext),
                  crypto.SealedKey(a.kek_id, b.wrapped_key, a.ciphertext)):
        for aad in (aad_a, aad_b):
            with pytest.raises(DecryptionFailed):
                crypto.unseal(kek, mixed, aad=aad)
    # length prefixes: ("ab", "c") is not ("a", "bc")
    assert crypto.record_aad("ab", "c") != crypto.record_aad("a", "bc")


def test_tampering_and_truncation_fail() -> None:
    kek = crypto.KeyEncryptionKey(SECRET)
    sealed = crypto.seal(kek, b"payload", aad=b"r")
    flipped = bytearray(sealed.ciphertext)
    flipped[-1] ^= 1
    for bad in (crypto.SealedKey(sealed.kek_id, sealed.wrapped_key, bytes(flipped)),
                crypto.SealedKey(sealed.kek_id, sealed.wrapped_key, sealed.ciphertext[:10]),
                crypto.SealedKey(sealed.kek_id, b"\x02" + sealed.wrapped_key[1:], sealed.ciphertext)):
        with pytest.raises(DecryptionFailed):
            crypto.unseal(kek, bad, aad=b"r")


def test_wrong_kek() -> None:
    kek, other = crypto.KeyEncryptionKey(SECRET), crypto.KeyEncryptionKey(os.urandom(32))
    sealed = crypto.seal(kek, b"payload", aad=b"r")
    with pytest.raises(WrongKeyEncryptionKey) as info:
        crypto.unseal(other, sealed, aad=b"r")
    assert (info.value.expected_kek_id, info.value.given_kek_id) == (kek.key_id, other.key_id)
    impostor = crypto.KeyEncryptionKey(os.urandom(32), key_id=kek.key_id)  # same id, other bytes
    check = crypto.make_check_value(kek)
    crypto.verify_check_value(kek, check)
    for wrong in (other, impostor):
        with pytest.raises(WrongKeyEncryptionKey):
            crypto.verify_check_value(wrong, check)


def test_rewrap_keeps_payload_and_moves_to_new_kek() -> None:
    old, new = crypto.KeyEncryptionKey(SECRET), crypto.KeyEncryptionKey(os.urandom(32))
    sealed = crypto.seal(old, b"payload", aad=b"r")
    moved = crypto.rewrap(sealed, aad=b"r", old=old, new=new)
    assert moved.ciphertext == sealed.ciphertext and moved.kek_id == new.key_id
    assert crypto.unseal(new, moved, aad=b"r") == b"payload"
    with pytest.raises(WrongKeyEncryptionKey):
        crypto.unseal(old, moved, aad=b"r")
    with pytest.raises(DecryptionFailed):
        crypto.rewrap(sealed, aad=b"other record", old=old, new=new)
