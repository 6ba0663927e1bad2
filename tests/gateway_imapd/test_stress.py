"""The randomized multi-session tester (stress/) against direct Dovecot IMAP (the reference: it
checks the tester) and against the gateway (issue 13). Seeded: the seed is printed on failure;
MAILPROXY_STRESS_SEED repeats a run, MAILPROXY_STRESS_SECONDS makes it longer (default 20 s each),
MAILPROXY_STRESS_SESSIONS changes the number of sessions (default 6)."""

from __future__ import annotations

import os

import trio

from .stress.run import Target, run_stress

SECONDS = float(os.environ.get("MAILPROXY_STRESS_SECONDS", "20"))
SESSIONS = int(os.environ.get("MAILPROXY_STRESS_SESSIONS", "6"))
SEED = int(os.environ["MAILPROXY_STRESS_SEED"]) if os.environ.get("MAILPROXY_STRESS_SEED") else None


async def _stress(target: Target, allow_nil: bool = False):
    result = await trio.to_thread.run_sync(
        lambda: run_stress(target, sessions=SESSIONS, seconds=SECONDS, seed=SEED,
                           allow_nil=allow_nil))
    print(result.report())
    assert not result.errors, result.report()
    assert result.checkpoints == max(1, round(SECONDS / 2.5)), result.report()
    return result


async def test_stress_dovecot_reference(dovecot):
    user, password = dovecot.add_user()
    # Dovecot (maildir) answers NIL for bodies another session expunged (RFC 2180 4.1.2)
    await _stress(Target(dovecot.host, dovecot.imap_port, user, password), allow_nil=True)



async def test_stress_gateway(gateway):
    await _stress(Target("127.0.0.1", gateway.port, gateway.user, gateway.password))
