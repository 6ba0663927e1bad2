"""The SQL of account maintenance (`account_summaries`, `delete_account`, `record_sync`, the
usage counters), shared by the SQLite and PostgreSQL stores: the two schemas differ only in the
user column's name (`user` / `username`) and the parameter placeholder (`?` / `%s`), filled in by
`summary_select`, `delete_statements` and `record_sync`.

Usage counters (issue 17): `accounts.usage_bytes` and `usage_messages` are what the account's
messages hold (RFC 9208 STORAGE and MESSAGE: every copy counts), kept by a trigger on `messages`
(each schema's migration) in the transaction of every insert and delete, whichever store call
makes it; `RECOUNT_USAGE` computes them from the rows (the migration that adds them, and
`gateway migrate` at its end)."""

from __future__ import annotations

_SUMMARY_SELECT = (
    "SELECT a.id, a.upstream, a.{user}, a.usage_messages, "
    "(SELECT coalesce(sum(b.size), 0) FROM bodies b WHERE b.account_id = a.id), "
    "(SELECT max(u.fetched_at) FROM uidls u WHERE u.account_id = a.id), "
    "a.last_sync_at, a.last_error, a.last_error_at "
    "FROM accounts a ORDER BY a.{user}, a.upstream")

# In this order: messages before the bodies they point at (no ON DELETE CASCADE there); the
# change log has no foreign key; mailboxes, bodies, UIDLs and subscriptions follow the account
# (ON DELETE CASCADE).
_DELETE_ACCOUNT = (
    "DELETE FROM messages WHERE mailbox_id IN (SELECT id FROM mailboxes WHERE account_id = {p})",
    "DELETE FROM changes WHERE account_id = {p}",
    "DELETE FROM accounts WHERE id = {p}",
)

# A success sets last_sync_at and clears the error; a failure keeps last_sync_at.
_RECORD_SUCCESS = "UPDATE accounts SET last_sync_at = {p}, last_error = NULL, last_error_at = NULL " \
    "WHERE id = {p}"
_RECORD_ERROR = "UPDATE accounts SET last_error = {p}, last_error_at = {p} WHERE id = {p}"
RECOUNT_USAGE = (
    "UPDATE accounts SET "
    "usage_bytes = (SELECT coalesce(sum(b.size), 0) FROM messages m "
    " JOIN mailboxes mb ON mb.id = m.mailbox_id JOIN bodies b ON b.id = m.body_id "
    " WHERE mb.account_id = accounts.id), "
    "usage_messages = (SELECT count(*) FROM messages m JOIN mailboxes mb ON mb.id = m.mailbox_id "
    " WHERE mb.account_id = accounts.id)")
USAGE_SELECT = "SELECT usage_bytes, usage_messages FROM accounts WHERE id = {p}"
ERROR_MAX_CHARS = 200   # the stored reason is cut there: a label and a one-line message


def summary_select(user_column: str) -> str:
    """(id, upstream, user, messages, bytes, last fetch, last sync, last error, its time) per
    account, by user then upstream."""
    return _SUMMARY_SELECT.format(user=user_column)


def delete_statements(placeholder: str) -> tuple[str, ...]:
    """The statements deleting one account (their one parameter: the account id), to run in one
    transaction."""
    return tuple(statement.format(p=placeholder) for statement in _DELETE_ACCOUNT)


def record_sync(placeholder: str, account_id: int, error: str | None,
                now: float) -> tuple[str, tuple[object, ...]]:
    """The statement and parameters recording one sync's outcome (`error` None: a success)."""
    if error is None:
        return _RECORD_SUCCESS.format(p=placeholder), (now, account_id)
    return _RECORD_ERROR.format(p=placeholder), (error[:ERROR_MAX_CHARS], now, account_id)
