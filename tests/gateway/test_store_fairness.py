"""store/fairness.py: an account's calls hold at most its share of the pool, others pass, and the
per-account limiters do not outlive the calls (unit tests over trio only); the setting's
config checks."""

from __future__ import annotations

import pytest
import trio
import trio.testing
import yaml

from proxy import config as config_mod
from proxy.store.fairness import AccountShares, acting_for
from proxy.store.postgres import default_per_account

from .helpers import config_dict


async def test_an_account_holds_at_most_its_share_and_others_pass(nursery):
    shares = AccountShares(2)
    release = trio.Event()
    inside: list[str] = []

    async def call(account: int | None, name: str) -> None:
        if account is None:
            async with shares.slot():
                inside.append(name)
                await release.wait()
            return
        with acting_for(account):
            async with shares.slot():
                inside.append(name)
                await release.wait()

    for n in range(5):
        nursery.start_soon(call, 1, f"a{n}")
    await trio.testing.wait_all_tasks_blocked()
    nursery.start_soon(call, 2, "b0")
    nursery.start_soon(call, None, "feed")
    await trio.testing.wait_all_tasks_blocked()
    # account 1 got two tokens and queued the rest behind its own; the others went past
    assert sorted(name[0] for name in inside) == ["a", "a", "b", "f"], inside
    assert len(shares) == 2
    release.set()
    await trio.testing.wait_all_tasks_blocked()
    assert sorted(inside) == ["a0", "a1", "a2", "a3", "a4", "b0", "feed"]
    assert len(shares) == 0                          # nothing kept for idle accounts


async def test_a_cancelled_waiter_leaves_no_limiter_behind():
    shares = AccountShares(1)
    with acting_for(7):
        async with shares.slot():
            with trio.move_on_after(0) as scope:
                async with shares.slot():
                    raise AssertionError("got a second token of a share of one")
            assert scope.cancelled_caught
    assert len(shares) == 0


async def test_acting_for_is_scoped_and_inherited_by_started_tasks(nursery):
    shares = AccountShares(1)
    seen: list[int] = []

    async def record() -> None:
        async with shares.slot():
            seen.extend(shares._shares)

    with acting_for(3):
        with acting_for(4):
            await record()
        await record()
        nursery.start_soon(record)      # a task started here acts for 3 as well
    await trio.testing.wait_all_tasks_blocked()
    await record()                      # for no account: no limiter at all
    assert seen == [4, 3, 3]
    with pytest.raises(ValueError):
        AccountShares(0)


def test_default_share_is_half_the_pool_and_the_setting_is_checked(tmp_path):
    assert [default_per_account(n) for n in (1, 2, 3, 10)] == [1, 1, 1, 5]
    cfg = config_dict(1, str(tmp_path / "s.db"))
    assert config_mod.loads(yaml.safe_dump(cfg)).gateway.store_pool_per_account is None
    cfg["gateway"].update(store_pool_size=4, store_pool_per_account=3)
    assert config_mod.loads(yaml.safe_dump(cfg)).gateway.store_pool_per_account == 3
    for wrong in (0, 5):
        cfg["gateway"]["store_pool_per_account"] = wrong
        with pytest.raises(config_mod.ConfigError) as info:
            config_mod.loads(yaml.safe_dump(cfg))
        [error] = info.value.errors
        assert "gateway.store_pool_per_account" in str(error)
        assert "expected 1 to store_pool_size (4) connections" in str(error)
