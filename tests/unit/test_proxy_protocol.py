"""PROXY protocol v1/v2 parser: bytes in, header or error out; whole, byte by byte, every split."""

from __future__ import annotations

import ast
import ipaddress
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.net import proxy_protocol
from proxy.net.proxy_protocol import (
    MAX_V1_LENGTH,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderParser,
    ProxyProtocolError,
    is_trusted,
)

TAIL = b"* OK IMAP ready\r\n"


def v2(ver_cmd: int, fam: int, payload: bytes, length: int | None = None) -> bytes:
    size = len(payload) if length is None else length
    return V2_SIGNATURE + bytes([ver_cmd, fam]) + struct.pack("!H", size) + payload


def inet(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed
            + struct.pack("!HH", sport, dport))


UNIX_BLOCK = b"/run/src.sock".ljust(108, b"\0") + b"/run/dst.sock".ljust(108, b"\0")

VALID = [
    pytest.param(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 993\r\n",
                 ProxyHeader(1, "PROXY", "TCP4", ("192.0.2.1", 56324), ("198.51.100.2", 993)),
                 id="v1-tcp4"),
    pytest.param(b"PROXY TCP6 2001:db8::1 2001:db8::2 0 65535\r\n",
                 ProxyHeader(1, "PROXY", "TCP6", ("2001:db8::1", 0), ("2001:db8::2", 65535)),
                 id="v1-tcp6-port-bounds"),
    pytest.param(b"PROXY TCP6 ::ffff:192.0.2.1 2001:DB8:0:0:0:0:0:2 1 143\r\n",
                 ProxyHeader(1, "PROXY", "TCP6", ("::ffff:c000:201", 1), ("2001:db8::2", 143)),
                 id="v1-tcp6-normalised"),
    pytest.param(b"PROXY UNKNOWN\r\n", ProxyHeader(1, "PROXY", "UNKNOWN", None, None),
                 id="v1-unknown-bare"),
    pytest.param(b"PROXY UNKNOWN ffff::1 ffff::2 1 2 whatever\r\n",
                 ProxyHeader(1, "PROXY", "UNKNOWN", None, None), id="v1-unknown-ignored-rest"),
    pytest.param(b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                 b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
                 ProxyHeader(1, "PROXY", "TCP6", ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
                             ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535)),
                 id="v1-longest-tcp6"),
    pytest.param(v2(0x21, 0x11, inet("192.0.2.1", "198.51.100.2", 56324, 993)),
                 ProxyHeader(2, "PROXY", "TCP4", ("192.0.2.1", 56324), ("198.51.100.2", 993)),
                 id="v2-tcp4"),
    pytest.param(v2(0x21, 0x21, inet("2001:db8::1", "2001:db8::2", 40000, 143)),
                 ProxyHeader(2, "PROXY", "TCP6", ("2001:db8::1", 40000), ("2001:db8::2", 143)),
                 id="v2-tcp6"),
    pytest.param(v2(0x21, 0x11, inet("10.1.2.3", "10.0.0.1", 1, 110)
                    + b"\x01\x00\x02h2" + b"\x04\x00\x00" + b"\x20\x00\x05\x01\x00\x00\x00\x00"),
                 ProxyHeader(2, "PROXY", "TCP4", ("10.1.2.3", 1), ("10.0.0.1", 110)),
                 id="v2-tlvs-skipped"),
    pytest.param(v2(0x20, 0x00, b""), ProxyHeader(2, "LOCAL", "UNKNOWN", None, None),
                 id="v2-local"),
    pytest.param(v2(0x20, 0x11, inet("192.0.2.1", "192.0.2.2", 1, 2)),
                 ProxyHeader(2, "LOCAL", "UNKNOWN", None, None), id="v2-local-ignores-addresses"),
    pytest.param(v2(0x20, 0xFF, b""), ProxyHeader(2, "LOCAL", "UNKNOWN", None, None),
                 id="v2-local-ignores-family"),
    pytest.param(v2(0x21, 0x00, b""), ProxyHeader(2, "PROXY", "UNKNOWN", None, None),
                 id="v2-unspec"),
    pytest.param(v2(0x21, 0x31, UNIX_BLOCK), ProxyHeader(2, "PROXY", "UNIX", None, None),
                 id="v2-unix"),
    pytest.param(v2(0x21, 0x12, inet("192.0.2.1", "192.0.2.2", 53, 53)),
                 ProxyHeader(2, "PROXY", "UDP4", ("192.0.2.1", 53), ("192.0.2.2", 53)),
                 id="v2-udp4"),
    pytest.param(v2(0x21, 0x11, inet("192.0.2.1", "192.0.2.2", 1, 2) + b"\0" * 1012),
                 ProxyHeader(2, "PROXY", "TCP4", ("192.0.2.1", 1), ("192.0.2.2", 2)),
                 id="v2-max-length"),
]

