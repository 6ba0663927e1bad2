"""The Dovecot fixture is a real server: stdlib clients log in, see delivered mail, and are refused
with a wrong password; several instances run at once; users added after start can log in."""

from __future__ import annotations

import imaplib
import poplib
import socket
import ssl

import pytest

MESSAGE = (b"From: Alice <alice@example.org>\r\nTo: bob@example.com\r\nSubject: fixture check\r\n"
           b"Message-ID: <fixture-1@example.org>\r\n\r\nHello, Bob.\r\n.leading dot\r\n")


def _imap(dovecot) -> imaplib.IMAP4:
    return imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=10)


def test_login_select_fetch_exact_bytes(dovecot, user):
    name, password = user
    dovecot.deliver(name, MESSAGE)
    imap = _imap(dovecot)
    try:
        assert imap.login(name, password)[0] == "OK"
        typ, data = imap.select("INBOX")
        assert (typ, data) == ("OK", [b"1"])
        typ, data = imap.fetch("1", "(BODY.PEEK[])")
        assert typ == "OK"
        assert data[0][1] == MESSAGE
    finally:
        imap.logout()


def test_pop3_stat_retr(dovecot, user):
    name, password = user
    dovecot.deliver(name, MESSAGE)
    pop = poplib.POP3(dovecot.host, dovecot.pop3_port, timeout=10)
    try:
        pop.user(name)
        pop.pass_(password)
        assert pop.stat() == (1, len(MESSAGE))
        _, lines, _ = pop.retr(1)
        assert b"\r\n".join(lines) + b"\r\n" == MESSAGE  # poplib undoes the dot-stuffing
    finally:
        pop.quit()


def test_wrong_password_rejected(dovecot, user):
    name, _ = user
    imap = _imap(dovecot)
    try:
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            imap.login(name, "wrong-password")
    finally:
        imap.shutdown()
    pop = poplib.POP3(dovecot.host, dovecot.pop3_port, timeout=10)
    try:
        pop.user(name)
        with pytest.raises(poplib.error_proto):
            pop.pass_("wrong-password")
    finally:
        pop.close()


def test_flags_folders_and_order(dovecot, user):
    name, password = user
    for i in range(5):
        dovecot.deliver(name, b"Subject: %d\r\n\r\nbody %d\r\n" % (i, i))
    dovecot.deliver(name, MESSAGE, folder="Archive/2024", flags="SF")
    dovecot.deliver(name, MESSAGE, folder="Sent", flags="S")
    imap = _imap(dovecot)
    try:
        imap.login(name, password)
        typ, folders = imap.list()
        assert b'"/" Archive/2024' in b"\n".join(folders)
        assert b'"/" Sent' in b"\n".join(folders)
        imap.select("INBOX")
        typ, data = imap.fetch("1:5", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        subjects = [part[1].strip() for part in data if isinstance(part, tuple)]
        assert subjects == [b"Subject: %d" % i for i in range(5)]
        imap.select("Archive/2024")
        typ, data = imap.fetch("1", "(FLAGS BODY.PEEK[])")
        assert b"\\Seen" in data[0][0] and b"\\Flagged" in data[0][0]
        assert data[0][1] == MESSAGE
    finally:
        imap.logout()


def test_user_added_after_start_and_explicit_names(dovecot):
    name, password = dovecot.add_user("late-user@example.net", "s3cret-pass")
    assert (name, password) == ("late-user@example.net", "s3cret-pass")
    imap = _imap(dovecot)
    try:
        assert imap.login(name, password)[0] == "OK"
    finally:
        imap.logout()
    dovecot.wait_for_log("Login: user=<late-user@example.net>")
    # right after a lookup: Dovecot re-checks a passwd-file at most once a second, hence one per user
    for _ in range(3):
        imap = _imap(dovecot)
        try:
            assert imap.login(*dovecot.add_user())[0] == "OK"
        finally:
            imap.logout()


def test_second_instance_at_the_same_time(dovecot, user, dovecot_factory):
    other = dovecot_factory()
    ports = {dovecot.imap_port, dovecot.pop3_port, other.imap_port, other.pop3_port}
    assert len(ports) == 4
    assert other.dir != dovecot.dir
    other_name, other_password = other.add_user()
    for instance, (name, password) in ((dovecot, user), (other, (other_name, other_password))):
        imap = _imap(instance)
        try:
            assert imap.login(name, password)[0] == "OK"
        finally:
            imap.logout()
    # users are per instance
    imap = _imap(other)
    try:
        with pytest.raises(imaplib.IMAP4.error):
            imap.login(*user)
    finally:
        imap.shutdown()
    other.stop()
    with pytest.raises(OSError):
        socket.create_connection((other.host, other.imap_port), timeout=2).close()
    other.stop()  # idempotent


def test_forwarded_client_address_is_logged(dovecot, user):
    """login_trusted_networks lets the proxy forward the client's address (ID for IMAP)."""
    name, password = user
    imap = _imap(dovecot)
    try:
        imap.xatom("ID", '("x-originating-ip" "198.51.100.8" "x-originating-port" "4444")')
        imap.login(name, password)
    finally:
        imap.logout()
    dovecot.wait_for_log(f"user=<{name}>, rip=198.51.100.8")


def test_tls_instance(dovecot_factory, tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_pem, key_pem = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_pem))
    cert.private_key_pem.write_to_path(str(key_pem))
    server = dovecot_factory(tls=(cert_pem, key_pem))
    assert server.imaps_port and server.pop3s_port
    name, password = server.add_user()
    server.deliver(name, MESSAGE)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    imap = imaplib.IMAP4_SSL(server.host, server.imaps_port, ssl_context=context, timeout=10)
    try:
        imap.login(name, password)
        assert imap.select()[1] == [b"1"]
    finally:
        imap.logout()
    imap = _imap(server)
    try:
        imap.starttls(ssl_context=context)
        assert imap.login(name, password)[0] == "OK"
    finally:
        imap.logout()
    pop = poplib.POP3_SSL(server.host, server.pop3s_port, context=context, timeout=10)
    try:
        pop.user(name)
        pop.pass_(password)
        assert pop.stat() == (1, len(MESSAGE))
    finally:
        pop.quit()


def test_unknown_user_is_an_auth_failure_not_a_tempfail(dovecot):
    imap = _imap(dovecot)
    try:
        with pytest.raises(imaplib.IMAP4.error, match=r"\[AUTHENTICATIONFAILED\]"):
            imap.login("nobody-here@example.com", "whatever")
    finally:
        imap.shutdown()
