"""proxy.metrics: names, bounded labels, registry isolation; proxy.session.failures: the reason set."""

from __future__ import annotations

import logging
import random
import re

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from proxy import metrics as m
from proxy.metrics import Metrics, command_label, mechanism_label, status_label
from proxy.net.tls import HANDSHAKE_FAILURE_REASONS
from proxy.session.failures import LOG_LEVEL, Close, Failure, auth_result

NAME = re.compile(r"^mailproxy_[a-z_]+$")

# attribute -> (exposed name, label names)
EXPECTED = {
    "connections": ("mailproxy_connections_total", ("listener", "protocol", "tls")),
    "connections_active": ("mailproxy_connections_active", ("listener", "protocol", "tls")),
    "session_duration": ("mailproxy_session_duration_seconds", ("listener", "protocol")),
    "tls_handshakes": ("mailproxy_tls_handshakes_total", ("listener", "result")),
    "starttls": ("mailproxy_starttls_total", ("side", "protocol", "result")),
    "auth_attempts": ("mailproxy_auth_attempts_total", ("protocol", "mechanism", "result")),
    "commands": ("mailproxy_commands_total", ("protocol", "command", "status")),
    "command_duration": ("mailproxy_command_duration_seconds", ("protocol", "command")),
    "upstream_connect_duration": ("mailproxy_upstream_connect_duration_seconds",
                                  ("upstream", "protocol")),
    "upstream_errors": ("mailproxy_upstream_errors_total", ("upstream", "protocol", "reason")),
    "upstream_up": ("mailproxy_upstream_up", ("upstream", "protocol")),
    "bytes": ("mailproxy_bytes_total", ("direction", "protocol")),
    "protocol_errors": ("mailproxy_protocol_errors_total", ("protocol", "kind")),
    "limit_hits": ("mailproxy_limit_hits_total", ("limit",)),
    "lookups": ("mailproxy_lookups_total", ("kind", "result", "cache")),
    "lookup_duration": ("mailproxy_lookup_duration_seconds", ("kind",)),
    "oauth2_refreshes": ("mailproxy_oauth_token_refreshes_total", ("result",)),
    "build_info": ("mailproxy_build_info", ("version", "python")),
    "draining": ("mailproxy_draining", ()),
    "relay_engine_sessions": ("mailproxy_relay_engine_sessions", ()),
    "relay_engine_accepted": ("mailproxy_relay_engine_accepted_total", ("listener",)),
    "relay_spliced_bytes": ("mailproxy_relay_spliced_bytes_total", ()),
}


