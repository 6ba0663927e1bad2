"""Encryption at rest for message bodies, cache blobs and stored credentials.

Theory of operation: every record is compressed (zlib, when that saves a third or more) and then, when a
key ring is configured, sealed with AES-GCM under the ring's newest key. A record is one of:

    b"R" + raw bytes                     plaintext, stored as is
    b"Z" + zlib stream                   plaintext, compressed
    b"MPX1" + keyid_len(1) + keyid + nonce(12) + AESGCM(b"R..." | b"Z...", aad)

The associated data binds a record to where it lives ("acct:7:body:42"), so a record copied to
another account or another message fails to decrypt instead of showing someone else's mail. The
key file holds one `keyid:base64key` line per 32-byte key; the LAST line encrypts, every line
decrypts, so rotation is "append a line". Decryption never returns garbage: a missing key or a
failed tag raises `StoreKeyError` naming the record.
"""

from __future__ import annotations

import base64
import binascii
import os
import zlib
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .base import StoreError

MAGIC = b"MPX1"
NONCE_SIZE = 12          # 96-bit random nonce per record (NIST SP 800-38D 8.2.2)
KEY_SIZE = 32            # AES-256
ZLIB_LEVEL = 3           # fast; text mail compresses well at any level
COMPRESS_MAX_RATIO = 2 / 3   # store compressed only when it is at most this big
_RAW, _ZLIB = b"R", b"Z"


class StoreKeyError(StoreError):
    """A record cannot be decrypted (no such key, wrong key, corrupted), or no key is configured."""


class KeyRing:
    """Named AES-GCM keys; the last one encrypts, all of them decrypt."""

    def __init__(self, keys: list[tuple[str, bytes]]):
        if not keys:
            raise StoreKeyError("key ring is empty")
        for key_id, key in keys:
            if not key_id or len(key_id.encode()) > 255 or ":" in key_id:
                raise StoreKeyError(f"invalid key id {key_id!r}")
            if len(key) != KEY_SIZE:
                raise StoreKeyError(f"key {key_id!r}: expected {KEY_SIZE} bytes, got {len(key)}")
        self._keys = {key_id: AESGCM(key) for key_id, key in keys}
        self.current = keys[-1][0]

    def __repr__(self) -> str:
        return f"KeyRing(ids={list(self._keys)}, current={self.current!r})"

    @classmethod
    def parse(cls, text: str) -> KeyRing:
        """Parse `keyid:base64key` lines; blank lines and `#` comments are ignored."""
        keys = []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key_id, sep, encoded = line.partition(":")
            try:
                key = base64.b64decode(encoded.strip(), validate=True)
            except binascii.Error:
                key = b""
            if not sep or not key:
                raise StoreKeyError(f"key file line {number}: expected keyid:base64key")
            keys.append((key_id.strip(), key))
        return cls(keys)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> KeyRing:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise StoreKeyError(f"cannot read key file {path}: {exc.strerror}") from None
        return cls.parse(text)

    @staticmethod
    def generate_line(key_id: str) -> str:
        """A new key-file line with a random key (for operators and tests)."""
        return f"{key_id}:{base64.b64encode(os.urandom(KEY_SIZE)).decode()}"

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        key_id = self.current.encode()
        nonce = os.urandom(NONCE_SIZE)
        sealed = self._keys[self.current].encrypt(nonce, plaintext, aad)
        return MAGIC + bytes([len(key_id)]) + key_id + nonce + sealed

    def decrypt(self, record: bytes, aad: bytes, what: str) -> bytes:
        key_id, nonce, sealed = _split(record, what)
        cipher = self._keys.get(key_id)
        if cipher is None:
            raise StoreKeyError(f"{what}: no key {key_id!r} in key ring")
        try:
            return cipher.decrypt(nonce, sealed, aad)
        except InvalidTag:
            raise StoreKeyError(f"{what}: decryption failed: wrong key or corrupted record") from None


def _split(record: bytes, what: str) -> tuple[str, bytes, bytes]:
    if len(record) < 5:
        raise StoreKeyError(f"{what}: truncated encrypted record")
    id_len = record[4]
    start = 5 + id_len
    if len(record) < start + NONCE_SIZE + 16:
        raise StoreKeyError(f"{what}: truncated encrypted record")
    key_id = record[5:start].decode("utf-8", "replace")
    return key_id, record[start:start + NONCE_SIZE], record[start + NONCE_SIZE:]


def is_encrypted(record: bytes) -> bool:
    return record.startswith(MAGIC)


def seal(data: bytes, aad: bytes, ring: KeyRing | None) -> bytes:
    """Compress when it helps, then encrypt when a key ring is given."""
    packed = zlib.compress(data, ZLIB_LEVEL)
    # Kept compressed only when that saves a third: inflating is slow on incompressible-ish
    # data (base64 attachments: ~130 MB/s here, vs. a plain read at memory speed), and that
    # is the BODY[] FETCH rate (issue 7 benchmark). Text mail compresses far better and stays Z.
    inner = _ZLIB + packed if len(packed) <= len(data) * COMPRESS_MAX_RATIO else _RAW + data
    return inner if ring is None else ring.encrypt(inner, aad)


def unseal(record: bytes, aad: bytes, ring: KeyRing | None, what: str) -> bytes:
    """The inverse of seal(); raises StoreKeyError rather than return wrong bytes."""
    if is_encrypted(record):
        if ring is None:
            raise StoreKeyError(f"{what}: record is encrypted but no key ring is configured")
        record = ring.decrypt(record, aad, what)
    kind, payload = record[:1], record[1:]
    if kind == _RAW:
        return payload
    if kind == _ZLIB:
        try:
            return zlib.decompress(payload)
        except zlib.error:
            raise StoreKeyError(f"{what}: corrupted compressed record") from None
    raise StoreKeyError(f"{what}: unknown record format")


# The secret the gateway keys POP3 content digests with (`gateway/sync_identity.py`), one per
# store, in its `meta` row 'uidl_digest_key', sealed like a body: with a key ring, reading it
# takes the key file, which the database does not hold. Re-sealed under the newest key at each
# open, as the key check is, so an old key can be dropped after a rotation.
DIGEST_SECRET_BYTES = 32
_DIGEST_SECRET_AAD = b"store:uidl_digest_key"


def seal_digest_secret(secret: bytes, ring: KeyRing | None) -> bytes:
    """The digest secret sealed for its `meta` row."""
    return seal(secret, _DIGEST_SECRET_AAD, ring)


def digest_secret(record: bytes | None, ring: KeyRing | None) -> bytes:
    """The digest secret from its `meta` row; a new one when there is none yet."""
    if record is None:
        return os.urandom(DIGEST_SECRET_BYTES)
    return unseal(record, _DIGEST_SECRET_AAD, ring, "store digest secret")
