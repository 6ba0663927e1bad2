"""The config loader's error report: a file with several problems gets all of them in one go, each
with the YAML path it is about and the line that path is on (nested mappings, lists, flow style).

The words of each message belong to tests/test_cli_errors.py; here only the structure is checked
(every error present, `line N: ...` with the right N, naming the right path), so rewording a
message does not break these tests and a lost error or a wrong line does.
"""

from __future__ import annotations

import re

import pytest

from proxy import config as config_mod

LINE = re.compile(r"line (\d+): (.+)")


def report(text: str) -> list[tuple[int, str]]:
    """(line, rest of the message) per error, in the order given."""
    with pytest.raises(config_mod.ConfigError) as caught:
        config_mod.loads(text)
    errors = caught.value.errors
    assert str(caught.value) == "\n".join(errors)
    parsed = []
    for error in errors:
        match = LINE.fullmatch(error)
        assert match, f"not 'line N: message': {error!r}"
        parsed.append((int(match.group(1)), match.group(2)))
    return parsed


def assert_report(text: str, expected: list[tuple[int, str]]) -> None:
    """Exactly one error per (line, path) expected, and no other error."""
    got = report(text)
    assert len(got) == len(expected), got
    for line, path in expected:
        matching = [message for n, message in got if n == line and path in message]
        assert len(matching) == 1, (line, path, got)


# Schema problems (types, choices, durations, sizes, missing keys) at several depths.
SCHEMA = """\
listeners:
  - name: imap
    protocol: imap
    address: 127.0.0.1:1143
    tls: sometimes
  - name: pop3
    protocol: pop3
    address: 127.0.0.1:1110
    limits:
      max_line: huge
      bad_commands: -x
    timeouts: {login: forever, idle: 30m}
upstreams:
  main:
    host: 127.0.0.1
    imap: {port: 143}
  backup:
    host: 10.0.0.2
    pop3:
      port: "one-ten"
      tls: maybe
routes:
  - {match: "*@example.com", upstream: main}
  - {upstream: backup}
shutdown_timeout: 30s
"""


def test_every_schema_error_with_its_path_and_line() -> None:
    assert_report(SCHEMA, [
        (5, "listeners[0].tls"),
        (10, "listeners[1].limits.max_line"),
        (11, "listeners[1].limits.bad_commands"),
        (12, "listeners[1].timeouts.login"),      # flow style: the key's own line
        (20, "upstreams.backup.pop3.port"),
        (21, "upstreams.backup.pop3.tls"),
        (24, "routes[1]"),                        # a missing key: the line of its mapping
    ])


# Problems only visible across keys, found after the schema is valid.
SEMANTIC = """\
listeners:
  - {name: imap, protocol: imap, address: 127.0.0.1:1143}
  - {name: imap, protocol: imap, address: 127.0.0.1:1144}
  - name: pop3
    protocol: pop3
    address: 127.0.0.1:1110
    proxy_protocol: true
    trusted_proxies: [10.0.0.0/33]
upstreams:
  main: {host: 127.0.0.1, imap: {port: 143}}
  empty: {host: 127.0.0.2}
routes:
  - {match: "*@example.com", upstream: main}
  - {match: "*", upstream: nowhere}
"""


def test_every_cross_key_error_with_its_path_and_line() -> None:
    assert_report(SEMANTIC, [
        (3, "listeners[1].name"),                 # duplicate listener name
        (8, "listeners[2].trusted_proxies[0]"),   # not a CIDR network
        (11, "upstreams.empty"),                  # neither imap: nor pop3:
        (13, "routes[0].upstream"),               # main has no pop3: for the pop3 listener
        (14, "routes[1].upstream"),               # unknown upstream
    ])


def test_one_fix_leaves_exactly_the_other_errors() -> None:
    fixed = SCHEMA.replace("tls: sometimes", "tls: none").replace('port: "one-ten"', "port: 110")
    assert_report(fixed, [
        (10, "listeners[1].limits.max_line"),
        (11, "listeners[1].limits.bad_commands"),
        (12, "listeners[1].timeouts.login"),
        (21, "upstreams.backup.pop3.tls"),
        (24, "routes[1]"),
    ])


def test_yaml_syntax_error_is_one_error_naming_its_line() -> None:
    text = "listeners:\n  - name: imap\n    protocol: [imap\nupstreams: {}\n"
    with pytest.raises(config_mod.ConfigError) as caught:
        config_mod.loads(text)
    (error,) = caught.value.errors
    assert "YAML" in error and re.search(r"\bline 4\b", error), error


ADMIN_BASE = """\
listeners: [{name: imap, protocol: imap, address: 127.0.0.1:1143}]
upstreams: {main: {host: 127.0.0.1, imap: {port: 143}}}
routes: [{match: "*", upstream: main}]
"""


@pytest.mark.parametrize(("admin", "message"), [
    ("admin: {}", "admin: give address (HTTP with a token) or socket (a Unix socket), or both"),
    ("admin: {address: 127.0.0.1:9101}",
     "admin.token: admin.address needs a token (the socket needs none)"),
    ("admin: {socket: /run/a.sock, token: {env: HOME}}",
     "admin.token: a token is only checked on admin.address; the socket's file mode controls "
     "who may use it"),
    ("admin: {socket: /run/a.sock, socket_mode: '0999'}",
     "admin.socket_mode: expected an octal file mode such as 0600 or 0660"),
    ("admin: {socket: /run/a.sock, socket_mode: 660}",   # decimal: YAML read no octal
     "admin.socket_mode: expected an octal file mode such as 0600 or 0660"),
])
def test_admin_section_errors(admin: str, message: str) -> None:
    assert report(ADMIN_BASE + admin) == [(4, message)]


def test_admin_socket_mode_quoted_or_octal_and_path_relative_to_the_config(tmp_path) -> None:
    for spelling in ("'0660'", "0660", "'660'"):
        admin = config_mod.loads(ADMIN_BASE + f"admin: {{socket: a.sock, socket_mode: {spelling}}}",
                                 base_dir=tmp_path).admin
        assert admin is not None
        assert (admin.mode, admin.socket, admin.address, admin.token) == \
            (0o660, tmp_path / "a.sock", None, None)
