"""deploy/systemd/mailproxy.service: checks the config before starting, runs `serve` on the same
file, reloads with SIGHUP, drains within its stop timeout, and does not restart on a config error.
The commands it runs are real mailproxy commands (run here with this checkout)."""

from __future__ import annotations

import configparser
import shlex
import subprocess
import sys
from pathlib import Path

from proxy import config as config_mod

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "deploy" / "systemd" / "mailproxy.service"


def service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keys are case-sensitive in systemd
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def test_unit_checks_then_serves_the_same_config_and_reloads_with_sighup() -> None:
    unit = service()
    check = shlex.split(unit["ExecStartPre"])
    serve = shlex.split(unit["ExecStart"])
    assert check[1:3] == ["check-config", serve[-1]]
    assert serve[-3:-1] == ["serve", "--config"]
    assert unit["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert unit["KillSignal"] == "SIGTERM"
    default_drain = config_mod.Config.__dataclass_fields__["shutdown_timeout"].default
    assert float(unit["TimeoutStopSec"].rstrip("s")) > default_drain
    assert unit["RestartPreventExitStatus"] == "2"   # the CLI's exit status for config errors


def test_unit_commands_are_real_cli_commands(tmp_path: Path) -> None:
    unit = service()
    config = tmp_path / "mailproxy.yaml"
    config.write_text("listeners: []\n")
    check = shlex.split(unit["ExecStartPre"])[1:-1] + [str(config)]
    result = subprocess.run([sys.executable, "-m", "proxy", *check], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    serve = shlex.split(unit["ExecStart"])[1:-1] + [str(config)]
    result = subprocess.run([sys.executable, "-m", "proxy", *serve], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
