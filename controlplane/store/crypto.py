"""Envelope encryption of private keys under a key-encryption key (KEK).

Owns: loading a KEK from a value or a file (the caller reads the environment, this module never does), sealing and
opening one secret, re-wrapping a data key under a new KEK, and the KEK check value. Pure: no database, no clock, no
global state. Must not log, and must never put a key (KEK, data key or plaintext) into an error, a repr or a return
value other than `unseal`'s.

Scheme, and why:

* Every secret gets its own random 256-bit data key (DEK). The secret is encrypted with AES-256-GCM under the DEK;
  the DEK is encrypted ("wrapped") with AES-256-GCM under the KEK. Rotating the KEK re-wraps 32-byte DEKs and never
  touches the payloads. GCM rather than RFC 3394 key wrap because GCM takes associated data, so the wrapped DEK is
  bound to its record too (see below). Nonces are 96-bit random: one per encryption, far below the 2^32
  encryptions per key that NIST SP 800-38D §8.3 allows with random nonces.
* Associated data binds both ciphertexts to their record (`record_aad`, e.g. purpose + domain + fingerprint), with a
  different domain-separation prefix for the wrapped DEK and for the payload. Moving a ciphertext, a wrapped DEK, or
  both, to another row makes `unseal` fail with `DecryptionFailed`.
* Blob layout: `version (1 byte, 0x01) || nonce (12) || GCM ciphertext+tag`. The version byte leaves room for
  another algorithm without guessing.
* A KEK has a key id. By default it is derived from the key (`kek-` + 16 hex digits of HMAC-SHA256(KEK, label)),
  so an operator needs no extra setting and two different keys never share an id by accident. The id is public:
  it is stored next to every wrapped DEK and shown in errors; 64 bits of a PRF output reveal nothing of the key.
* The check value is an ordinary sealed canary. The store keeps one and opens it at start-up: a wrong KEK raises
  `WrongKeyEncryptionKey` there and then, not on the first certificate an agent asks for.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import os
from typing import Final, NoReturn, final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import DecryptionFailed, InvalidKeyEncryptionKey, WrongKeyEncryptionKey

__all__ = [
    "KEK_BYTES",
    "KeyEncryptionKey",
    "SealedKey",
    "generate_kek",
    "load_kek",
    "load_kek_file",
    "make_check_value",
    "record_aad",
    "rewrap",
    "seal",
    "unseal",
    "verify_check_value",
]

KEK_BYTES: Final = 32  # AES-256
_DEK_BYTES: Final = 32
_NONCE_BYTES: Final = 12  # the GCM nonce size NIST SP 800-38D recommends
_VERSION: Final = b"\x01"
_KEY_ID_LABEL: Final = b"lockstep/kek-id/v1"
_WRAP_PREFIX: Final = b"lockstep/dek/v1\x00"
_DATA_PREFIX: Final = b"lockstep/data/v1\x00"
_CHECK_AAD_PARTS: Final = ("kek-check",)
_CHECK_PLAINTEXT: Final = b"lockstep key-encryption key check value v1"
_MAX_KEK_FILE_BYTES: Final = 4096


@final
class KeyEncryptionKey:
    """A 256-bit KEK and its public id. The key bytes are reachable only through this module."""

    __slots__ = ("_aead", "key_id")

    def __init__(self, secret: bytes, *, key_id: str | None = None) -> None:
        """Args:
            secret: exactly 32 bytes (use `load_kek` / `load_kek_file` for text forms).
            key_id: an explicit id; by default derived from the key (see the module docstring).

        Raises:
            InvalidKeyEncryptionKey: `secret` is not 32 bytes, or `key_id` is empty or not printable.
        """
        if not isinstance(secret, bytes) or len(secret) != KEK_BYTES:
            raise InvalidKeyEncryptionKey(f"a key-encryption key must be exactly {KEK_BYTES} bytes")
        if key_id is None:
            key_id = "kek-" + hmac.new(secret, _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]
        elif not key_id or not key_id.isprintable() or len(key_id) > 128:
            raise InvalidKeyEncryptionKey("a key id must be 1-128 printable characters")
        self._aead = AESGCM(secret)
        self.key_id = key_id

    def __repr__(self) -> str:
        return f"KeyEncryptionKey(key_id={self.key_id!r})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a KeyEncryptionKey cannot be pickled or copied")


def generate_kek() -> str:
    """A new random KEK in the text form `load_kek` reads (standard base64 of 32 bytes)."""
    return base64.b64encode(os.urandom(KEK_BYTES)).decode("ascii")


def load_kek(value: str | bytes, *, key_id: str | None = None) -> KeyEncryptionKey:
    """The KEK from its text form, e.g. the value of an environment variable the caller read.

    Accepts standard or URL-safe base64 of exactly 32 bytes; surrounding whitespace is ignored.

    Raises:
        InvalidKeyEncryptionKey: anything else (the message never echoes the value).
    """
    text = value.strip() if isinstance(value, bytes) else value.strip().encode("ascii", "replace")
    secret = _b64_32(text)
    if secret is None:
        raise InvalidKeyEncryptionKey(f"a key-encryption key must be base64 of exactly {KEK_BYTES} bytes")
    return KeyEncryptionKey(secret, key_id=key_id)


def load_kek_file(path: str | os.PathLike[str], *, key_id: str | None = None) -> KeyEncryptionKey:
    """The KEK from a file holding its base64 text form (trailing newline allowed) or the 32 raw bytes.

    Raises:
        InvalidKeyEncryptionKey: the file cannot be read, or holds anything else.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_KEK_FILE_BYTES + 1)
    except OSError as exc:
        raise InvalidKeyEncryptionKey(f"cannot read the key-encryption key file: {exc.strerror}") from None
    secret = _b64_32(data.strip())
    if secret is None and len(data) == KEK_BYTES:
        secret = data
    if secret is None:
        raise InvalidKeyEncryptionKey(
            f"the key-encryption key file must hold base64 of exactly {KEK_BYTES} bytes, or the raw bytes"
        )
    return KeyEncryptionKey(secret, key_id=key_id)