INVALID = [
    pytest.param(b"* OK hello\r\n", "not a PROXY protocol header", id="mail-greeting"),
    pytest.param(b"proxy TCP4 1.2.3.4 1.2.3.5 1 2\r\n", "not a PROXY protocol header",
                 id="v1-lowercase"),
    pytest.param(b"PROXY\tTCP4 1.2.3.4 1.2.3.5 1 2\r\n", "not a PROXY protocol header",
                 id="v1-tab"),
    pytest.param(b"\r\n\r\n\x00\r\nQUIX\n\x21\x11\x00\x0c", "not a PROXY protocol header",
                 id="v2-bad-signature"),
    pytest.param(b"\r\nA", "not a PROXY protocol header", id="v2-bad-signature-early"),
    pytest.param(b"PROXY UNKNOWN " + b"x" * 100 + b"\r\n", "v1 header too long",
                 id="v1-too-long"),
    pytest.param(b"PROXY TCP4 1.2.3.4 1.2.3.5 1 2\n", "v1 header does not end with CRLF",
                 id="v1-bare-lf"),
    pytest.param(b"PROXY TCP4 1.2.3.4\r1.2.3.5 1 2\r\n", "v1 header has a CR before its end",
                 id="v1-stray-cr"),
    pytest.param(b"PROXY TCP5 1.2.3.4 1.2.3.5 1 2\r\n", "v1 header has an unknown protocol family",
                 id="v1-bad-family"),
    pytest.param(b"PROXY UNKNOWNX\r\n", "v1 header has an unknown protocol family",
                 id="v1-unknown-glued"),
    pytest.param(b"PROXY  TCP4 1.2.3.4 1.2.3.5 1 2\r\n", "v1 header has an unknown protocol family",
                 id="v1-double-space"),
    pytest.param(b"PROXY TCP4 1.2.3.4 1.2.3.5 1  2\r\n", "v1 header has the wrong number of fields",
                 id="v1-double-space-late"),
    pytest.param(b"PROXY TCP4 1.2.3.4 1.2.3.5 1 2 \r\n", "v1 header has the wrong number of fields",
                 id="v1-trailing-space"),
    pytest.param(b"PROXY TCP4 1.2.3.4 1.2.3.5 1\r\n", "v1 header has the wrong number of fields",
                 id="v1-missing-port"),
    pytest.param(b"PROXY TCP4 1.2.3.256 1.2.3.5 1 2\r\n", "v1 header has a bad source address",
                 id="v1-bad-ipv4"),
    pytest.param(b"PROXY TCP4 01.2.3.4 1.2.3.5 1 2\r\n", "v1 header has a bad source address",
                 id="v1-ipv4-leading-zero"),
    pytest.param(b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "v1 header has a bad source address",
                 id="v1-ipv6-zone"),
    pytest.param(b"PROXY TCP4 1.2.3.4 host 1 2\r\n", "v1 header has a bad destination address",
                 id="v1-bad-destination"),
    pytest.param(b"PROXY TCP4 2001:db8::1 1.2.3.5 1 2\r\n",
                 "v1 header source address does not match the family", id="v1-mixed-tcp4"),
    pytest.param(b"PROXY TCP6 2001:db8::1 1.2.3.5 1 2\r\n",
                 "v1 header destination address does not match the family", id="v1-mixed-tcp6"),
    pytest.param(b"PROXY TCP4 1.2.3.4 1.2.3.5 65536 2\r\n", "v1 header has a bad source port",
                 id="v1-port-too-big"),
    pytest.param(b"PROXY TCP4 1.2.3.4 1.2.3.5 -1 2\r\n", "v1 header has a bad source port",
                 id="v1-port-negative"),
    pytest.param(b"PROXY TCP4 1.2.3.4 1.2.3.5 0143 2\r\n", "v1 header has a bad source port",
                 id="v1-port-leading-zero"),
    pytest.param(b"PROXY TCP4 1.2.3.4 1.2.3.5 +1 2\r\n", "v1 header has a bad source port",
                 id="v1-port-sign"),
    pytest.param(b"PROXY TCP4 1.2.3.4 1.2.3.5 1 99999\r\n", "v1 header has a bad destination port",
                 id="v1-dport-too-big"),
    pytest.param(b"PROXY TCP4 1.2.3.4 1.2.3.5 1 \xd9\xa3\r\n",
                 "v1 header has a bad destination port", id="v1-port-non-ascii-digit"),
    pytest.param(v2(0x11, 0x11, inet("1.2.3.4", "1.2.3.5", 1, 2)),
                 "v2 header has an unsupported version", id="v2-version-1"),
    pytest.param(v2(0x31, 0x11, inet("1.2.3.4", "1.2.3.5", 1, 2)),
                 "v2 header has an unsupported version", id="v2-version-3"),
    pytest.param(v2(0x22, 0x11, inet("1.2.3.4", "1.2.3.5", 1, 2)),
                 "v2 header has an unknown command", id="v2-bad-command"),
    pytest.param(v2(0x21, 0x13, inet("1.2.3.4", "1.2.3.5", 1, 2)),
                 "v2 header has an unknown address family or transport", id="v2-bad-transport"),
    pytest.param(v2(0x21, 0x41, inet("1.2.3.4", "1.2.3.5", 1, 2)),
                 "v2 header has an unknown address family or transport", id="v2-bad-family"),
    pytest.param(v2(0x21, 0x21, inet("1.2.3.4", "1.2.3.5", 1, 2)),
                 "v2 header too short for its address family", id="v2-ipv4-block-as-tcp6"),
    pytest.param(v2(0x21, 0x31, b"\0" * 100), "v2 header too short for its address family",
                 id="v2-unix-truncated-block"),
    pytest.param(v2(0x21, 0x11, b"", length=1025), "v2 header too long", id="v2-too-long"),
    pytest.param(v2(0x20, 0x00, b"", length=0xFFFF), "v2 header too long", id="v2-local-too-long"),
]

