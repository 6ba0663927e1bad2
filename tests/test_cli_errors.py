"""What an operator sees when a config or the machine is wrong: one line naming the setting, the
value and what to do, exit status 2 (config) or 1 (runtime), never a traceback. `check-config`
finds every problem `serve` would, including those in the files the config names."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from proxy import certgen
from proxy import config as config_mod
from proxy.store import KeyRing
from support.dovecot import free_ports

EXIT_RUNTIME, EXIT_CONFIG = 1, 2


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def write_config(tmp_path: Path, extra: dict | None = None, **listener: object) -> Path:
    port, metrics = free_ports(2)
    config = {
        "listeners": [{"name": "imap", "protocol": "imap", "address": f"127.0.0.1:{port}",
                       **listener}],
        "upstreams": {"main": {"host": "127.0.0.1", "imap": {"port": 1}, "pop3": {"port": 1}}},
        "routes": [{"match": "*", "upstream": "main"}],
        "metrics": {"address": f"127.0.0.1:{metrics}"},
        **(extra or {}),
    }
    path = tmp_path / "mailproxy.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def errors_of(text: str) -> list[str]:
    with pytest.raises(config_mod.ConfigError) as info:
        config_mod.loads(text)
    return info.value.errors


def assert_one_line(result: subprocess.CompletedProcess[str], code: int, expected: str) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, result.stderr
    assert result.stderr.splitlines()[-1] == expected


BASE = """\
listeners:
  - name: imap
    protocol: imap
    adress: 127.0.0.1:1143
upstreams:
  main: {host: 127.0.0.1, imap: {port: 143}, imapp: 3}
routes: [{match: "*", upstream: main}]
logging: {user: fulll}
shutdown_timeout: soon
"""


def test_config_errors_in_the_projects_words() -> None:
    assert errors_of(BASE) == [
        "line 2: missing required key 'address' in listeners[0]",
        "line 4: unknown key 'adress' in listeners[0]; did you mean 'address'?",
        "line 6: unknown key 'imapp' in upstreams.main; did you mean 'imap'?",
        "line 8: logging.user: expected one of full, domain, hash; got 'fulll'; "
        "did you mean 'full'?",
        "line 9: shutdown_timeout: expected a duration such as 30s, 10m, 2h or 30d",
    ]


def test_type_errors_name_the_expected_type_and_hide_secrets() -> None:
    text = BASE.replace("adress", "address").replace("imapp: 3", "verify: maybe") \
        .replace("fulll", "hash, hash_key: 5").replace("soon", "30s")
    assert errors_of(text.replace("{port: 143}", "{port: lots}")) == [
        "line 6: upstreams.main.imap.port: expected an integer, got 'lots'",
        "line 6: upstreams.main.verify: expected true or false, got 'maybe'",
        "line 8: logging.hash_key: a secret is {file: PATH} or {env: NAME}, never inline",
    ]


def test_two_listeners_on_one_address_and_background_poll_without_key(tmp_path: Path) -> None:
    config = """\
listeners:
  - {name: imap, protocol: imap, address: 127.0.0.1:1143}
  - {name: pop3, protocol: pop3, address: 127.0.0.1:1143}
  - {name: gw, protocol: imap, mode: gateway, address: "0.0.0.0:9100"}
upstreams:
  main: {host: 127.0.0.1, imap: {port: 143}, pop3: {port: 110}}
