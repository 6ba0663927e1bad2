"""One mailbox, one account: user names canonicalized per `gateway.user_case` before they name
a store account, a fetcher or the upstream login, so `BOB`/`Bob` and `a@B`/`A@b` are one
account with one copy of the mail (not one per spelling, with split flags).

* ``lower`` (default): the whole name lowered. Domains are case-insensitive (RFC 5321 2.4);
  local parts may in principle be case-sensitive, but POP3 servers treat them as
  case-insensitive in practice (Dovecot's default ``auth_username_format = %Lu`` lowers the
  whole name), so for them this is exactly "the local part as the upstream treats it".
* ``domain``: only the part after the last "@" lowered, for an upstream whose local parts are
  case-sensitive.
* ``preserve``: the name as typed (every spelling its own account: the old behaviour).
"""

from __future__ import annotations

from typing import Literal

__all__ = ["UserCase", "canonical_user"]

UserCase = Literal["lower", "domain", "preserve"]


def canonical_user(user: str, mode: UserCase = "lower") -> str:
    if mode == "lower":
        return user.lower()
    if mode == "domain":
        local, at, domain = user.rpartition("@")
        return local + at + domain.lower() if at else user
    return user
