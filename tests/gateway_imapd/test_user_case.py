"""Issue 14, item 4: case variants of a user name are one account (gateway.user_case, default
`lower`); the upstream Dovecot lowers names itself (auth_username_format %Lu), as most do."""

from __future__ import annotations

import trio

from proxy.gateway.users import canonical_user

from .conftest import message
from .test_condstore import Raw


def test_canonical_user_modes():
    assert [canonical_user("Bob@Example.ORG", mode) for mode in ("lower", "domain", "preserve")] == \
        ["bob@example.org", "Bob@example.org", "Bob@Example.ORG"]
    assert canonical_user("BOB", "domain") == "BOB"


async def test_case_variants_share_one_account(gateway):
    gateway.deliver(message(1))
    local, _, domain = gateway.user.partition("@")
    spellings = [gateway.user.upper(), f"{local.capitalize()}@{domain.upper()}", gateway.user]

    def run():
        seen = []
        for n, name in enumerate(spellings):
            client = Raw(gateway.port, name, gateway.password)
            untagged, _ = client.cmd("SELECT INBOX")
            exists = [line for line in untagged if line.endswith(b" EXISTS")]
            flags = client.cmd("FETCH 1:* (FLAGS)")[0]
            seen.append((exists, flags))
            client.cmd(f"APPEND INBOX (\\Flagged) {{{len(message(10 + n))}+}}\r\n"
                       + message(10 + n).decode())
            client.cmd("STORE 1 +FLAGS (\\Seen)")
            client.close()
        return seen

    seen = await trio.to_thread.run_sync(run)
    assert [exists for exists, _ in seen] == [[b"* 1 EXISTS"], [b"* 2 EXISTS"], [b"* 3 EXISTS"]]
    assert seen[2][1][0] == b"* 1 FETCH (FLAGS (\\Seen))"
    # one account row, under the canonical name (asked through the Store, so on both backends)
    (upstream,) = gateway.config.upstreams
    stored = [name for name in sorted(set(spellings) | {gateway.user.lower()})
              if await gateway.service.store.get_account(upstream, name) is not None]
    assert stored == [gateway.user.lower()]
