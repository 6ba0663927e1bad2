"""The defaults an operator meets first work as documented: `make run`'s certificate answers for
the addresses the README tells clients to use, and that config passes check-config."""

from __future__ import annotations

import ipaddress
import re
import shlex
import subprocess
import sys
from pathlib import Path

from cryptography import x509

ROOT = Path(__file__).resolve().parents[1]


def test_make_run_certificate_names_localhost_and_127_0_0_1(tmp_path: Path) -> None:
    recipe = re.search(r"mailproxy gen-cert (.*)$", (ROOT / "Makefile").read_text(), re.M)
    assert recipe, "make run must write its certificate with mailproxy gen-cert"
    args = shlex.split(recipe.group(1))
    args[args.index("--out") + 1] = str(tmp_path / "tls")
    result = subprocess.run([sys.executable, "-m", "proxy", "gen-cert", *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    cert = x509.load_pem_x509_certificate((tmp_path / "tls" / "cert.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    # and `make run`'s config, beside that certificate, passes check-config
    (tmp_path / "mailproxy.yaml").write_text((ROOT / "config" / "mailproxy.yaml").read_text())
    check = subprocess.run([sys.executable, "-m", "proxy", "check-config",
                            str(tmp_path / "mailproxy.yaml")], capture_output=True, text=True,
                           timeout=60)
    assert (check.returncode, check.stderr) == (0, "")
