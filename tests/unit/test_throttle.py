"""Auth-failure throttling and connection limits: pure logic, driven with a fake clock."""

from proxy.config import AuthThrottle
from proxy.net.limits import ConnectionLimiter
from proxy.net.throttle import Throttle


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def make(**kw):
    clock = Clock()
    return Throttle(AuthThrottle(**kw), clock), clock


def test_delay_grows_then_caps():
    throttle, _ = make(base_delay=0.5, max_delay=4.0, block_after=100)
    delays = [throttle.failure("192.0.2.1", "alice") for _ in range(6)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_blocks_after_limit_and_releases_after_block_for():
    throttle, clock = make(block_after=3, block_for=60, window=300)
    for _ in range(3):
        throttle.failure("192.0.2.1", "alice")
    assert throttle.blocked("192.0.2.1", "bob")        # the IP is blocked
    assert not throttle.blocked("198.51.100.2", "alice")   # the user from elsewhere is not
    assert not throttle.blocked("198.51.100.2", "bob")  # others are unaffected
    clock.now += 61
    assert not throttle.blocked("192.0.2.1", "alice")


def test_user_from_one_ip_then_everywhere_only_at_the_higher_threshold():
    """Issue 14: ten failures used to lock a user out from every IP (an easy denial of service).
    Now the user is refused from the guessing IP at block_after, and everywhere only at
    user_block_after failures from all IPs together."""
    throttle, _ = make(block_after=3, user_block_after=7, block_for=60, window=300)
    for _ in range(3):
        throttle.failure("192.0.2.1", "alice")
    assert throttle.blocked("192.0.2.1", "alice")
    assert not throttle.blocked("198.51.100.2", "alice")
    for n in range(4):   # from four more IPs, one failure each (no IP reaches block_after)
        throttle.failure(f"203.0.113.{n}", "alice")
    assert throttle.blocked("198.51.100.2", "alice")   # 7 in all: refused everywhere
    assert not throttle.blocked("198.51.100.2", "bob")


def test_delay_is_the_clients_not_the_users():
    throttle, _ = make(base_delay=1, max_delay=100, block_after=100, user_block_after=100)
    for n in range(5):
        throttle.failure(f"203.0.113.{n}", "alice")
    assert throttle.failure("198.51.100.2", "alice") == 1   # another client: no inherited delay


def test_failures_outside_the_window_are_forgotten():
    throttle, clock = make(block_after=3, window=10, base_delay=1, max_delay=100)
    throttle.failure("192.0.2.1", "alice")
    throttle.failure("192.0.2.1", "alice")
    clock.now += 11
    assert throttle.failure("192.0.2.1", "alice") == 1  # counts from one again
    assert not throttle.blocked("192.0.2.1", "alice")


def test_success_clears_the_user_not_the_ip():
    throttle, _ = make(base_delay=1, max_delay=100, block_after=100)
    throttle.failure("192.0.2.1", "alice")
    throttle.failure("192.0.2.1", "alice")
    throttle.success("Alice", "192.0.2.1")
    assert throttle.failure("198.51.100.9", "alice") == 1
    assert throttle.failure("192.0.2.1", "carol") == 4  # the IP still has 3 failures before


def test_disabled_never_delays_or_blocks():
    throttle, _ = make(enabled=False, block_after=1)
    assert throttle.failure("192.0.2.1", "alice") == 0
    assert not throttle.blocked("192.0.2.1", "alice")


def test_connection_limiter_totals_and_per_ip():
    limiter = ConnectionLimiter()
    assert limiter.admit("a", max_total=3, max_per_ip=2) is None
    assert limiter.admit("a", 3, 2) is None
    assert limiter.admit("a", 3, 2) == "max_connections_per_ip"
    assert limiter.admit("b", 3, 2) is None
    assert limiter.admit("c", 3, 2) == "max_connections"
    limiter.release("a")
    assert limiter.admit("c", 3, 2) is None
    assert limiter.total == 3 and dict(limiter.per_ip) == {"a": 1, "b": 1, "c": 1}