def _b64_32(text: bytes) -> bytes | None:
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            out = decode(text + b"=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            continue
        if len(out) == KEK_BYTES:
            return out
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class SealedKey:
    """One sealed secret as stored: the KEK id, the wrapped DEK and the encrypted payload (both opaque blobs)."""

    kek_id: str
    wrapped_key: bytes = dataclasses.field(repr=False)
    ciphertext: bytes = dataclasses.field(repr=False)


def record_aad(*parts: str) -> bytes:
    """Associated data naming one record, e.g. `record_aad("certificate-key", domain, fingerprint)`.

    Each part is length-prefixed, so ("ab", "c") and ("a", "bc") never collide.
    """
    out = bytearray()
    for part in parts:
        raw = part.encode("utf-8")
        out += len(raw).to_bytes(4, "big") + raw
    return bytes(out)


def _encrypt(aead: AESGCM, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    return _VERSION + nonce + aead.encrypt(nonce, plaintext, aad)


def _decrypt(aead: AESGCM, blob: bytes, aad: bytes) -> bytes | None:
    if len(blob) < 1 + _NONCE_BYTES + 16 or blob[:1] != _VERSION:
        return None
    try:
        return aead.decrypt(blob[1:1 + _NONCE_BYTES], blob[1 + _NONCE_BYTES:], aad)
    except InvalidTag:
        return None


def seal(kek: KeyEncryptionKey, plaintext: bytes, *, aad: bytes) -> SealedKey:
    """Encrypt `plaintext` under a fresh data key, and wrap that key under `kek`; both bound to `aad`."""
    dek = AESGCM.generate_key(bit_length=_DEK_BYTES * 8)
    ciphertext = _encrypt(AESGCM(dek), plaintext, _DATA_PREFIX + aad)
    return SealedKey(kek.key_id, _encrypt(kek._aead, dek, _WRAP_PREFIX + aad), ciphertext)


def _unwrap(kek: KeyEncryptionKey, sealed: SealedKey, aad: bytes, record: str) -> bytes:
    if sealed.kek_id != kek.key_id:
        raise WrongKeyEncryptionKey(sealed.kek_id, kek.key_id, record)
    dek = _decrypt(kek._aead, sealed.wrapped_key, _WRAP_PREFIX + aad)
    if dek is None or len(dek) != _DEK_BYTES:
        raise DecryptionFailed(record)
    return dek


def unseal(kek: KeyEncryptionKey, sealed: SealedKey, *, aad: bytes, record: str = "a sealed value") -> bytes:
    """The plaintext of `sealed`.

    Args:
        record: how errors name the record (no secrets), e.g. "the key of certificate sha256:... of a.test".

    Raises:
        WrongKeyEncryptionKey: `sealed` was wrapped under another KEK (by key id).
        DecryptionFailed: the wrapped key or the payload does not authenticate for `aad` (tampered or moved).
    """
    dek = _unwrap(kek, sealed, aad, record)
    plaintext = _decrypt(AESGCM(dek), sealed.ciphertext, _DATA_PREFIX + aad)
    if plaintext is None:
        raise DecryptionFailed(record)
    return plaintext


def rewrap(sealed: SealedKey, *, aad: bytes, old: KeyEncryptionKey, new: KeyEncryptionKey,
           record: str = "a sealed value") -> SealedKey:
    """`sealed` with its data key wrapped under `new` instead of `old`; the payload is unchanged.

    The payload is authenticated first, so a rotation never carries a damaged record forward silently.

    Raises:
        WrongKeyEncryptionKey, DecryptionFailed: as `unseal`, for `old`.
    """
    dek = _unwrap(old, sealed, aad, record)
    if _decrypt(AESGCM(dek), sealed.ciphertext, _DATA_PREFIX + aad) is None:
        raise DecryptionFailed(record)
    return SealedKey(new.key_id, _encrypt(new._aead, dek, _WRAP_PREFIX + aad), sealed.ciphertext)


def make_check_value(kek: KeyEncryptionKey) -> SealedKey:
    """A sealed canary: stored once, opened at every start-up by `verify_check_value`."""
    return seal(kek, _CHECK_PLAINTEXT, aad=record_aad(*_CHECK_AAD_PARTS))


def verify_check_value(kek: KeyEncryptionKey, check: SealedKey) -> None:
    """Raises:
        WrongKeyEncryptionKey: `kek` is not the key `check` was made with (another id, or the same id and other bytes).
    """
    try:
        plaintext = unseal(kek, check, aad=record_aad(*_CHECK_AAD_PARTS), record="the KEK check value")
    except DecryptionFailed:
        raise WrongKeyEncryptionKey(check.kek_id, kek.key_id, "same key id, different key") from None
    if not hmac.compare_digest(plaintext, _CHECK_PLAINTEXT):
        raise WrongKeyEncryptionKey(check.kek_id, kek.key_id, "check value mismatch")
