"""Sans-IO parser for the HAProxy PROXY protocol, versions 1 (text) and 2 (binary).

Theory of operation: a load balancer in front of the proxy (HAProxy, AWS NLB, GCP, Azure, ...)
prepends one header to the TCP stream that names the real client. `ProxyHeaderParser.feed()` takes
bytes as they arrive and returns None while the header is incomplete, a `ProxyHeader` once it is
complete, or raises `ProxyProtocolError` as soon as the bytes seen so far cannot begin a valid
header (a mail client talking directly to a PROXY listener fails on its first byte, not after a
timeout). Bytes that arrived after the header belong to the mail protocol and are left in
`.remainder`. `feed(b"")` means the peer closed the connection (the trio convention for EOF).

The module imports no trio, socket or ssl; the trio listener owns the stream, decides whether the
peer may send a header at all (`is_trusted`), applies a timeout and then calls `feed()`.

Spec: haproxy's doc/proxy-protocol.txt. Enforced here:
- v1: `PROXY SP (TCP4|TCP6) SP src SP dst SP sport SP dport CRLF`, single spaces, at most 107 bytes
  including CRLF (2.1), addresses of the announced family, ports 0..65535 in decimal without leading
  zeros. `PROXY UNKNOWN` may be followed by anything up to CRLF, which is ignored (2.1).
- v2: the 12-byte signature, version nibble 2, command LOCAL (0) or PROXY (1), one of the seven
  family/transport bytes of 2.2 (others "must be rejected as invalid by receivers"), a length that
  covers the address block of the family, capped at `MAX_V2_PAYLOAD`. TLVs are skipped. For LOCAL
  the family and addresses are ignored (2.2: "the receiver must ... use the real connection
  endpoints").

`source`/`destination` are None when the receiver must use the real endpoints: v1 UNKNOWN, v2
LOCAL, v2 UNSPEC and AF_UNIX (whose "addresses" are paths, useless as a client IP).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "MAX_V1_LENGTH",
    "MAX_V2_PAYLOAD",
    "V1_PREFIX",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxyHeaderParser",
    "ProxyProtocolError",
    "is_trusted",
]

V1_PREFIX = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
MAX_V1_LENGTH = 107       # 2.1: "a 108-byte buffer is always enough to store all the line and a
                          # trailing zero"; i.e. 107 bytes including CRLF
V2_FIXED_LENGTH = 16      # signature, ver/cmd, fam/transport, 2-byte length
MAX_V2_PAYLOAD = 1024     # our cap on the bytes following the fixed part (addresses + TLVs)

# 2.2, the only family/transport bytes a receiver may accept -> (family name, address length).
_V2_FAMILIES: dict[int, tuple[str, int]] = {
    0x00: ("UNKNOWN", 0),
    0x11: ("TCP4", 12),
    0x12: ("UDP4", 12),
    0x21: ("TCP6", 36),
    0x22: ("UDP6", 36),
    0x31: ("UNIX", 216),
    0x32: ("UNIX_DGRAM", 216),
}
_V2_COMMANDS = {0x0: "LOCAL", 0x1: "PROXY"}
_V1_FAMILIES = {b"TCP4": ipaddress.IPv4Address, b"TCP6": ipaddress.IPv6Address}


class ProxyProtocolError(Exception):
    """The peer sent something that is not a valid PROXY header; close the connection.

    `reason` is a short fixed text, safe to log and to use as a metric label.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A complete PROXY header.

    `family` is TCP4, TCP6, UDP4, UDP6, UNIX, UNIX_DGRAM or UNKNOWN. `source` is the real client as
    (ip, port) and `destination` the address it connected to; both None when the receiver must use
    the connection's own endpoints (see the module docstring).
    """

    version: int
    command: str
    family: str
    source: tuple[str, int] | None
    destination: tuple[str, int] | None


class _State(Enum):
    READING = "reading"
    DONE = "done"
    ERROR = "error"


class ProxyHeaderParser:
    """Incremental PROXY header parser: one instance per connection.

    Usage: call `feed(chunk)` with each chunk received until it returns a `ProxyHeader`, then hand
    `remainder` to the mail-protocol parser. Feeding after the header was returned, or after an
    error, is a programming error (`RuntimeError`).
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._state = _State.READING
        self.header: ProxyHeader | None = None
        self.remainder: bytes = b""

    def feed(self, data: bytes) -> ProxyHeader | None:
        """Add received bytes; `b""` means end of stream.

        Returns:
            The header once complete, else None (more data needed).
        Raises:
            ProxyProtocolError: the bytes cannot be (the start of) a valid header, or the stream
                ended inside the header.
        """
        if self._state is not _State.READING:
            raise RuntimeError(f"feed() called on a parser in state {self._state.value}")
        try:
            if not data:
                raise ProxyProtocolError("connection closed inside the PROXY header")
            self._buffer += data
            result = self._parse()
        except ProxyProtocolError:
            self._state = _State.ERROR
            raise
        if result is not None:
            header, length = result
            self._state = _State.DONE
            self.header = header
            self.remainder = bytes(self._buffer[length:])
            self._buffer.clear()
        return self.header

    def _parse(self) -> tuple[ProxyHeader, int] | None:
        buf = bytes(self._buffer)
        if buf[:1] == b"P":
            _check_prefix(buf, V1_PREFIX)
            return _parse_v1(buf)
        _check_prefix(buf, V2_SIGNATURE)
        return _parse_v2(buf)


