"""A private OpenLDAP `slapd` for tests: its own slapd.conf, mdb database and loopback port.

`start_slapd(directory, ldif)` writes a slapd.conf (core, cosine, inetorgperson and nis schemas; one mdb
database under `dc=example,dc=com` whose root DN `cn=admin,dc=example,dc=com` has password
`ROOT_PASSWORD`), loads `ldif` offline with slapadd, starts `slapd -d 0` in the foreground on a
free port (ldap://127.0.0.1:PORT) and returns once a TCP connect succeeds. `stop()` sends
SIGTERM and waits (SIGKILL after a bounded wait). Needs Debian's `slapd` and `ldap-utils`.
"""

from __future__ import annotations

import pathlib
import shutil
import socket
import subprocess
import time

from .dovecot import free_ports

MISSING_MESSAGE = "install slapd and ldap-utils (make test does this)"
BASE_DN = "dc=example,dc=com"
ROOT_DN = f"cn=admin,{BASE_DN}"
ROOT_PASSWORD = "admin-secret"
START_TIMEOUT = 10.0
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
        self.out = open(self.dir / "slapd.out", "wb")
        self.proc = subprocess.Popen([slapd, "-f", str(self.conf), "-h", self.url + "/", "-d", "0"],
                                     stdin=subprocess.DEVNULL, stdout=self.out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"slapd exited {self.proc.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"slapd not ready on {self.port}:\n{self.log()}") from None
                time.sleep(0.05)

    def log(self) -> str:
        return (self.dir / "slapd.out").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()
