"""Connection states (RFC 3501 3) and their transitions: the only place that decides them.

    NOT_AUTHENTICATED --LOGIN/AUTHENTICATE--> AUTHENTICATED --SELECT/EXAMINE--> SELECTED
    SELECTED --SELECT/EXAMINE--> SELECTED       SELECTED --CLOSE/UNSELECT, failed SELECT--> AUTHENTICATED
    AUTHENTICATED, SELECTED --UNAUTHENTICATE--> NOT_AUTHENTICATED (RFC 8437 3)
    any --LOGOUT, BYE--> LOGOUT

In the gateway the NOT_AUTHENTICATED dialogue is the relay's `ImapFront` (it checks credentials
against POP3 first); an `ImapSession` starts AUTHENTICATED, and once it is back in
NOT_AUTHENTICATED (UNAUTHENTICATE) it ends and hands the connection back to a new front.
Which command is legal in which state is the `states` field of each entry of
`commands.COMMANDS`.
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


class Trigger(enum.Enum):
    LOGIN = "login"
    SELECT = "select"          # SELECT or EXAMINE succeeded
    SELECT_FAILED = "select_failed"   # RFC 3501 6.3.1: a failed SELECT leaves no mailbox selected
    CLOSE = "close"            # CLOSE or UNSELECT
    UNAUTHENTICATE = "unauthenticate"   # RFC 8437
    LOGOUT = "logout"


NOT_AUTHENTICATED, AUTHENTICATED, SELECTED, LOGOUT = State
ANY = frozenset({NOT_AUTHENTICATED, AUTHENTICATED, SELECTED})
AUTH = frozenset({AUTHENTICATED, SELECTED})
SEL = frozenset({SELECTED})
PRE = frozenset({NOT_AUTHENTICATED})

TRANSITIONS: dict[tuple[State, Trigger], State] = {
    (NOT_AUTHENTICATED, Trigger.LOGIN): AUTHENTICATED,
    (AUTHENTICATED, Trigger.SELECT): SELECTED,
    (SELECTED, Trigger.SELECT): SELECTED,
    (AUTHENTICATED, Trigger.SELECT_FAILED): AUTHENTICATED,
    (SELECTED, Trigger.SELECT_FAILED): AUTHENTICATED,
    (SELECTED, Trigger.CLOSE): AUTHENTICATED,
    **{(state, Trigger.UNAUTHENTICATE): NOT_AUTHENTICATED for state in AUTH},
    **{(state, Trigger.LOGOUT): LOGOUT for state in ANY},
}


class LocalProtocolError(RuntimeError):
    """Our own code asked for a transition the table does not have: a bug, never client input."""


def next_state(state: State, trigger: Trigger) -> State:
    try:
        return TRANSITIONS[state, trigger]
    except KeyError:
        raise LocalProtocolError(f"no transition from {state.value} on {trigger.value}") from None
