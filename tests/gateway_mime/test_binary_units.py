"""BINARY decoding (proxy/gateway/binary.py) on small messages, exact bytes: what the differential
test against Dovecot (tests/gateway_imapd/test_binary_differential.py) covers on the corpus, here
one rule per test."""

from __future__ import annotations

import pytest

from proxy.gateway import mime
from proxy.gateway.binary import InvalidData, UnknownCte, binary_section
from proxy.gateway.imapd._binary import _section
from proxy.gateway.sections import SectionError, find_part, split_section


def _binary(raw: bytes, section: bytes = b"1"):
    return binary_section(raw, find_part(mime.parse(raw), split_section(section)[0]), whole=not section)


def test_base64_with_nul_is_a_literal8():
    decoded = _binary(b"Content-Transfer-Encoding: BASE64\r\n\r\nSGVs\r\nbG8AIQ==\r\n")
    assert (decoded.data, decoded.literal8) == (b"Hello\0!", True)


def test_quoted_printable_drops_trailing_space_and_soft_breaks():
    raw = b"Content-Transfer-Encoding: quoted-printable\r\n\r\na=3Db  \r\nsoft=  \r\nbreak=20\r\n"
    assert _binary(raw).data == b"a=b\r\nsoftbreak \r\n"


def test_whole_message_says_binary_in_decoded_headers_only():
    raw = (b"Subject: s\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
           b"Content-Transfer-Encoding: base64\r\nX-After: 1\r\n\r\nAA==\r\n--B\r\n\r\nplain\n--B--\r\n")
    decoded = _binary(raw, b"")
    assert decoded.data == (b"Subject: s\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
                            b"X-After: 1\r\nContent-Transfer-Encoding: binary\r\n\r\n\0\r\n--B\r\n"
                            b"\r\nplain\r\n--B--\r\n")
    assert decoded.literal8


def test_undecoded_text_is_a_plain_literal_and_missing_part_is_empty():
    assert (_binary(b"Subject: s\r\n\r\nplain\n").data, _binary(b"Subject: s\r\n\r\nplain\n").literal8) \
        == (b"plain\r\n", False)
    assert _binary(b"Subject: s\r\n\r\nplain\r\n", b"2").data == b""


@pytest.mark.parametrize("raw, error", [
    (b"Content-Transfer-Encoding: x-uuencode\r\n\r\nabc\r\n", UnknownCte),
    (b"Content-Transfer-Encoding:\r\n\r\nabc\r\n", UnknownCte),
    (b"Content-Transfer-Encoding: base64\r\n\r\nSGVsbG8\r\n", InvalidData),
    (b"Content-Transfer-Encoding: base64\r\n\r\nSG!sbG8=\r\n", InvalidData),
    (b"Content-Transfer-Encoding: quoted-printable\r\n\r\nbad =ZZ escape\r\n", InvalidData),
])
def test_undecodable_parts_are_refused(raw, error):
    with pytest.raises(error):
        _binary(raw)


@pytest.mark.parametrize("section", [b"0", b"1.0", b"MIME", b"FOO", b"1." + b"9" * 30, b"9" * 5000])
def test_bad_binary_sections_are_refused(section):
    with pytest.raises(SectionError):
        split_section(section)


_B64 = (b"From: a@example.com\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=X\r\n"
        b"\r\n--X\r\nContent-Transfer-Encoding: base64\r\n\r\nSGk=\r\n--X\r\n"
        b"Content-Type: message/rfc822\r\n\r\nSubject: in\r\nContent-Transfer-Encoding: base64\r\n"
        b"\r\nSW4AMQ==\r\n--X--\r\n")


@pytest.mark.parametrize(("section", "data", "literal8"), [
    # RFC 3516 6 has part numbers only; these answer as Dovecot 2.3 does (the differential
    # test compares them on the corpus): TEXT decoded, headers as BODY[] sends them
    (b"TEXT", b"--X\r\nContent-Transfer-Encoding: binary\r\n\r\nHi\r\n--X\r\nContent-Type: "
              b"message/rfc822\r\n\r\nSubject: in\r\nContent-Transfer-Encoding: binary\r\n\r\nIn\x001"
              b"\r\n--X--\r\n", True),
    (b"2.TEXT", b"In\x001", True),
    (b"1.TEXT", b"", False),
    (b"2.HEADER", b"Subject: in\r\nContent-Transfer-Encoding: base64\r\n\r\n", False),
    (b"1.MIME", b"Content-Transfer-Encoding: base64\r\n\r\n", False),
    (b"HEADER.FIELDS (FROM)", b"From: a@example.com\r\n\r\n", False),
])
def test_text_and_header_sections(section, data, literal8):
    decoded = _section(_B64, mime.parse(_B64), section)
    assert (decoded.data, decoded.literal8) == (data, literal8)
