"""What `check-config` and `serve` both check beyond the YAML itself: every file the config names.

`config.load()` validates the text; `file_problems()` then loads what the text points at, exactly
as `serve` would: each listener's certificates and keys (net.tls.ServerTLS), each upstream's CA
file and client certificate (net.tls.client_context), the gateway's key file (store.KeyRing), and
an OAuth2 upstream's password, key and token files (proxy/oauth2).
So `check-config` says OK only to a config `serve` starts with.

`StartupError` is a refusal met while starting (an address already in use): the CLI prints its
one line and exits 1, instead of a traceback.
"""

from __future__ import annotations

from cryptography import x509

from .config import Config, OAuth2
from .net.tls import ServerTLS, TLSConfigError, client_context
from .oauth2.passwords import PasswordFile, PasswordFileError
from .oauth2.token_file import TokenFile, TokenFileError
from .store import StoreError, StoreKeyError, display_store, load_key_ring

EXIT_RUNTIME, EXIT_CONFIG = 1, 2


class StartupError(Exception):
    """`serve` cannot start; the message names the setting, its value and what to do. `status`
    is the exit status (a worker's failure carries its own)."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


def file_problems(config: Config) -> list[str]:
    """Every problem with a file the config names, one line each (empty when all load)."""
    problems = []
    for i, listener in enumerate(config.listeners):
        if listener.tls != "none" and listener.certificates:
            try:
                ServerTLS(listener)
            except TLSConfigError as exc:
                problems.append(f"listeners[{i}].certificates: {exc}")
    for name, upstream in config.upstreams.items():
        try:
            if any(port is not None and port.tls != "none" for port in (upstream.imap, upstream.pop3)):
                client_context(upstream, name, warn=False)  # the runtime warns, once
        except TLSConfigError as exc:
            problems.append(f"upstreams.{name}: {exc}")
        if upstream.auth is not None and upstream.auth.oauth2 is not None:
            problems += _oauth2_problems(f"upstreams.{name}.auth.oauth2", upstream.auth.oauth2)
    gateway = config.gateway
    if gateway is not None and gateway.key_file is not None:
        try:
            load_key_ring(gateway.key_file)
        except StoreKeyError as exc:
            problems.append(f"gateway.key_file: {exc}; `mailproxy gen-key --out FILE` writes "
                            f"a valid one")
    return problems


def _oauth2_problems(where: str, settings: OAuth2) -> list[str]:
    """The password file parses, the key file loads, the token file (when present) is one."""
    problems = []
    try:
        PasswordFile(settings.password_file).load()
    except PasswordFileError as exc:
        problems.append(f"{where}.password_file: {exc}")
    tokens = TokenFile(settings.token_file, settings.key_file)
    try:
        tokens.ring()
    except TokenFileError as exc:
        problems.append(f"{where}.{exc}; `mailproxy gen-key --out FILE` writes a valid one")
    try:
        tokens.users()
    except TokenFileError as exc:
        problems.append(f"{where}.token_file: {exc}")
    return problems


def bind_error(setting: str, address: object, exc: OSError) -> StartupError:
    """A failed bind as one line: `listeners[0].address 127.0.0.1:1143: address already in use`."""
    why = exc.strerror or str(exc)
    hint = ("stop the program using it or choose another address"
            if "in use" in why.lower() else "check the address")
    return StartupError(f"{setting} {address}: cannot listen: {why.lower()}; {hint}")


def certificate_expiries(config: Config) -> list[tuple[str, str, float]]:
    """(listener, certificate file, expiry as Unix time) of every listener certificate that
    loads; the ones that do not are file_problems()."""
    found = []
    for listener in config.listeners:
        for certificate in listener.certificates:
            try:
                cert = x509.load_pem_x509_certificate(certificate.cert.read_bytes())
            except (OSError, ValueError):
                continue
            found.append((listener.name, str(certificate.cert),
                          cert.not_valid_after_utc.timestamp()))
    return found


def startup_failure(exc: BaseException, config: Config) -> tuple[str, int] | None:
    """(one line for the operator, exit status) when `exc` (raised by serving `config`, maybe
    inside exception groups) is a problem an operator can fix; None for a bug (a traceback)."""
    leaf = _leaf(exc, (StartupError, TLSConfigError, StoreError, NotImplementedError))
    if leaf is None:
        return None
    message = str(leaf)
    if isinstance(leaf, (StoreError, NotImplementedError)):
        store = config.gateway.store if config.gateway is not None else ""
        message = f"gateway.store {display_store(store)}: {leaf}"
        if isinstance(leaf, StoreKeyError) and config.gateway is not None:
            message = (f"gateway.key_file {config.gateway.key_file}: {leaf}; the store was "
                       f"written with other keys: configure the key file it was written "
                       f"with (rotate keys by appending a line, never by replacing the file)")
    if isinstance(leaf, StartupError):
        return message, leaf.status
    return message, EXIT_CONFIG if isinstance(leaf, (TLSConfigError, StoreKeyError)) else EXIT_RUNTIME


def _leaf(exc: BaseException, types: tuple[type[BaseException], ...]) -> BaseException | None:
    """`exc` itself, or the first exception of `types` inside (nested) exception groups."""
    if isinstance(exc, types):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _leaf(inner, types)
            if found is not None:
                return found
    return None