routes: [{match: "*", upstream: main}]
gateway: {store: gw.db, background_poll: true}
metrics: {address: "127.0.0.1:9100"}
"""
    assert errors_of(config) == [
        "line 3: listeners[1].address: 127.0.0.1:1143 is also used by listeners[0].address; "
        "give each listener its own port",
        "line 4: listeners[2].address: 0.0.0.0:9100 is also used by metrics.address; "
        "give each listener its own port",
        "line 8: gateway.background_poll: background_poll needs gateway.key_file (credentials "
        "are stored only encrypted); set key_file (mailproxy gen-key writes one) or remove "
        "background_poll",
    ]
    path = tmp_path / "bad.yaml"
    path.write_text(config)
    result = run("check-config", str(path), cwd=tmp_path)
    assert_one_line(result, EXIT_CONFIG, f"{path}: " + errors_of(config)[-1])
    assert len(result.stderr.splitlines()) == 3


def test_check_config_loads_certificates_and_key_file(tmp_path: Path) -> None:
    (tmp_path / "key.txt").write_text("not a key\n")
    path = write_config(tmp_path, {"gateway": {"store": "gw.db", "key_file": "key.txt"}},
                        tls="implicit", certificates=[{"cert": "tls/cert.pem", "key": "tls/key.pem"}])
    result = run("check-config", str(path), cwd=tmp_path)
    assert "Traceback" not in result.stderr
    assert result.returncode == EXIT_CONFIG
    assert result.stderr.splitlines() == [
        f"{path}: listeners[0].certificates: {tmp_path}/tls/cert.pem: No such file or directory",
        f"{path}: gateway.key_file: key file line 1: expected keyid:base64key; "
        f"`mailproxy gen-key --out FILE` writes a valid one",
    ]
    # serve refuses the same config with the same lines
    served = run("serve", "--config", str(path), cwd=tmp_path)
    assert (served.returncode, served.stderr) == (result.returncode, result.stderr)
    # fixed: OK
    certgen.generate(tmp_path / "tls", ["localhost"])
    (tmp_path / "key.txt").write_text(KeyRing.generate_line("k1") + "\n")
    fixed = run("check-config", str(path), cwd=tmp_path)
    assert (fixed.returncode, fixed.stdout, fixed.stderr) == (0, f"{path}: OK\n", "")


def test_missing_key_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"gateway": {"store": "gw.db", "key_file": "nope.key"}})
    result = run("check-config", str(path), cwd=tmp_path)
    assert_one_line(result, EXIT_CONFIG,
                    f"{path}: gateway.key_file: cannot read key file {tmp_path}/nope.key: No such "
                    f"file or directory; `mailproxy gen-key --out FILE` writes a valid one")


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("which", ["listener", "metrics"])
def test_port_in_use_is_one_line_exit_1(tmp_path: Path, which: str, workers: int) -> None:
    path = write_config(tmp_path, {"workers": workers})
    config = yaml.safe_load(path.read_text())
    address = config["listeners"][0]["address"] if which == "listener" \
        else config["metrics"]["address"]
    host, port = address.rsplit(":", 1)
    with socket.socket() as busy:
        busy.bind((host, int(port)))
        busy.listen()
        result = run("serve", "--config", str(path), cwd=tmp_path)
    setting = "listeners[0].address" if which == "listener" else "metrics.address"
    assert_one_line(result, EXIT_RUNTIME,
                    f"{path}: {setting} {address}: cannot listen: address already in use; "
                    f"stop the program using it or choose another address")


def test_wrong_key_file_is_one_line_exit_2(tmp_path: Path) -> None:
    (tmp_path / "k1").write_text(KeyRing.generate_line("k1") + "\n")
    (tmp_path / "k2").write_text(KeyRing.generate_line("k2") + "\n")
    gateway = {"store": "gw.db", "key_file": "k1"}
    path = write_config(tmp_path, {"gateway": gateway}, mode="gateway")
    config = yaml.safe_load(path.read_text())
    config["upstreams"]["main"].pop("imap")
    path.write_text(yaml.safe_dump(config))
    import trio

    from proxy.store import load_key_ring, open_store

    async def create() -> None:   # a store written with key k1
        store = await open_store(str(tmp_path / "gw.db"), load_key_ring(tmp_path / "k1"))
        await store.close()

    trio.run(create)
    config["gateway"]["key_file"] = "k2"
    path.write_text(yaml.safe_dump(config))
    result = run("serve", "--config", str(path), cwd=tmp_path)
    assert_one_line(result, EXIT_CONFIG,
                    f"{path}: gateway.key_file {tmp_path}/k2: store key check: no key 'k1' in key "
                    f"ring; the store was written with other keys: configure the key file it was "
                    f"written with (rotate keys by appending a line, never by replacing the file)")


@pytest.mark.parametrize("workers", [1, 2])
def test_unreachable_store_url_is_one_line(tmp_path: Path, workers: int) -> None:
    """With workers, the worker that failed tells the supervisor, which says it once."""
    store = "postgresql://mailproxy:pw-in-url@127.0.0.1:1/mailproxy"
    path = write_config(tmp_path, {"gateway": {"store": store}, "workers": workers},
                        mode="gateway")
    result = run("serve", "--config", str(path), cwd=tmp_path)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == EXIT_RUNTIME
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"{path}: gateway.store postgresql://mailproxy@127.0.0.1:1/mailproxy: ")
    assert "Connection refused" in last
    assert "pw-in-url" not in result.stderr


def test_bad_log_level_is_a_usage_error() -> None:
    result = run("--log-level", "foo", "check-config", "x.yaml", cwd=Path.cwd())
    assert_one_line(result, EXIT_CONFIG,
                    "mailproxy: error: argument --log-level: invalid choice: 'FOO' "
                    "(choose from 'DEBUG', 'INFO', 'WARNING', 'ERROR')")


@pytest.mark.parametrize("kind", ["under-a-file", "a-directory"])
def test_unwritable_store_path_is_one_line(tmp_path: Path, kind: str) -> None:
    """Issue 14: a store path that cannot be created or opened names the path, no traceback."""
    (tmp_path / "plain").write_text("not a directory\n")
    (tmp_path / "dir.db").mkdir()
    store = "plain/gw.db" if kind == "under-a-file" else "dir.db"
    path = write_config(tmp_path, {"gateway": {"store": store}}, mode="gateway")
    config = yaml.safe_load(path.read_text())
    config["upstreams"]["main"].pop("imap")
    path.write_text(yaml.safe_dump(config))
    result = run("serve", "--config", str(path), cwd=tmp_path)
    reason = "cannot create the store file: Not a directory" if kind == "under-a-file" \
        else "cannot open the store: unable to open database file"
    assert_one_line(result, EXIT_RUNTIME, f"{path}: gateway.store {tmp_path}/{store}: {reason}")


@pytest.mark.parametrize("workers", [2, "auto"])
def test_gateway_on_sqlite_refuses_several_workers(tmp_path: Path, workers: object) -> None:
    path = write_config(tmp_path, {"gateway": {"store": "gw.db"}, "workers": workers},
                        mode="gateway")
    line = path.read_text().splitlines().index(f"workers: {workers}") + 1
    result = run("check-config", str(path), cwd=tmp_path)
    assert (result.returncode, result.stderr) == (EXIT_CONFIG, (
        f"{path}: line {line}: workers: {workers} with a gateway listener needs gateway.store on "
        f"PostgreSQL (postgresql://...): a SQLite store belongs to one process; use workers: 1 "
        f"or a PostgreSQL store\n"))
    served = run("serve", "--config", str(path), cwd=tmp_path)
    assert (served.returncode, served.stderr) == (EXIT_CONFIG, result.stderr)


@pytest.mark.parametrize(("extra", "mode"), [
    ({"gateway": {"store": "gw.db"}, "workers": 1}, "gateway"),
    ({"gateway": {"store": "postgresql://mailproxy@127.0.0.1/mailproxy"}, "workers": 4},
     "gateway"),
    ({"gateway": {"store": "gw.db"}, "workers": "auto"}, "relay"),   # no gateway listener
])
def test_workers_accepted(tmp_path: Path, extra: dict, mode: str) -> None:
    path = write_config(tmp_path, extra, mode=mode)
    result = run("check-config", str(path), cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{path}: OK\n", "")


@pytest.mark.parametrize("workers", ["0", "257", "many", "2.5", "true"])
def test_workers_out_of_range(workers: str) -> None:
    text = BASE.replace("adress", "address").replace(", imapp: 3", "").replace("fulll", "full")
    text = text.replace("shutdown_timeout: soon", f"workers: {workers}")
    assert errors_of(text) == ["line 9: workers: expected 1 to 256 processes, or auto (one per CPU)"]


def test_gateway_thread_limits_out_of_range() -> None:
    config = """\
listeners:
  - {name: gw, protocol: imap, mode: gateway, address: "127.0.0.1:9100"}
upstreams:
  main: {host: 127.0.0.1, imap: {port: 143}, pop3: {port: 110}}
routes: [{match: "*", upstream: main}]
gateway: {store: gw.db, limits: {command_threads: 0, ingest_threads: 65}}
"""
    assert errors_of(config) == [
        "line 6: gateway.limits.command_threads: expected 1 to 64 threads",
        "line 6: gateway.limits.ingest_threads: expected 1 to 64 threads",
    ]
    loaded = config_mod.loads(config.replace("0, ingest_threads: 65", "8, ingest_threads: 3"))
    assert loaded.gateway is not None
    assert (loaded.gateway.limits.command_threads, loaded.gateway.limits.ingest_threads) == (8, 3)
