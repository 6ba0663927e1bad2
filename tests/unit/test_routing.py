"""proxy/routing: the auth_http client against a real (small) HTTP service, the reply parser
as a table, the cache, the chain's fall-through and the pool order."""

from __future__ import annotations

import socket
import textwrap

import pytest
import trio

from proxy import config as config_mod
from proxy.config import LookupCache
from proxy.metrics import LOOKUP_CACHE, LOOKUP_RESULTS, Metrics
from proxy.routing import pool
from proxy.routing.answers import LoginQuery, LookupUnavailable, Refusal, Target
from proxy.routing.cache import AnswerCache
from proxy.routing.chain import Lookups, upstream_for
from proxy.routing.http_lookup import WaitAndRetry, escape, parse_reply, request_headers
from support.authservice import Account, AuthService

BASE = """
listeners:
  - {name: imap, protocol: imap, address: "127.0.0.1:1143"}
upstreams:
  main: {host: 10.0.0.1, imap: {port: 143, tls: starttls}}
  pool: {hosts: [10.0.1.1, 10.0.1.2], imap: {port: 143}}
"""


def load(extra: str) -> config_mod.Config:
    return config_mod.loads(BASE + textwrap.dedent(extra))


def query(user: str = "ann@example.com", password: bytes = b"secret", attempt: int = 1,
          protocol: str = "imap") -> LoginQuery:
    return LoginQuery(protocol, user, password, "plain", attempt, "192.0.2.7")


# -- config -----------------------------------------------------------------------------------


def test_config_lookups_and_pools() -> None:
    config = load("""
        lookups:
          - http: {url: "http://127.0.0.1:9/auth", upstream: main, timeout: 2s,
                   cache: {ttl: 30s, negative_ttl: 0, max_entries: 5}}
        """)
    (entry,) = config.lookups
    assert entry.kind == "http"
    assert (entry.lookup.url, entry.lookup.timeout, entry.lookup.upstream) == (
        "http://127.0.0.1:9/auth", 2.0, "main")
    assert entry.lookup.cache == LookupCache(ttl=30.0, negative_ttl=0.0, max_entries=5)
    assert config.routes == ()
    assert config.upstreams["pool"].pool == ("10.0.1.1", "10.0.1.2")
    assert config.upstreams["pool"].host == "10.0.1.1"
    assert config.upstreams["main"].pool == ("10.0.0.1",)


@pytest.mark.parametrize("extra, message", [
    ("lookups: [{ldap2: {url: x}}]", "line 7: lookups[0]: a lookup is {http: {...}} or {ldap: {...}}"),
    ("lookups: [{http: {url: x, nope: 1}}]", "line 7: unknown key 'nope' in lookups[0].http"),
    ("lookups: [{http: {url: x, upstream: gone}}]",
     "line 7: lookups[0].http.upstream: unknown upstream 'gone'"),
    ("lookups: [{http: {url: x, name: main}}]",
     "line 7: lookups[0].http.name: lookup name 'main' is already used by a lookup or an upstream"),
    ("", "line 2: routes: at least one route (or a lookup) is needed"),
])
def test_config_errors(extra: str, message: str) -> None:
    with pytest.raises(config_mod.ConfigError) as info:
        config_mod.loads(BASE + extra + "\n")
    assert info.value.errors == [message]


def test_config_host_or_hosts() -> None:
    text = BASE.replace("upstreams:", "upstreams:\n  x: {host: a, hosts: [b], imap: {port: 1}}")
    with pytest.raises(config_mod.ConfigError) as info:
        config_mod.loads(text + "routes: [{match: '*', upstream: main}]\n")
    assert info.value.errors == [
        "line 5: upstreams.x: give host (one server) or hosts (a pool), not both"]


# -- the protocol, as a table -------------------------------------------------------------------


def test_escape_is_nginx_mail_auth() -> None:
    assert escape(b"plain") == b"plain"
    assert escape(b"a b%c\x00\x1f\x7f+\xc3\xa9") == b"a%20b%25c%00%1F\x7f+\xc3\xa9"


