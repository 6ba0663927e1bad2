"""SASL XOAUTH2 (Google's mechanism) and OAUTHBEARER (RFC 7628): who a token is for.

The proxy never validates a token: it reads the user the client names in the message (XOAUTH2
`user=`, OAUTHBEARER's GS2 authzid `a=`), routes the login on that user, and relays the message
unchanged to the upstream, which validates the token. The message holds a bearer token, so it is
treated as a password: never logged, never in a repr.

XOAUTH2:      "user=" user ^A "auth=Bearer " token ^A ^A
OAUTHBEARER:  gs2-header ^A *(key "=" value ^A) ^A, gs2-header = ("n" / "y") "," ["a=" saslname] ","
              (RFC 7628 3.1; RFC 5801 4: saslname escapes "," as "=2C" and "=" as "=3D")
"""

from __future__ import annotations

from .sasl import Credentials, SaslError, decode_user

TOKEN_MECHANISMS = ("XOAUTH2", "OAUTHBEARER")


def _kvpairs(parts: list[bytes]) -> dict[bytes, bytes]:
    pairs: dict[bytes, bytes] = {}
    for part in parts:
        key, sep, value = part.partition(b"=")
        if not sep or not key:
            raise SaslError("Malformed token message")
        pairs[key.lower()] = value
    return pairs


def _split(message: bytes) -> list[bytes]:
    """`a ^A b ^A ^A` -> [a, b]; the message must end with ^A^A."""
    if not message.endswith(b"\x01\x01"):
        raise SaslError("Malformed token message")
    return message[:-2].split(b"\x01")


def parse_xoauth2(message: bytes) -> Credentials:
    pairs = _kvpairs([p for p in _split(message)])
    user, auth = pairs.get(b"user"), pairs.get(b"auth", b"")
    if user is None or not auth[:7].lower() == b"bearer ":
        raise SaslError("Malformed XOAUTH2 message")
    return Credentials(decode_user(user), message, "XOAUTH2")


def _saslname(raw: bytes) -> bytes:
    if b"," in raw:
        raise SaslError("Malformed OAUTHBEARER authzid")
    out, i = bytearray(), 0
    while i < len(raw):
        if raw[i:i + 1] == b"=":
            code = raw[i + 1:i + 3]
            if code not in (b"2C", b"3D"):
                raise SaslError("Malformed OAUTHBEARER authzid")
            out += b"," if code == b"2C" else b"="
            i += 3
        else:
            out += raw[i:i + 1]
            i += 1
    return bytes(out)


def parse_oauthbearer(message: bytes) -> Credentials:
    parts = _split(message)
    header = parts[0].split(b",")
    if len(header) != 3 or header[0] not in (b"n", b"y") or header[2] != b"":
        raise SaslError("Malformed OAUTHBEARER message")  # channel binding (p=) is not relayed
    if not header[1].startswith(b"a="):
        raise SaslError("OAUTHBEARER needs the user (a=) to route the login")
    user = _saslname(header[1][2:])
    pairs = _kvpairs(parts[1:])
    if not pairs.get(b"auth", b"")[:7].lower() == b"bearer ":
        raise SaslError("Malformed OAUTHBEARER message")
    return Credentials(decode_user(user), message, "OAUTHBEARER")


PARSERS = {"XOAUTH2": parse_xoauth2, "OAUTHBEARER": parse_oauthbearer}


def bearer_token(message: bytes) -> bytes:
    """The token inside an XOAUTH2 / OAUTHBEARER message already parsed by the functions above
    (for a lookup's Auth-Pass); b"" if it cannot be found."""
    for part in message.split(b"\x01"):
        if part[:12].lower() == b"auth=bearer ":
            return part[12:]
    return b""


def dummy_response(mechanism: str) -> bytes:
    """What a client answers to the error challenge: RFC 7628 3.2.3 asks OAUTHBEARER clients
    for a single ^A (base64 "AQ=="); Google's XOAUTH2 for an empty response."""
    return b"AQ==" if mechanism == "OAUTHBEARER" else b""
