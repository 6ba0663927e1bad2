"""The fetcher's UIDL and LIST listing parsers (RFC 1939 5, 7): exact results for good and bad
lines, and a big listing parsed in a worker thread, never on the event loop."""

from __future__ import annotations

import threading

import pytest

from proxy.gateway import pop3_listing
from proxy.gateway.pop3_listing import parse_list_listing, parse_uidl_listing, parsed
from proxy.gateway.workers import Workers
from proxy.session.failures import Failure
from proxy.session.upstream import UpstreamError


def test_uidl_listing_in_order_repeated_uidls_by_digest():
    """A UIDL shared by two messages leaves both to the digest (None: the server may swap them
    next time); a message number listed again is dropped (its message would be fetched twice)."""
    listing = b"1 whqtswO00WBw418f9t5JxYwZ\r\n2 QhdPYR:00WBw1Ph7x7\r\n3 " + b"~" * 70 + \
        b"\r\n4 whqtswO00WBw418f9t5JxYwZ\r\n2 other\r\n"
    assert parse_uidl_listing(listing) == [(1, None), (2, "QhdPYR:00WBw1Ph7x7"), (3, "~" * 70),
                                           (4, None)]


@pytest.mark.parametrize("line", [
    b"1 ", b"1 id extra", b"1  id", b"1 " + b"a" * 71, b"1 caf\xc3\xa9", b"1 tab\tid", b"1 \x7f",
])
def test_a_uidl_breaking_rfc_1939_7_leaves_its_message_to_the_digest(line):
    """RFC 1939 7: 1 to 70 characters 0x21-0x7E; a message whose unique-id is not has None (the
    fetcher keys it by digest) instead of failing the account's every sync."""
    assert parse_uidl_listing(b"2 good\r\n" + line + b"\r\n") == [(2, "good"), (1, None)]


@pytest.mark.parametrize("line", [b"1", b"x id", b"-1 id", b"\xd9\xa1 id"])   # an Arabic-Indic one
def test_a_uidl_line_without_a_message_number_is_a_protocol_failure(line):
    with pytest.raises(UpstreamError) as info:
        parse_uidl_listing(b"1 good\r\n" + line + b"\r\n")
    assert info.value.failure is Failure.PROTOCOL


def test_list_listing_numbers():
    assert parse_list_listing(b"1 120\r\n2 3400\r\n") == [1, 2]


@pytest.mark.parametrize("parse", [parse_uidl_listing, parse_list_listing])
def test_a_message_number_past_its_bound_is_a_protocol_failure_not_a_crash(parse):
    """An upstream's message number of 5,000 digits: int() would raise ValueError (Python
    refuses more than 4,300 digits), a crash of the sync instead of a malformed line."""
    bound = pop3_listing.MAX_NUMBER_DIGITS
    longest = b"9" * bound
    assert parse(longest + b" id\r\n") == (
        [(int(longest), "id")] if parse is parse_uidl_listing else [int(longest)])
    for digits in (bound + 1, 5000):
        with pytest.raises(UpstreamError) as info:
            parse(b"1 good\r\n" + b"9" * digits + b" id\r\n")
        assert info.value.failure is Failure.PROTOCOL


async def test_big_listing_is_parsed_in_a_worker_thread():
    loop_thread = threading.get_ident()
    seen: list[int] = []

    def parse(listing: bytes) -> list[tuple[int, str]]:
        seen.append(threading.get_ident())
        return parse_uidl_listing(listing)

    small = b"".join(b"%d id-%d\r\n" % (n, n) for n in range(1, 11))
    big = b"".join(b"%d id-%d\r\n" % (n, n) for n in range(1, 10_001))
    assert len(small) <= pop3_listing.LISTING_IN_THREAD < len(big)
    workers = Workers.build()
    assert await parsed(parse, small, workers) == [(n, f"id-{n}") for n in range(1, 11)]
    assert await parsed(parse, big, workers) == [(n, f"id-{n}") for n in range(1, 10_001)]
    assert seen[0] == loop_thread and seen[1] != loop_thread