def test_request_headers_in_nginx_order() -> None:
    q = LoginQuery("pop3", "ann smith", b"p%ss", "plain", 2, "192.0.2.7", "client.example")
    assert request_headers(q, {"X-Auth-Key": b"k"}) == [
        (b"Auth-Method", b"plain"), (b"Auth-User", b"ann%20smith"), (b"Auth-Pass", b"p%25ss"),
        (b"Auth-Protocol", b"pop3"), (b"Auth-Login-Attempt", b"2"),
        (b"Client-IP", b"192.0.2.7"), (b"Client-Host", b"client.example"),
        (b"X-Auth-Key", b"k")]
    assert (b"Client-Host", b"") not in request_headers(query(), {})
    assert "secret" not in repr(query())


def h(**fields: str) -> list[tuple[bytes, bytes]]:
    return [(k.replace("_", "-").encode(), v.encode()) for k, v in fields.items()]


@pytest.mark.parametrize("status, headers, expected", [
    (200, h(Auth_Status="OK", Auth_Server="127.0.0.1", Auth_Port="143"),
     Target(None, host="127.0.0.1", port=143)),
    (200, h(auth_status="OK", auth_server="::1", auth_port="993", auth_user="bob",
            auth_pass="p w"),
     Target(None, host="::1", port=993, user="bob", password=b"p w")),
    (200, h(Auth_Server="10.0.0.9", Auth_Port="110"), Target(None, host="10.0.0.9", port=110)),
    (500, h(Auth_Server="10.0.0.9", Auth_Port="110"), Target(None, host="10.0.0.9", port=110)),
    (200, h(Auth_Status="Invalid login or password"), Refusal("Invalid login or password")),
    (200, h(Auth_Status="Invalid login", Auth_Wait="3"), Refusal("Invalid login", wait=3.0)),
    (200, h(Auth_Status="Invalid login", Auth_Wait="0"), Refusal("Invalid login")),
    (200, h(Auth_Status="Invalid login", Auth_Wait="x3"), Refusal("Invalid login")),
    (200, h(Auth_Status="Try later", Auth_Error_Code="451 4.3.0"),
     Refusal("Try later", temporary=True)),
    (200, h(Auth_Status="No\x01way"), Refusal("No?way")),
    (200, h(Auth_Status="WAIT", Auth_Wait="2"), WaitAndRetry(2.0)),
    (404, [], None),
    (404, h(Auth_Status="Unknown user"), Refusal("Unknown user")),
    (200, h(Auth_Status="ok", Auth_Server="127.0.0.1", Auth_Port="143"), Refusal("ok")),
])
def test_parse_reply(status: int, headers: list[tuple[bytes, bytes]], expected: object) -> None:
    assert parse_reply(status, headers) == expected


@pytest.mark.parametrize("status, headers, detail", [
    (200, h(Auth_Status="OK"), "HTTP 200 without Auth-Server or Auth-Port"),
    (502, [], "HTTP 502 without Auth-Server or Auth-Port"),
    (200, h(Auth_Status="OK", Auth_Server="mail.example.com", Auth_Port="143"),
     "invalid Auth-Server mail.example.com"),
    (200, h(Auth_Status="OK", Auth_Server="127.0.0.1", Auth_Port="70000"),
     "invalid Auth-Port 70000"),
    (200, h(Auth_Status="OK", Auth_Server="127.0.0.1", Auth_Port="-1"), "invalid Auth-Port -1"),
])
def test_parse_reply_unusable(status: int, headers: list[tuple[bytes, bytes]], detail: str) -> None:
    with pytest.raises(LookupUnavailable) as info:
        parse_reply(status, headers)
    assert info.value.detail == detail


# -- cache ----------------------------------------------------------------------------------------


def test_cache_ttls_bound_and_password_key() -> None:
    now = [0.0]
    cache = AnswerCache(LookupCache(ttl=60, negative_ttl=10, max_entries=2), timer=lambda: now[0])
    ok, no = Target(None, host="10.0.0.1", port=143), Refusal("no")
    cache.put(cache.key(query("a")), ok)
    cache.put(cache.key(query("b", b"wrong")), no)
    assert cache.get(cache.key(query("a"))) == ok
    assert cache.get(cache.key(query("a", b"other"))) is None  # another password: not this answer
    assert cache.get(cache.key(query("a", protocol="pop3"))) is None
    assert cache.get(cache.key(query("b", b"wrong"))) == no
    now[0] = 11.0
    assert cache.get(cache.key(query("b", b"wrong"))) is None  # negative TTL over
    assert cache.get(cache.key(query("a"))) == ok
    for user in ("c", "d"):  # bounded: the least recently used route goes
        cache.put(cache.key(query(user)), ok)
    assert len(cache) == 2 and cache.get(cache.key(query("a"))) is None
    assert b"secret" not in repr(cache.key(query("a"))).encode()


