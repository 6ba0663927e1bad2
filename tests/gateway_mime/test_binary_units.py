"""BINARY decoding (proxy/gateway/binary.py) on small messages, exact bytes: what the differential
test against Dovecot (tests/gateway_imapd/test_binary_differential.py) covers on the corpus, here
one rule per test."""

from __future__ import annotations

import pytest

from proxy.gateway import mime
from proxy.gateway.binary import InvalidData, UnknownCte, binary_section
from proxy.gateway.sections import SectionError, find_part, part_path


def _binary(raw: bytes, section: bytes = b"1"):
    return binary_section(raw, find_part(mime.parse(raw), part_path(section)), whole=not section)


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


@pytest.mark.parametrize("section", [b"0", b"1.0", b"TEXT", b"1.MIME", b"1." + b"9" * 30, b"9" * 5000])
def test_binary_sections_are_part_numbers(section):
    with pytest.raises(SectionError):
        part_path(section)
