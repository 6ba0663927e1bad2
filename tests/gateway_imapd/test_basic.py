"""Smoke: login against POP3, ingest, SELECT and FETCH with imaplib."""

from __future__ import annotations

import trio

from .conftest import message


async def test_login_select_fetch(gateway):
    for n in range(3):
        gateway.deliver(message(n))

    def client():
        c = gateway.imaplib()
        typ, data = c.select("INBOX")
        assert typ == "OK" and data == [b"3"], data
        typ, data = c.fetch("1:*", "(FLAGS UID RFC822.SIZE ENVELOPE)")
        assert typ == "OK", data
        typ, data = c.fetch("2", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert data[0][1] == b"Subject: message 1\r\n\r\n", data
        c.logout()
        return data

    print(await trio.to_thread.run_sync(client))