def test_cache_off() -> None:
    cache = AnswerCache(LookupCache(ttl=0, negative_ttl=0))
    cache.put(cache.key(query()), Target(None, host="10.0.0.1", port=1))
    assert cache.get(cache.key(query())) is None


# -- the chain against a real HTTP service -------------------------------------------------------


@pytest.fixture
def service():
    svc = AuthService({"ann@example.com": Account("secret", "127.0.0.2", {"imap": 1143}),
                       "bob@example.com": Account("pw", "10.0.1.2", {"imap": 143},
                                                  upstream_user="bob", upstream_password="up")})
    yield svc
    svc.stop()


def chain_config(url: str, extra: str = "") -> config_mod.Config:
    return load(f"""
        lookups:
          - http: {{url: "{url}", upstream: main, timeout: 2s {extra}}}
        routes: [{{match: "*@static.example", upstream: main}}]
        """)


async def test_http_lookup_routes_rewrites_and_caches(service: AuthService) -> None:
    config = chain_config(service.url)
    lookups = Lookups(config)
    try:
        assert await lookups.decide(query()) == (
            "http", Target(None, host="127.0.0.2", port=1143))
        (sent,) = service.requests
        assert {k: sent[k] for k in ("Auth-Method", "Auth-User", "Auth-Pass", "Auth-Protocol",
                                     "Auth-Login-Attempt", "Client-IP")} == {
            "Auth-Method": "plain", "Auth-User": "ann@example.com", "Auth-Pass": "secret",
            "Auth-Protocol": "imap", "Auth-Login-Attempt": "1", "Client-IP": "192.0.2.7"}
        assert "Client-Host" not in sent
        await lookups.decide(query())
        assert len(service.requests) == 1  # cached
        name, bob = await lookups.decide(query("bob@example.com", b"pw"))
        assert bob == Target(None, host="10.0.1.2", port=143, user="bob", password=b"up")
        # a host of a configured pool: that upstream, that host only
        assert upstream_for(config, name, bob, "imap")[0] == "pool"
        assert upstream_for(config, name, bob, "imap")[1].pool == ("10.0.1.2",)
        # another host: the lookup's `upstream:` settings (STARTTLS), under the lookup's name
        label, up = upstream_for(config, "http", Target(None, host="127.0.0.2", port=1143), "imap")
        assert (label, up.host, up.imap.port, up.imap.tls, up.pop3) == (
            "http", "127.0.0.2", 1143, "starttls", None)
        refused = await lookups.decide(query(password=b"bad", attempt=2))
        assert refused == ("http", Refusal("Invalid login or password"))
        assert service.requests[-1]["Auth-Login-Attempt"] == "2"
    finally:
        await lookups.aclose()


async def test_unknown_user_falls_through_on_404(service: AuthService) -> None:
    service.unknown_404 = True
    lookups = Lookups(chain_config(service.url))
    try:
        assert await lookups.decide(query("carl@static.example")) is None
    finally:
        await lookups.aclose()


async def test_service_down_and_slow() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/auth"
    lookups = Lookups(chain_config(url))
    with pytest.raises(LookupUnavailable) as info:
        await lookups.decide(query())
    assert info.value.detail.startswith("http: ConnectError")
    await lookups.aclose()
    # a service that accepts and never answers: the timeout decides
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        lookups = Lookups(chain_config(f"http://127.0.0.1:{silent.getsockname()[1]}/auth",
                                       ", timeout: 200ms"))
        with pytest.raises(LookupUnavailable) as info:
            await lookups.decide(query())
        assert info.value.detail == "http: no reply within 0.2s"
        await lookups.aclose()


