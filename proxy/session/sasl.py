"""SASL PLAIN (RFC 4616) and LOGIN decoding, shared by the IMAP and POP3 front ends."""

from __future__ import annotations

import binascii
from dataclasses import dataclass

# The LOGIN mechanism's customary prompts ("Username:", "Password:"), base64.
LOGIN_USER_PROMPT = b"VXNlcm5hbWU6"
LOGIN_PASS_PROMPT = b"UGFzc3dvcmQ6"


class SaslError(Exception):
    """Malformed SASL data; the text is safe to send (it never echoes the input)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    user: str
    password: bytes
    mechanism: str  # LOGIN | PLAIN | USER (for metrics)

    def __repr__(self) -> str:  # never print the password
        return f"Credentials(user={self.user!r}, mechanism={self.mechanism!r})"


def b64decode(data: bytes) -> bytes:
    """Strict base64 (RFC 4648 alphabet, padding required); `=` alone means empty (RFC 4959)."""
    if data == b"=":
        return b""
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError):
        raise SaslError("Invalid base64 data") from None


def decode_user(raw: bytes) -> str:
    try:
        user = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslError("User name is not valid UTF-8") from None
    if not user or any(ord(c) < 0x20 for c in user):
        raise SaslError("Invalid user name")
    return user


def parse_plain(message: bytes) -> Credentials:
    """RFC 4616 section 2: [authzid] NUL authcid NUL passwd."""
    parts = message.split(b"\0")
    if len(parts) != 3:
        raise SaslError("Malformed PLAIN message")
    authzid, authcid, password = parts
    if authzid and authzid != authcid:
        raise SaslError("Authorization identity differs from authentication identity")
    return Credentials(decode_user(authcid), password, "PLAIN")


def encode_plain(user: str, password: bytes) -> bytes:
    return binascii.b2a_base64(b"\0" + user.encode() + b"\0" + password, newline=False)
