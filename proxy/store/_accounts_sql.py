"""The SQL of account maintenance (`account_summaries`, `delete_account`), shared by the SQLite and
PostgreSQL stores: the two schemas differ only in the user column's name (`user` / `username`)
and the parameter placeholder (`?` / `%s`), filled in by `summary_select` and `delete_statements`."""

from __future__ import annotations

_SUMMARY_SELECT = (
    "SELECT a.id, a.upstream, a.{user}, "
    "(SELECT count(*) FROM messages m JOIN mailboxes mb ON mb.id = m.mailbox_id "
    " WHERE mb.account_id = a.id), "
    "(SELECT coalesce(sum(b.size), 0) FROM bodies b WHERE b.account_id = a.id), "
    "(SELECT max(u.fetched_at) FROM uidls u WHERE u.account_id = a.id) "
    "FROM accounts a ORDER BY a.{user}, a.upstream")

# In this order: messages before the bodies they point at (no ON DELETE CASCADE there); the
# change log has no foreign key; mailboxes, bodies, UIDLs and subscriptions follow the account
# (ON DELETE CASCADE).
_DELETE_ACCOUNT = (
    "DELETE FROM messages WHERE mailbox_id IN (SELECT id FROM mailboxes WHERE account_id = {p})",
    "DELETE FROM changes WHERE account_id = {p}",
    "DELETE FROM accounts WHERE id = {p}",
)


def summary_select(user_column: str) -> str:
    """(id, upstream, user, messages, bytes, last fetch) per account, by user then upstream."""
    return _SUMMARY_SELECT.format(user=user_column)


def delete_statements(placeholder: str) -> tuple[str, ...]:
    """The statements deleting one account (their one parameter: the account id), to run in one
    transaction."""
    return tuple(statement.format(p=placeholder) for statement in _DELETE_ACCOUNT)