async def test_lookup_metrics(service: AuthService) -> None:
    """mailproxy_lookups_total by kind, result and cache; the duration of misses."""
    service.unknown_404 = True
    metrics = Metrics()
    lookups = Lookups(chain_config(service.url), metrics=metrics)
    try:
        await lookups.decide(query())                                 # route, miss
        await lookups.decide(query())                                 # route, hit
        await lookups.decide(query(password=b"bad", attempt=2))       # refuse, miss
        assert await lookups.decide(query("carl@static.example")) is None   # pass, miss
    finally:
        await lookups.aclose()
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/auth"
    down = Lookups(chain_config(url), metrics=metrics)
    with pytest.raises(LookupUnavailable):
        await down.decide(query())                                    # unavailable, miss
    await down.aclose()
    sample = metrics.registry.get_sample_value
    counts = {(result, cache): sample("mailproxy_lookups_total",
                                      {"kind": "http", "result": result, "cache": cache})
              for result in LOOKUP_RESULTS for cache in LOOKUP_CACHE}
    assert counts == {("route", "hit"): 1, ("route", "miss"): 1, ("refuse", "hit"): 0,
                      ("refuse", "miss"): 1, ("pass", "hit"): 0, ("pass", "miss"): 1,
                      ("unavailable", "hit"): 0, ("unavailable", "miss"): 1}
    assert sample("mailproxy_lookup_duration_seconds_count", {"kind": "http"}) == 4
    assert sample("mailproxy_lookups_total", {"kind": "ldap", "result": "route",
                                              "cache": "miss"}) == 0   # series exist at 0


async def test_wait_status_asks_again(service: AuthService) -> None:
    service.status_override["ann@example.com"] = {"Auth-Status": "WAIT", "Auth-Wait": "0"}
    lookups = Lookups(chain_config(service.url))
    try:
        with pytest.raises(LookupUnavailable) as info:
            await lookups.decide(query())
        assert info.value.detail == "http: Auth-Status: WAIT more than 10 times"
        assert len(service.asked("ann@example.com")) == 11
    finally:
        await lookups.aclose()


async def test_reload_closes_the_old_lookup_clients(autojump_clock) -> None:
    """App.apply: the replaced config's HTTP client is closed after the longest login timeout
    (a login still running under it keeps its lookup), the new one stays open."""
    from proxy.app import App

    config = load("""
        lookups: [{http: {url: "http://127.0.0.1:9/auth"}}]
        """)
    app = App(config, None)
    old = app.runtime.lookups
    assert old is not None
    async with trio.open_nursery() as nursery:
        app._services = nursery   # what App.run sets
        assert app.apply(config) == []
        new = app.runtime.lookups
        assert new is not None and new is not old
        clients = [lookup._client for lookups in (old, new)   # type: ignore[attr-defined]
                   for lookup, _ in lookups.lookups]
        await trio.sleep(config.listeners[0].timeouts.login - 1)
        assert [c.is_closed for c in clients] == [False, False]
        await trio.sleep(2)
        assert [c.is_closed for c in clients] == [True, False]
    await new.aclose()


# -- pools -------------------------------------------------------------------------------------------


def test_pool_sticky_and_failover() -> None:
    hosts = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    users = [f"user{i}@example.com" for i in range(300)]
    first = {u: pool.preference(u, hosts)[0] for u in users}
    assert {u: pool.preference(u, list(reversed(hosts)))[0] for u in users} == first
    assert set(first.values()) == set(hosts)  # every host gets users
    down = "10.0.0.2"
    moved = {u: pool.order(u, hosts, lambda h: h != down)[0] for u in users}
    assert all(moved[u] == first[u] for u in users if first[u] != down)  # others stay
    assert all(moved[u] != down for u in users)
    assert pool.order("x", hosts, lambda h: False) == pool.preference("x", hosts)
    # removing a host moves only its users
    smaller = {u: pool.preference(u, hosts[:2])[0] for u in users}
    assert all(smaller[u] == first[u] for u in users if first[u] != "10.0.0.3")


def test_host_health_marks_and_rounds() -> None:
    now = [0.0]
    health = pool.HostHealth(down_for=30, clock=lambda: now[0])
    hosts = ["10.0.0.1", "10.0.0.2"]
    home = pool.preference("ann", hosts)[0]
    other = next(h for h in hosts if h != home)
    assert health.hosts_to_try("p", hosts, "imap", "ann") == [home, other]
    health.mark_down("p", home, "imap")
    assert health.hosts_to_try("p", hosts, "imap", "ann") == [other, home]
    assert health.hosts_to_try("p", hosts, "pop3", "ann") == [home, other]  # per protocol
    health.record("p", home, "imap", True)  # a check saw it up: back home
    assert health.hosts_to_try("p", hosts, "imap", "ann") == [home, other]
    health.mark_down("p", home, "imap")
    now[0] = 30.0  # the mark expires: tried first again
    assert health.hosts_to_try("p", hosts, "imap", "ann") == [home, other]
