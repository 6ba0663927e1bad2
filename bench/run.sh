#!/usr/bin/env bash
# Run every relay benchmark (bench/README.md): direct Dovecot vs mailproxy (vs nginx's mail proxy),
# interleaved in one run. `make bench` calls this. Extra arguments go to bench/relay.py, e.g.
#   bash bench/run.sh --messages 500 --rounds 3        bash bench/run.sh imap tls
# Needs root (Dovecot runs as root with an unprivileged mail user, as in the tests). Installs Dovecot
# (scripts/install-test-deps.sh) and nginx + its mail module when missing. About 6-8 minutes on 2 cores.
set -euo pipefail

cd "$(dirname "$0")/.."
PY=.venv/bin/python

if [[ ! -x $PY ]] || ! $PY -c 'import proxy, trustme, yaml' >/dev/null 2>&1; then
    python3 -m venv .venv
    $PY -m pip install --disable-pip-version-check -q -e '.[test]'
fi

if ! command -v dovecot >/dev/null 2>&1 && [[ ! -x /usr/sbin/dovecot ]] || ! getent passwd mailproxytest >/dev/null; then
    bash scripts/install-test-deps.sh
fi

SUDO=()
[[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null 2>&1 && SUDO=(sudo)
if [[ ! -x /usr/sbin/nginx ]] || ! dpkg -s libnginx-mod-mail 2>/dev/null | grep -q '^Status: install ok installed$'; then
    echo "bench: installing nginx-light and libnginx-mod-mail for the nginx comparison"
    "${SUDO[@]}" apt-get update -q || true
    if ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            nginx-light libnginx-mod-mail; then
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            nginx libnginx-mod-mail || echo "bench: no nginx; its columns are skipped" >&2
    fi
fi

exec $PY bench/relay.py "$@"
