"""`upstreams.NAME.imap.pipelined_login` and `upstreams.NAME.pop3.pipelined_login`: strict booleans
(default true), kept when a lookup builds an upstream from its template."""

from __future__ import annotations

import pytest

from proxy import config as config_mod
from proxy.config import ImapService, Pop3Service
from proxy.routing.answers import Target
from proxy.routing.chain import upstream_for

BASE = """\
listeners:
  - {name: imap, protocol: imap, address: 127.0.0.1:1143}
upstreams:
  main: {host: 127.0.0.1, imap: {port: 143%s}, pop3: {port: 110%s}}
routes:
  - {match: "*", upstream: main}
"""


def test_default_is_true() -> None:
    main = config_mod.loads(BASE % ("", "")).upstreams["main"]
    assert main.imap == ImapService(port=143, tls="none", pipelined_login=True)
    assert main.pop3 == Pop3Service(port=110, tls="none", pipelined_login=True)


def test_false_is_kept() -> None:
    imap = config_mod.loads(BASE % (", pipelined_login: false", "")).upstreams["main"].imap
    assert isinstance(imap, ImapService) and imap.pipelined_login is False
    main = config_mod.loads(BASE % ("", ", pipelined_login: false")).upstreams["main"]
    assert main.pop3 == Pop3Service(port=110, tls="none", pipelined_login=False)
    assert main.imap == ImapService(port=143, tls="none", pipelined_login=True)


@pytest.mark.parametrize("imap_extra, pop3_extra, error", [
    (", pipelined_login: yes please", "",
     "line 4: upstreams.main.imap.pipelined_login: expected true or false, got 'yes please'"),
    (", pipelined_login: 0", "",
     "line 4: upstreams.main.imap.pipelined_login: expected true or false, got 0"),
    ("", ", pipelined_login: 1",
     "line 4: upstreams.main.pop3.pipelined_login: expected true or false, got 1"),
])
def test_invalid_values_are_refused_with_their_path(imap_extra: str, pop3_extra: str,
                                                   error: str) -> None:
    with pytest.raises(config_mod.ConfigError) as caught:
        config_mod.loads(BASE % (imap_extra, pop3_extra))
    assert caught.value.errors == [error]


def test_a_lookup_built_upstream_keeps_its_templates_setting() -> None:
    """A lookup answer naming a host and port outside `upstreams:` gets the IMAP settings of
    the lookup's `upstream:` (routing/chain.py), pipelined_login included."""
    config = config_mod.loads(BASE % (", tls: implicit, pipelined_login: false", "") + """\
lookups:
  - http: {url: "http://127.0.0.1:9/auth", upstream: main}
""")
    _, upstream = upstream_for(config, "http", Target(None, host="10.9.9.9", port=1993), "imap")
    assert upstream.imap == ImapService(port=1993, tls="implicit", pipelined_login=False)


def test_a_lookup_built_pop3_upstream_keeps_its_templates_setting() -> None:
    config = config_mod.loads(BASE % ("", ", tls: implicit, pipelined_login: false") + """\
lookups:
  - http: {url: "http://127.0.0.1:9/auth", upstream: main}
""")
    _, upstream = upstream_for(config, "http", Target(None, host="10.9.9.9", port=1995), "pop3")
    assert upstream.pop3 == Pop3Service(port=1995, tls="implicit", pipelined_login=False)
    _, plain = upstream_for(config_mod.loads(BASE % ("", "")), "http",
                            Target(None, host="10.9.9.9", port=1110), "pop3")
    assert plain.pop3 == Pop3Service(port=1110)   # no template: the defaults, early logins on