def _check_prefix(buf: bytes, prefix: bytes) -> None:
    head = buf[: len(prefix)]
    if head != prefix[: len(head)]:
        raise ProxyProtocolError("not a PROXY protocol header")


# --- version 1 -----------------------------------------------------------------------------------


def _parse_v1(buf: bytes) -> tuple[ProxyHeader, int] | None:
    # The checks run in the order the bytes arrive, so the error does not depend on segmentation:
    # a CR followed by anything but LF, then the length limit, then the CRLF at the end.
    end = buf.find(b"\n", 0, MAX_V1_LENGTH)
    seen = buf[:end] if end >= 0 else buf[:MAX_V1_LENGTH - 1]
    cr = seen.find(b"\r")
    if 0 <= cr < len(seen) - 1:
        raise ProxyProtocolError("v1 header has a CR before its end")
    if end < 0:
        if len(buf) >= MAX_V1_LENGTH:
            raise ProxyProtocolError("v1 header too long")
        return None
    if not seen.endswith(b"\r"):
        raise ProxyProtocolError("v1 header does not end with CRLF")
    return _parse_v1_line(seen[:-1]), end + 1


def _parse_v1_line(line: bytes) -> ProxyHeader:
    """`line` is the header without CRLF."""
    if line == b"PROXY UNKNOWN" or line.startswith(b"PROXY UNKNOWN "):
        # 2.1: with UNKNOWN "the receiver must ignore anything presented before the CRLF".
        return ProxyHeader(1, "PROXY", "UNKNOWN", None, None)
    tokens = line.split(b" ")
    if len(tokens) < 2 or tokens[1] not in _V1_FAMILIES:
        raise ProxyProtocolError("v1 header has an unknown protocol family")
    if len(tokens) != 6:
        raise ProxyProtocolError("v1 header has the wrong number of fields")
    _, family, src, dst, sport, dport = tokens
    ip_type = _V1_FAMILIES[family]
    source = (_v1_address(src, ip_type, "source"), _v1_port(sport, "source"))
    destination = (_v1_address(dst, ip_type, "destination"), _v1_port(dport, "destination"))
    return ProxyHeader(1, "PROXY", family.decode(), source, destination)


def _v1_address(token: bytes, ip_type: type, which: str) -> str:
    text = token.decode("ascii", "replace")
    if "%" in text:  # ipaddress accepts IPv6 zone ids; the spec's grammar has none
        raise ProxyProtocolError(f"v1 header has a bad {which} address")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyProtocolError(f"v1 header has a bad {which} address") from None
    if not isinstance(address, ip_type):
        raise ProxyProtocolError(f"v1 header {which} address does not match the family")
    return str(address)