TRUNCATED = [
    pytest.param(b"PROXY TCP4 1.2.3.4 1.2.3.5 1 2\r", id="v1-no-lf"),
    pytest.param(b"PROX", id="v1-prefix"),
    pytest.param(V2_SIGNATURE[:7], id="v2-partial-signature"),
    pytest.param(V2_SIGNATURE + b"\x21\x11\x00", id="v2-partial-length"),
    pytest.param(v2(0x21, 0x11, inet("1.2.3.4", "1.2.3.5", 1, 2))[:-3], id="v2-partial-block"),
    pytest.param(v2(0x21, 0x11, inet("1.2.3.4", "1.2.3.5", 1, 2), length=40), id="v2-missing-tlvs"),
]


def feed_chunks(chunks: list[bytes]) -> tuple[ProxyHeader | None, ProxyHeaderParser, bytes]:
    """Feed chunks until a header comes out; the rest of the chunks become remainder too."""
    parser = ProxyHeaderParser()
    for i, chunk in enumerate(chunks):
        header = parser.feed(chunk)
        if header is not None:
            return header, parser, b"".join(chunks[i + 1:])
    return None, parser, b""


def splits(wire: bytes):
    yield "whole", [wire]
    yield "bytewise", [wire[i:i + 1] for i in range(len(wire))]
    for cut in range(1, len(wire)):
        yield f"split-{cut}", [wire[:cut], wire[cut:]]


@pytest.mark.parametrize("wire, expected", VALID)
def test_valid_header_whole_bytewise_and_every_split(wire: bytes, expected: ProxyHeader) -> None:
    for how, chunks in splits(wire + TAIL):
        header, parser, rest = feed_chunks(chunks)
        assert header == expected, how
        assert parser.header == expected
        assert parser.remainder + rest == TAIL, how


@pytest.mark.parametrize("wire, expected", VALID)
def test_header_alone_leaves_empty_remainder(wire: bytes, expected: ProxyHeader) -> None:
    parser = ProxyHeaderParser()
    assert parser.feed(wire) == expected
    assert parser.remainder == b""


@pytest.mark.parametrize("wire, reason", INVALID)
def test_invalid_header_raises_reason_whole_and_bytewise(wire: bytes, reason: str) -> None:
    for how, chunks in [("whole", [wire]), ("bytewise", [wire[i:i + 1] for i in range(len(wire))])]:
        parser = ProxyHeaderParser()
        with pytest.raises(ProxyProtocolError) as info:
            for chunk in chunks:
                assert parser.feed(chunk) is None
        assert info.value.reason == reason, how
        assert str(info.value) == reason


@pytest.mark.parametrize("wire, reason", INVALID)
def test_invalid_header_at_every_split(wire: bytes, reason: str) -> None:
    for cut in range(1, len(wire)):
        parser = ProxyHeaderParser()
        with pytest.raises(ProxyProtocolError) as info:
            assert parser.feed(wire[:cut]) is None
            parser.feed(wire[cut:])
        assert info.value.reason == reason, cut