def _types(registry: CollectorRegistry) -> dict[str, str]:
    """`# TYPE` lines of the text exposition: name -> type."""
    text = generate_latest(registry).decode()
    return dict(line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE"))


def _series(registry: CollectorRegistry) -> set[tuple[str, tuple]]:
    return {(s.name, tuple(sorted(s.labels.items())))
            for family in registry.collect() for s in family.samples}


def test_every_name_follows_the_convention():
    types = _types(Metrics().registry)
    assert types
    for name, kind in types.items():
        if name.startswith(("process_", "python_")):   # prometheus_client's standard collectors
            continue
        assert NAME.match(name), name
        if kind == "counter":
            assert name.endswith("_total"), name
        if kind == "histogram":
            assert name.endswith("_seconds"), name


@pytest.mark.parametrize("attribute", sorted(EXPECTED))
def test_declared_metric_has_name_and_labels(attribute):
    metrics = Metrics()
    name, labels = EXPECTED[attribute]
    metric = getattr(metrics, attribute)
    if labels:
        metric.labels(**{label: "x" for label in labels})  # raises on any other label names
    assert name in _types(metrics.registry)


def test_command_label_clamps_garbage_and_adds_no_series():
    metrics = Metrics()
    metrics.commands.labels("imap", "other", "BAD").inc()
    before = _series(metrics.registry)
    rng = random.Random(5)
    known = m.IMAP_COMMANDS | m.POP3_COMMANDS
    garbage: list[bytes | str] = []
    while len(garbage) < 1000:
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
        name = raw if rng.random() < 0.5 else raw.decode("latin-1")
        text = raw.decode("latin-1").upper()
        if text not in known:
            garbage.append(name)
    for name in garbage:
        assert command_label("imap", name) == "other"
        assert command_label("pop3", name) == "other"
        metrics.commands.labels("imap", command_label("imap", name), "BAD").inc()
    assert _series(metrics.registry) == before
    assert metrics.registry.get_sample_value(
        "mailproxy_commands_total", {"protocol": "imap", "command": "other", "status": "BAD"}) == 1001


@pytest.mark.parametrize("protocol, name, label", [
    ("imap", b"fetch", "FETCH"),
    ("imap", "Uid Fetch", "UID FETCH"),
    ("imap", b"UID MOVE", "UID MOVE"),
    ("imap", b"UID  FETCH", "other"),
    ("imap", b"IDLE", "IDLE"),
    ("imap", b"getquotaroot", "GETQUOTAROOT"),
    ("imap", b"RETR", "other"),
    ("pop3", b"retr", "RETR"),
    ("pop3", "XCLIENT", "XCLIENT"),
    ("pop3", b"FETCH", "other"),
    ("pop3", b"", "other"),
    ("pop3", "ÜSER", "other"),
    ("imap", b"FETCH" * 100, "other"),
])
def test_command_label(protocol, name, label):
    assert command_label(protocol, name) == label


def test_command_sets_cover_the_rfcs():
    assert {"CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "AUTHENTICATE", "LOGIN", "ENABLE",
            "SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE", "LIST",
            "NAMESPACE", "STATUS", "APPEND", "IDLE", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH",
            "FETCH", "STORE", "COPY", "MOVE", "UID FETCH", "UID STORE", "UID SEARCH", "UID COPY",
            "UID MOVE", "UID EXPUNGE", "ID", "GETQUOTAROOT", "COMPRESS"} <= m.IMAP_COMMANDS
    assert {"USER", "PASS", "APOP", "AUTH", "STAT", "LIST", "RETR", "DELE", "NOOP", "RSET",
            "QUIT", "TOP", "UIDL", "CAPA", "STLS", "UTF8", "XCLIENT"} <= m.POP3_COMMANDS


def test_unknown_protocol_is_a_bug():
    with pytest.raises(KeyError):
        command_label("smtp", b"HELO")


@pytest.mark.parametrize("protocol, status, label", [
    ("imap", b"OK", "OK"), ("imap", b"no", "NO"), ("imap", "BAD", "BAD"),
    ("imap", b"BYE", "other"), ("imap", b"+OK", "other"), ("imap", None, "none"),
    ("pop3", b"+OK", "+OK"), ("pop3", b"-ERR", "-ERR"), ("pop3", b"OK", "other"),
    ("pop3", None, "none"), ("pop3", b"\xff\xfe", "other"),
])
def test_status_label(protocol, status, label):
    assert status_label(protocol, status) == label


def test_mechanism_label():
    assert mechanism_label(b"plain") == "PLAIN"
    assert mechanism_label("XOAUTH2") == "XOAUTH2"
    assert mechanism_label(b"SCRAM-SHA-256") == "other"
    assert mechanism_label(b"x" * 1000) == "other"


def test_each_instance_has_its_own_registry():
    first, second = Metrics(), Metrics()
    assert first.registry is not second.registry
    assert first.registry is not REGISTRY
    first.connections.labels("imap", "imap", "none").inc(3)
    labels = {"listener": "imap", "protocol": "imap", "tls": "none"}
    assert first.registry.get_sample_value("mailproxy_connections_total", labels) == 3
    assert second.registry.get_sample_value("mailproxy_connections_total", labels) is None


def test_uses_the_registry_it_is_given():
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    assert metrics.registry is registry
    assert registry.get_sample_value("mailproxy_draining") == 0


def test_known_series_are_preinitialised():
    registry = Metrics().registry
    for protocol, mechanisms in m.AUTH_MECHANISMS.items():
        for mechanism in mechanisms:
            for result in m.AUTH_RESULTS:
                labels = {"protocol": protocol, "mechanism": mechanism, "result": result}
                assert registry.get_sample_value("mailproxy_auth_attempts_total", labels) == 0
    for limit in m.LIMITS:
        assert registry.get_sample_value("mailproxy_limit_hits_total", {"limit": limit}) == 0
    build = [s for f in registry.collect() if f.name == "mailproxy_build_info" for s in f.samples]
    assert [s.value for s in build] == [1]


def test_init_listener_and_upstream_create_series():
    metrics = Metrics()
    metrics.init_listener("imaps", "imap", "implicit")
    metrics.init_upstream("dovecot", "pop3", Failure.labels())
    get = metrics.registry.get_sample_value
    assert get("mailproxy_connections_total",
               {"listener": "imaps", "protocol": "imap", "tls": "implicit"}) == 0
    for result in ("ok", "handshake_failed", "timeout", "alpn_refused"):  # TLSHandshakeError.reason
        assert get("mailproxy_tls_handshakes_total", {"listener": "imaps", "result": result}) == 0
    for reason in Failure.labels():
        assert get("mailproxy_upstream_errors_total",
                   {"upstream": "dovecot", "protocol": "pop3", "reason": reason}) == 0


def test_child_is_the_labelled_series_remembered_and_bounded(monkeypatch):
    metrics = Metrics()
    first = metrics.child(metrics.auth_attempts, "imap", "LOGIN", "success")
    assert first is metrics.child(metrics.auth_attempts, "imap", "LOGIN", "success")
    first.inc()
    metrics.child(metrics.upstream_connect_duration, "main", "imap").observe(0.002)
    get = metrics.registry.get_sample_value
    assert get("mailproxy_auth_attempts_total",
               {"protocol": "imap", "mechanism": "LOGIN", "result": "success"}) == 1
    assert get("mailproxy_upstream_connect_duration_seconds_count",
               {"upstream": "main", "protocol": "imap"}) == 1
    monkeypatch.setattr(m, "MAX_CHILDREN", 3)   # past the bound it starts again, still right
    for index in range(5):
        metrics.child(metrics.upstream_connect_duration, f"u{index}", "pop3").observe(1)
    assert len(metrics._children) <= 3
    metrics.child(metrics.auth_attempts, "imap", "LOGIN", "success").inc()
    assert get("mailproxy_auth_attempts_total",
               {"protocol": "imap", "mechanism": "LOGIN", "result": "success"}) == 2


def test_failure_values_are_the_reason_label_set():
    assert {failure.label for failure in Failure} == Failure.labels()
    assert {f.name for f in Failure} == {
        "CONNECT", "TLS", "UPSTREAM", "PROTOCOL", "AUTH_REJECTED", "AUTH_TEMPFAIL", "THROTTLED",
        "LIMIT", "TIMEOUT", "INTERNAL", "CLIENT_GONE"}
    for failure in Failure:
        assert failure.value == failure.name.lower()
        assert NAME.match(f"mailproxy_{failure.value}")
    assert set(LOG_LEVEL) == set(Failure)
    assert LOG_LEVEL[Failure.INTERNAL] == logging.ERROR


def test_the_failure_table_derives_replies_and_labels_from_one_row():
    assert {auth_result(None)} | {f.auth for f in Failure} == set(m.AUTH_RESULTS)
    assert Failure.AUTH_REJECTED.auth == "failure" and Failure.THROTTLED.auth == "throttled"
    assert Failure.CONNECT.auth == "tempfail"
    assert Failure.AUTH_REJECTED.imap_reply == (b"AUTHENTICATIONFAILED", b"Authentication failed.")
    assert Failure.AUTH_REJECTED.pop3_reply == (b"AUTH", b"Authentication failed.")
    assert Failure.THROTTLED.imap_reply[0] == b"UNAVAILABLE"
    assert Failure.TIMEOUT.pop3_reply == (b"SYS/TEMP", b"Server unavailable, try again later.")


def test_close_reasons_that_are_limits_name_known_limit_labels():
    limits = {close.limit for close in Close if close.limit is not None}
    assert limits == {"idle_timeout", "login_timeout", "preauth_commands", "bad_commands",
                      "auth_failures"}
    assert limits <= m.LIMITS
    assert Close.CLIENT_CLOSED.limit is None
    assert Close("tls_handshake_failed") is Close.TLS_HANDSHAKE_FAILED
    for reason in HANDSHAKE_FAILURE_REASONS:  # session.serve ends a failed handshake with these
        assert Close(f"tls_{reason}").value == f"tls_{reason}"


def test_protocol_errors_that_are_limits_name_known_limit_labels():
    from proxy.session.failures import limit_of_protocol_error

    assert limit_of_protocol_error("line_too_long") == "line_length"
    assert limit_of_protocol_error("nonsync_literal_too_big") == "literal_size"
    assert limit_of_protocol_error("bad_syntax") is None
    assert {limit_of_protocol_error(k) for k in ("line_too_long", "literal_too_big")} <= m.LIMITS
