"""A private OpenLDAP `slapd` for tests: its own slapd.conf, mdb database and loopback port.

`start_slapd(directory, ldif)` writes a slapd.conf (core, cosine, inetorgperson and nis schemas; one mdb
database under `dc=example,dc=com` whose root DN `cn=admin,dc=example,dc=com` has password
`ROOT_PASSWORD`), loads `ldif` offline with slapadd, starts `slapd -d 0` in the foreground on a
free port (ldap://127.0.0.1:PORT) and returns once a TCP connect succeeds (support/daemon.py).
`stop()` sends SIGTERM and waits (SIGKILL after a bounded wait). Needs Debian's `slapd` and
`ldap-utils`.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess

from .daemon import Foreground, accepts
from .dovecot import free_ports

MISSING_MESSAGE = "install slapd and ldap-utils (make test does this)"
BASE_DN = "dc=example,dc=com"
ROOT_DN = f"cn=admin,{BASE_DN}"
ROOT_PASSWORD = "admin-secret"
_SBIN = "/usr/sbin:/usr/bin:/sbin"


class Slapd:
    def __init__(self, directory: pathlib.Path, ldif: str):
        slapd, slapadd = shutil.which("slapd", path=_SBIN), shutil.which("slapadd", path=_SBIN)
        if slapd is None or slapadd is None:
            raise AssertionError(MISSING_MESSAGE)
        self.dir = pathlib.Path(directory)
        (self.dir / "db").mkdir(parents=True)
        (self.port,) = free_ports(1)
        self.url = f"ldap://127.0.0.1:{self.port}"
        self.conf = self.dir / "slapd.conf"
        self.conf.write_text(f"""
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
pidfile {self.dir}/slapd.pid
modulepath /usr/lib/ldap
moduleload back_mdb
database mdb
maxsize 10485760
suffix "{BASE_DN}"
rootdn "{ROOT_DN}"
rootpw {ROOT_PASSWORD}
directory {self.dir}/db
""")
        (self.dir / "data.ldif").write_text(ldif)
        added = subprocess.run([slapadd, "-f", str(self.conf), "-l", str(self.dir / "data.ldif")],
                               capture_output=True, text=True, timeout=30, check=False)
        if added.returncode != 0:
            raise AssertionError(f"slapadd failed ({added.returncode}):\n{added.stdout}{added.stderr}")
        self.server = Foreground("slapd", [slapd, "-f", str(self.conf), "-h", self.url + "/",
                                           "-d", "0"], self.dir)
        self.server.wait_ready({f"port {self.port}": accepts(self.port)})

    def log(self) -> str:
        return self.server.output()

    def stop(self) -> None:
        self.server.stop()
