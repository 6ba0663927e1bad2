"""/metrics of a real proxy (issue 19): no `_created` series, process_* metrics, IDLE in its own
histogram and not in command_duration_seconds, the expiry of each listener certificate, and no
zero series for mechanisms no front end accepts."""

from __future__ import annotations

import imaplib
import ssl
import time

from cryptography import x509

from proxy import certgen
from support.proxyproc import relay_config

from .test_observability import metrics_text, scrape, value, wait_for


def test_metrics_hygiene(proxy_factory, dovecot, user, tmp_path):
    cert, key = certgen.generate(tmp_path / "tls", ["127.0.0.1"], days=30)
    config = relay_config(dovecot, imap={"tls": "starttls",
                                         "certificates": [{"cert": str(cert), "key": str(key)}]})
    proxy = proxy_factory(config)
    name, password = user
    client = imaplib.IMAP4("127.0.0.1", proxy.port("imap"))
    context = ssl.create_default_context(cafile=str(cert))
    client.starttls(context)
    client.login(name, password)
    client.select("INBOX")
    tag = client._new_tag()
    client.send(tag + b" IDLE\r\n")
    assert client.readline().startswith(b"+ ")
    client.send(b"DONE\r\n")
    assert client.readline().startswith(tag + b" OK")
    client.logout()

    text = metrics_text(proxy)
    assert "_created" not in text
    def after_idle() -> dict | None:
        samples = scrape(proxy)
        idle = value(samples, "mailproxy_idle_duration_seconds_count", protocol="imap")
        return samples if idle == 1 else None

    samples = wait_for(after_idle)
    assert value(samples, "process_resident_memory_bytes") > 0
    assert value(samples, "process_open_fds") > 0
    assert ("process_cpu_seconds_total", ()) in samples
    commands = {dict(labels).get("command") for (n, labels) in samples
                if n == "mailproxy_command_duration_seconds_count"}
    assert "SELECT" in commands and "IDLE" not in commands
    expiry = x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc.timestamp()
    assert value(samples, "mailproxy_certificate_expiry_timestamp_seconds", listener="imap",
                 certificate=str(cert)) == expiry
    assert 29 * 86400 < expiry - time.time() <= 30 * 86400
    mechanisms = {(dict(lb)["protocol"], dict(lb)["mechanism"]) for (n, lb) in samples
                  if n == "mailproxy_auth_attempts_total"}
    assert mechanisms == {("imap", "LOGIN"), ("imap", "PLAIN"), ("pop3", "USER"),
                          ("pop3", "PLAIN"), ("pop3", "LOGIN")}
