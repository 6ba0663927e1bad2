"""Structure of the container image (no Docker engine here, so the Dockerfile is read, not built)."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
CONFIG_PATH = "/etc/mailproxy/mailproxy.yaml"
COMPILERS = ("build-essential", "gcc", "g++", "clang", "make ", "python3-dev", "libc6-dev")


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]

    def text(self) -> str:
        return "\n".join(f"{kw} {arg}" for kw, arg in self.instructions)


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Split a Dockerfile into global ARGs and stages of (INSTRUCTION, arguments)."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("#") and not pending:
            continue
        if raw.lstrip().startswith("#"):
            continue  # comment inside a continued instruction
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        line = (pending + raw).strip()
        pending = ""
        if line:
            lines.append(line)
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = rest.split()
            words = [w for w in words if not w.startswith("--platform")]
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), m.group(0)),
                           words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image, name))
        elif not stages:
            if keyword == "ARG":
                key, _, value = rest.partition("=")
                global_args[key] = value
        else:
            stages[-1].instructions.append((keyword, rest))
    return global_args, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse(DOCKERFILE.read_text())[1]


def test_multi_stage_on_python_311_slim(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    for stage in stages:
        assert stage.image == "python:3.11-slim", stage.image
    assert stages[0].name == "builder"


def test_builder_makes_wheels(stages: list[Stage]) -> None:
    assert any("pip wheel . -w /wheels" in arg for arg in stages[0].args("RUN"))


def test_final_stage_installs_the_wheels_without_compilers(stages: list[Stage]) -> None:
    final = stages[-1]
    runs = " ".join(final.args("RUN"))
    assert "pip install --no-cache-dir" in runs and "/wheels/*.whl" in runs
    assert "from=builder" in runs or any("--from=builder" in c for c in final.args("COPY"))
    lowered = final.text().lower()
    for compiler in COMPILERS:
        assert compiler not in lowered, compiler
    assert "apt-get install" not in lowered


def test_runs_as_non_root_mailproxy_uid_10001(stages: list[Stage]) -> None:
    final = stages[-1]
    users = final.args("USER")
    assert users, "the final stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert user in ("mailproxy", "10001")
    runs = " ".join(final.args("RUN"))
    assert re.search(r"useradd\b[^&]*--uid 10001\b[^&]*\bmailproxy\b", runs)
    # USER comes after every RUN, so nothing is installed as the runtime user or run as root later.
    keywords = [kw for kw, _ in final.instructions]
    assert max(i for i, kw in enumerate(keywords) if kw == "RUN") < keywords.index("USER")


def test_entrypoint_and_cmd(stages: list[Stage]) -> None:
    final = stages[-1]
    assert json.loads(final.args("ENTRYPOINT")[-1]) == ["mailproxy"]
    assert json.loads(final.args("CMD")[-1]) == ["serve", "--config", CONFIG_PATH]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "mailproxy" in scripts


def test_config_store_ports_and_healthcheck(stages: list[Stage]) -> None:
    final = stages[-1]
    assert any(CONFIG_PATH in arg for arg in final.args("COPY"))
    assert "/var/lib/mailproxy" in " ".join(final.args("VOLUME") + final.args("RUN"))
    ports = {int(p.split("/")[0]) for arg in final.args("EXPOSE") for p in arg.split()}
    assert {1143, 1110, 9100} <= ports
    check = final.args("HEALTHCHECK")[-1]
    assert "urllib" in check and "CMD" in check
    env = " ".join(final.args("ENV"))
    assert "/healthz" in env or "/healthz" in check


def test_files_the_build_copies_exist_and_are_not_ignored(stages: list[Stage]) -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for stage in stages:
        for arg in stage.args("COPY"):
            words = [w for w in shlex.split(arg) if not w.startswith("--")]
            for source in words[:-1]:
                if any(a.startswith("--from") for a in shlex.split(arg)):
                    continue
                top = source.rstrip("/").split("/")[0]
                assert top not in ignored, source
                if source not in ("pyproject.toml", "README.md"):  # README is someone else's file
                    assert (ROOT / source).exists(), source
    for must in (".git", ".venv", ".tools", "tests"):
        assert must in ignored


# Run inside a fresh network namespace, so the image's fixed ports (1143, 1110, 9100 on 0.0.0.0)
# never meet another test's: bring loopback up, start `mailproxy serve` on the image's config,
# wait until its listeners are bound, check /healthz, read each listener's greeting, stop it
# with SIGTERM.
_IN_NAMESPACE = r"""
import fcntl, json, signal, socket, struct, subprocess, sys, time, urllib.request
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
with socket.socket() as s:
    flags = struct.unpack("16sh", fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sh", b"lo", 0)))[1]
    fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | IFF_UP))
config, health_url, ports = sys.argv[1], sys.argv[2], [int(p) for p in sys.argv[3:]]
proxy = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", config],
                         stderr=subprocess.PIPE, text=True)
result = {"greetings": {}}
try:
    deadline = time.monotonic() + 60   # support.proxyproc.READY_TIMEOUT: load 20 on 2 cores
    ready_url = health_url.replace("/healthz", "/readyz/local")   # listeners bound
    while True:
        try:
            urllib.request.urlopen(ready_url, timeout=2)
            result["health"] = urllib.request.urlopen(health_url, timeout=2).status
            break
        except OSError:
            if time.monotonic() > deadline or proxy.poll() is not None:
                raise
            time.sleep(0.1)
    for port in ports:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            result["greetings"][port] = conn.recv(200).decode()
finally:
    proxy.send_signal(signal.SIGTERM)
    result["log"] = proxy.communicate(timeout=30)[1]
    result["exit"] = proxy.returncode
print(json.dumps(result))
"""


def _ignored() -> list[str]:
    return [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def test_image_serves_with_exactly_the_files_it_copies(stages: list[Stage],
                                                       tmp_path: Path) -> None:
    """Lay out the final stage's COPYs (after .dockerignore) under tmp_path as the image has
    them, then serve that config as the image's CMD does."""
    import fnmatch
    import shutil
    import subprocess
    import sys

    final = stages[-1]
    for arg in final.args("COPY"):
        words = [w for w in shlex.split(arg) if not w.startswith("--")]
        *sources, dest = words
        for source in sources:
            assert not any(fnmatch.fnmatch(source, pattern) or source.startswith(pattern + "/")
                           for pattern in _ignored()), f"{source} is left out by .dockerignore"
            target = tmp_path / dest.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / source, target)
    config = tmp_path / CONFIG_PATH.lstrip("/")
    assert config.exists(), "the image copies no config to " + CONFIG_PATH
    text = config.read_text()
    for address in ("0.0.0.0:1143", "0.0.0.0:1110", "0.0.0.0:9100"):
        assert address in text, f"the image's config must listen on {address}"
    env = " ".join(final.args("ENV"))
    health_url = re.search(r"MAILPROXY_HEALTH_URL=(\S+)", env).group(1)
    unshare = shutil.which("unshare")
    assert unshare, "install util-linux (unshare) to run the image's config in its own network"
    result = subprocess.run(
        [unshare, "--net", sys.executable, "-c", _IN_NAMESPACE, str(config), health_url,
         "1143", "1110"], cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["health"] == 200
    assert outcome["greetings"]["1143"].startswith("* OK "), outcome
    assert outcome["greetings"]["1110"].startswith("+OK "), outcome
    assert "Traceback" not in outcome["log"], outcome["log"]
    assert "address=0.0.0.0:1143" in outcome["log"] and "address=0.0.0.0:1110" in outcome["log"]
    assert outcome["exit"] == 0, outcome["log"]