def _v1_port(token: bytes, which: str) -> int:
    # Decimal 0..65535; no sign, no leading zeros, no spaces (int() would accept all three).
    if not token.isdigit() or len(token) > 5 or (len(token) > 1 and token[:1] == b"0"):
        raise ProxyProtocolError(f"v1 header has a bad {which} port")
    port = int(token)
    if port > 65535:
        raise ProxyProtocolError(f"v1 header has a bad {which} port")
    return port


# --- version 2 -----------------------------------------------------------------------------------


def _parse_v2(buf: bytes) -> tuple[ProxyHeader, int] | None:
    # Validate each fixed field as soon as it has arrived, so garbage fails fast.
    if len(buf) > 12:
        version, command_bits = buf[12] >> 4, buf[12] & 0x0F
        if version != 2:
            raise ProxyProtocolError("v2 header has an unsupported version")
        if command_bits not in _V2_COMMANDS:
            raise ProxyProtocolError("v2 header has an unknown command")
    if len(buf) > 13 and _V2_COMMANDS[buf[12] & 0x0F] == "PROXY" and buf[13] not in _V2_FAMILIES:
        raise ProxyProtocolError("v2 header has an unknown address family or transport")
    if len(buf) < V2_FIXED_LENGTH:
        return None
    length = int.from_bytes(buf[14:16], "big")
    if length > MAX_V2_PAYLOAD:
        raise ProxyProtocolError("v2 header too long")
    command = _V2_COMMANDS[buf[12] & 0x0F]
    if command == "PROXY":
        family, needed = _V2_FAMILIES[buf[13]]
        if length < needed:
            raise ProxyProtocolError("v2 header too short for its address family")
    total = V2_FIXED_LENGTH + length
    if len(buf) < total:
        return None
    if command == "LOCAL":
        return ProxyHeader(2, "LOCAL", "UNKNOWN", None, None), total
    source, destination = _v2_addresses(family, buf[V2_FIXED_LENGTH:total])
    return ProxyHeader(2, "PROXY", family, source, destination), total


def _v2_addresses(family: str, block: bytes) -> tuple[tuple[str, int] | None, tuple[str, int] | None]:
    """Decode the address block; anything after it is TLVs, which we skip."""
    if family in ("TCP4", "UDP4"):
        size = 4
    elif family in ("TCP6", "UDP6"):
        size = 16
    else:  # UNKNOWN, UNIX, UNIX_DGRAM: use the real endpoints
        return None, None
    src = ipaddress.ip_address(block[:size])
    dst = ipaddress.ip_address(block[size: 2 * size])
    sport = int.from_bytes(block[2 * size: 2 * size + 2], "big")
    dport = int.from_bytes(block[2 * size + 2: 2 * size + 4], "big")
    return (str(src), sport), (str(dst), dport)


# --- trust ---------------------------------------------------------------------------------------


def is_trusted(
    peer_ip: str,
    networks: Iterable[str | ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> bool:
    """True when `peer_ip` lies in one of `networks` (CIDR strings or ipaddress networks).

    Only trusted peers may send a PROXY header; anyone else could forge their client address.
    An IPv4-mapped IPv6 peer (`::ffff:10.0.0.1`, seen on dual-stack sockets) is matched as IPv4.
    An unparsable peer address is not trusted. An invalid network string raises ValueError
    (config validation rejects those before they get here).
    """
    try:
        address = ipaddress.ip_address(peer_ip.split("%", 1)[0])
    except ValueError:
        return False
    candidates = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        candidates.append(address.ipv4_mapped)
    for net in networks:
        network = ipaddress.ip_network(net, strict=False) if isinstance(net, str) else net
        if any(c.version == network.version and c in network for c in candidates):
            return True
    return False
