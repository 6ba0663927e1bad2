"""The `ldap` lookup against a real, private slapd (tests/support/slapd.py) with a small tree."""

from __future__ import annotations

import textwrap

import pytest

from proxy import config as config_mod
from proxy.routing.answers import LoginQuery, LookupUnavailable, Target
from proxy.routing.chain import Lookups, upstream_for
from proxy.routing.ldap_lookup import answer_from_entry
from support.dovecot import free_ports
from support.slapd import BASE_DN, ROOT_DN, ROOT_PASSWORD, Slapd

PEOPLE = f"ou=people,{BASE_DN}"


def person(uid: str, mail: str, **attrs: str) -> str:
    extra = "".join(f"{k}: {v}\n" for k, v in attrs.items())
    return (f"dn: uid={uid},{PEOPLE}\nobjectClass: inetOrgPerson\nobjectClass: extensibleObject\n"
            f"uid: {uid}\ncn: {uid}\nsn: {uid}\nmail: {mail}\n{extra}\n")


TREE = (f"dn: {BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\no: Example\n"
        f"dc: example\n\ndn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n\n"
        + person("ann", "ann@one.example", host="d1")
        + person("bob", "bob@two.example", host="127.0.0.5:1143")
        + person("cat", "cat@two.example", host="127.0.0.6", ipServicePort="2143")
        + person("alias", "alias@two.example", host="d2", description="carl@two.example")
        + person("dan", "dan@nowhere.example")
        + person("eve1", "eve@twice.example", host="d1")
        + person("eve2", "eve@twice.example", host="d2")
        + person("odd", "o(d)d*@x.example", host="d2"))


@pytest.fixture(scope="module")
def slapd(tmp_path_factory):
    server = Slapd(tmp_path_factory.mktemp("slapd"), TREE)
    yield server
    server.stop()


def config(url: str, **settings: object) -> config_mod.Config:
    ldap = {"url": url, "base": PEOPLE, "host_attribute": "host",
            "port_attribute": "ipServicePort", "user_attribute": "description",
            "timeout": "10s", **settings}   # a hang bound: no test here waits for it
    import yaml

    return config_mod.loads(textwrap.dedent("""
        listeners: [{name: imap, protocol: imap, address: "127.0.0.1:1143"}]
        upstreams:
          d1: {host: 127.0.0.1, imap: {port: 10143}, pop3: {port: 10110}}
          d2: {host: 127.0.0.1, imap: {port: 20143}, pop3: {port: 20110}}
        routes: [{match: "*@static.example", upstream: d1}]
        """) + yaml.safe_dump({"lookups": [{"ldap": ldap}]}))


def query(user: str) -> LoginQuery:
    return LoginQuery("imap", user, b"pw", "plain", 1, "192.0.2.1")


async def test_ldap_routes_by_entry(slapd: Slapd) -> None:
    cfg = config(slapd.url)
    lookups = Lookups(cfg)
    try:
        assert await lookups.decide(query("ann@one.example")) == ("ldap", Target("d1"))
        assert await lookups.decide(query("bob@two.example")) == (
            "ldap", Target(None, host="127.0.0.5", port=1143))
        assert await lookups.decide(query("cat@two.example")) == (
            "ldap", Target(None, host="127.0.0.6", port=2143))
        name, alias = await lookups.decide(query("alias@two.example"))
        assert alias == Target("d2", user="carl@two.example")
        assert upstream_for(cfg, name, alias, "imap")[0] == "d2"
        # an entry without a host, or no entry: no answer (the routes decide)
        assert await lookups.decide(query("dan@nowhere.example")) is None
        assert await lookups.decide(query("zed@static.example")) is None
        # filter metacharacters in the user are escaped (RFC 4515): no wildcard match
        assert await lookups.decide(query("o(d)d*@x.example")) == ("ldap", Target("d2"))
        assert await lookups.decide(query("o*")) is None
        with pytest.raises(LookupUnavailable) as info:
            await lookups.decide(query("eve@twice.example"))
        assert info.value.detail == "ldap: more than one entry matches the filter"
    finally:
        await lookups.aclose()


async def test_ldap_bind_and_down(slapd: Slapd, tmp_path) -> None:
    secret = tmp_path / "bind"
    secret.write_text(ROOT_PASSWORD)
    lookups = Lookups(config(slapd.url, bind_dn=ROOT_DN, bind_password={"file": str(secret)}))
    try:
        assert await lookups.decide(query("ann@one.example")) == ("ldap", Target("d1"))
    finally:
        await lookups.aclose()
    secret.write_text("wrong")
    lookups = Lookups(config(slapd.url, bind_dn=ROOT_DN, bind_password={"file": str(secret)}))
    with pytest.raises(LookupUnavailable) as info:
        await lookups.decide(query("ann@one.example"))
    assert info.value.detail.startswith("ldap: LDAPBindError")
    await lookups.aclose()
    (port,) = free_ports(1)
    lookups = Lookups(config(f"ldap://127.0.0.1:{port}"))
    with pytest.raises(LookupUnavailable) as info:
        await lookups.decide(query("ann@one.example"))
    assert info.value.detail.startswith("ldap: LDAPSocketOpenError")
    await lookups.aclose()


def test_answer_from_entry_table() -> None:
    settings = config("ldap://x").lookups[0].lookup
    names = frozenset({"d1"})
    assert answer_from_entry({"host": ["d1"]}, settings, names) == Target("d1")
    assert answer_from_entry({"host": ["[::1]"], "ipServicePort": ["993"]}, settings, names) == \
        Target(None, host="::1", port=993)
    assert answer_from_entry({"host": ["mail.example"]}, settings, names) == \
        Target(None, host="mail.example")
    assert answer_from_entry({"host": []}, settings, names) is None
    with pytest.raises(LookupUnavailable):
        answer_from_entry({"host": ["h"], "ipServicePort": ["99999"]}, settings, names)


def test_proxy_routes_through_ldap(slapd: Slapd, dovecot, proxy_factory) -> None:
    """End to end: the proxy asks slapd, which names the upstream `d1` (the session Dovecot) for
    ann; a user slapd does not know falls through to the static route, which here goes nowhere."""
    import imaplib

    if "ann@one.example" not in dovecot.users:
        dovecot.add_user("ann@one.example", "ann-pw")
    proxy = proxy_factory({
        "listeners": [{"name": "imap", "protocol": "imap", "address": "127.0.0.1:0",
                       "allow_plaintext_auth": True}],
        "upstreams": {"d1": {"host": dovecot.host, "imap": {"port": dovecot.imap_port}},
                      "nowhere": {"host": "127.0.0.1", "imap": {"port": free_ports(1)[0]}}},
        "lookups": [{"ldap": {"url": slapd.url, "base": PEOPLE, "host_attribute": "host"}}],
        "routes": [{"match": "*", "upstream": "nowhere"}],
        "auth_throttle": {"enabled": False},
    })
    with imaplib.IMAP4("127.0.0.1", proxy.port("imap"), timeout=15) as imap:
        assert imap.login("ann@one.example", "ann-pw")[0] == "OK"
        imap.logout()
    with imaplib.IMAP4("127.0.0.1", proxy.port("imap"), timeout=15) as imap:
        with pytest.raises(imaplib.IMAP4.error) as info:
            imap.login("zed@static.example", "x")
        assert str(info.value) == "b'[UNAVAILABLE] Server unavailable, try again later.'"