@pytest.mark.parametrize("wire", TRUNCATED)
def test_truncated_header_needs_more_then_eof_is_an_error(wire: bytes) -> None:
    parser = ProxyHeaderParser()
    assert parser.feed(wire) is None
    with pytest.raises(ProxyProtocolError) as info:
        parser.feed(b"")
    assert info.value.reason == "connection closed inside the PROXY header"


def test_eof_before_any_byte_is_an_error() -> None:
    with pytest.raises(ProxyProtocolError, match="connection closed inside the PROXY header"):
        ProxyHeaderParser().feed(b"")


def test_garbage_fails_on_first_byte() -> None:
    with pytest.raises(ProxyProtocolError, match="not a PROXY protocol header"):
        ProxyHeaderParser().feed(b"a")


def test_v1_limit_is_107_bytes_including_crlf() -> None:
    exact = b"PROXY UNKNOWN " + b"x" * (MAX_V1_LENGTH - 16) + b"\r\n"
    assert len(exact) == MAX_V1_LENGTH
    assert ProxyHeaderParser().feed(exact).family == "UNKNOWN"
    with pytest.raises(ProxyProtocolError, match="v1 header too long"):
        ProxyHeaderParser().feed(exact[:-2] + b"x\r\n")
    # Without a line end the parser gives up after 107 bytes, without waiting for more.
    with pytest.raises(ProxyProtocolError, match="v1 header too long"):
        ProxyHeaderParser().feed(b"PROXY UNKNOWN " + b"x" * 93)


def test_v2_header_is_rejected_as_soon_as_its_length_is_known() -> None:
    parser = ProxyHeaderParser()
    with pytest.raises(ProxyProtocolError, match="v2 header too long"):
        parser.feed(V2_SIGNATURE + b"\x21\x11\x04\x01")


def test_feeding_after_done_or_error_is_a_local_bug() -> None:
    parser = ProxyHeaderParser()
    parser.feed(b"PROXY UNKNOWN\r\n")
    with pytest.raises(RuntimeError):
        parser.feed(b"more")
    broken = ProxyHeaderParser()
    with pytest.raises(ProxyProtocolError):
        broken.feed(b"GET / HTTP/1.1\r\n")
    with pytest.raises(RuntimeError):
        broken.feed(b"more")


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=40),
                          st.sampled_from([b"PROXY ", b"TCP4 ", b"TCP6 ", b"1.2.3.4 ", b"::1 ",
                                           b"65535 ", b"\r\n", V2_SIGNATURE, b"\x21\x11\x00\x0c",
                                           b"\x20\x00\x00\x00", b"\x21\x21\x00\x24"])),
                max_size=12))
def test_any_bytes_give_a_header_none_or_protocol_error(chunks: list[bytes]) -> None:
    parser = ProxyHeaderParser()
    try:
        for chunk in chunks:
            result = parser.feed(chunk)
            assert result is None or isinstance(result, ProxyHeader)
            if result is not None:
                assert result.version in (1, 2)
                assert result.command in ("PROXY", "LOCAL")
                for end in (result.source, result.destination):
                    assert end is None or (ipaddress.ip_address(end[0]) and 0 <= end[1] <= 65535)
                break
    except ProxyProtocolError as exc:
        assert exc.reason


@pytest.mark.parametrize("peer, networks, expected", [
    ("10.1.2.3", ["10.0.0.0/8"], True),
    ("10.1.2.3", ["192.168.0.0/16", "10.1.2.3/32"], True),
    ("11.0.0.1", ["10.0.0.0/8"], False),
    ("::ffff:10.0.0.7", ["10.0.0.0/8"], True),
    ("2001:db8::5", ["2001:db8::/32"], True),
    ("2001:db8::5", ["10.0.0.0/8"], False),
    ("10.0.0.1", ["::/0"], False),
    ("10.0.0.1", [ipaddress.ip_network("10.0.0.0/24")], True),
    ("10.0.0.1", ["10.0.0.1/24"], True),  # host bits set: accepted like config.py does
    ("not-an-ip", ["0.0.0.0/0"], False),
    ("10.0.0.1", [], False),
])
def test_is_trusted(peer: str, networks: list, expected: bool) -> None:
    assert is_trusted(peer, networks) is expected


def test_module_is_sans_io() -> None:
    tree = ast.parse(Path(proxy_protocol.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"trio", "socket", "ssl", "asyncio"}, imported


def test_importing_the_parser_loads_no_io_module() -> None:
    """Also transitively: a fresh interpreter that imports the parser has no trio/socket/ssl."""
    import subprocess
    import sys

    code = ("import sys, proxy.net.proxy_protocol; "
            "print(sorted(m for m in ('trio', 'socket', 'ssl', 'asyncio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]", out.stdout
