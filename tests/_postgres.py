"""A throwaway PostgreSQL server for tests: a cluster in a temporary folder, on 127.0.0.1 and a free
port, with a user that logs in with a password; stopped and removed afterwards.

Debian's `postgresql` package puts the server under /usr/lib/postgresql/<version>/bin (.ci/run
installs it where it is missing). PostgreSQL refuses to run as root, so as root the cluster runs as
the package's `postgres` user. `start()` returns the reason instead of a server where none can be had.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

USER = "sweeper"


def _bin_dir() -> Path | None:
    installed = Path("/usr/lib/postgresql").glob("*/bin/initdb")
    found = sorted(installed, key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    bin: Path
    root: Path  # the cluster's folder; its socket lives here too
    port: int
    password: str
    as_user: list[str]  # the command prefix that runs the server's programs as its user

    def url(self, database: str, *, password: bool = True) -> str:
        secret = f":{self.password}" if password else ""
        return f"postgresql://{USER}{secret}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new database owned by the test user; its URL, password included."""
        self.sql(f'CREATE DATABASE "{name}" OWNER {USER}')
        return self.url(name)

    def sql(self, statement: str, *values) -> None:
        """Run a statement as the superuser, over the cluster's socket."""
        import psycopg

        with psycopg.connect(host=str(self.root), port=self.port, user="postgres", dbname="postgres") as conn:
            conn.autocommit = True
            psycopg.ClientCursor(conn).execute(statement, values or None)  # binds here: DDL takes no $1

    def stop(self) -> None:
        self._ctl("stop", "-m", "immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def _ctl(self, *args: str) -> subprocess.CompletedProcess:
        command = [*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)


def _runner() -> tuple[list[str], int | None, int | None] | str:
    """How to run the server's programs: as this user, or (as root) as `postgres`."""
    if os.geteuid() != 0:
        return [], None, None
    import pwd

    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        return "running as root and there is no 'postgres' user to run PostgreSQL as"
    runuser = shutil.which("runuser")  # util-linux: on every Debian
    if runuser is None:
        return "running as root and there is no runuser to run PostgreSQL as 'postgres'"
    return [runuser, "-u", "postgres", "--"], entry.pw_uid, entry.pw_gid


def start() -> Server | str:
    """A running server, or why none can be had."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (the sweep extra)"
    bin_dir = _bin_dir()
    if bin_dir is None:
        return "no PostgreSQL server installed (Debian: apt-get install postgresql)"
    how = _runner()
    if isinstance(how, str):
        return how
    prefix, uid, gid = how
    root = Path(tempfile.mkdtemp(prefix="finetune-pg-"))  # not under pytest's folders: only root enters those
    if uid is not None:
        os.chown(root, uid, gid)
    init = subprocess.run(
        [*prefix, str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", "postgres", "--auth-local=trust",
         "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        return f"initdb failed: {(init.stderr or init.stdout).strip()[-300:]}"
    password = "pw-" + secrets.token_hex(12)
    for _attempt in range(3):  # a free port can be taken between the look and the start
        server = Server(bin_dir, root, _free_port(), password, prefix)
        options = f"-k {root} -h 127.0.0.1 -p {server.port} -F -c full_page_writes=off -c synchronous_commit=off"
        started = server._ctl("-l", str(root / "server.log"), "-w", "-t", "60", "-o", options, "start")
        if started.returncode == 0:
            break
    else:
        log = (root / "server.log").read_text(errors="replace")[-300:] if (root / "server.log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        return f"the PostgreSQL server did not start: {(started.stderr or log).strip()}"
    try:
        server.sql(f"CREATE ROLE {USER} LOGIN PASSWORD %s", password)
    except Exception:
        server.stop()
        raise
    return server
