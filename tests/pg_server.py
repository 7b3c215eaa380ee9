"""A throwaway PostgreSQL server for the tests and tools/bench_fleet.py, started and stopped by them.

``initdb`` into a temporary directory, then ``pg_ctl start`` with the server
listening only on a Unix socket inside that directory (no TCP port to collide
with anything else on the machine).  The server refuses to run as root, so as
root everything runs as the ``postgres`` user (``runuser``) and the directory
is handed to it.  Clients log in as the role ``tokencsp`` with a SCRAM password
read from a pgpass file (``PGPASSFILE``): never on a command line.

Under CI=true a missing server fails the run instead of skipping: a CI that
skipped these tests would pass having checked nothing.
"""

from __future__ import annotations

import glob
import itertools
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

ROLE = "tokencsp"
DATABASE = "tokencsp"
PORT = 5432  # only names the socket file (.s.PGSQL.5432) inside our own directory


class ServerUnavailable(RuntimeError):
    pass


def _bindir() -> Path:
    # A particular PostgreSQL build, or (in a test) none; not TOKENCSP_*: conftest drops those.
    override = os.environ.get("PGTEST_BINDIR")
    if override:
        if not (Path(override) / "pg_ctl").exists():
            raise ServerUnavailable(f"no pg_ctl in PGTEST_BINDIR={override}")
        return Path(override)
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if not candidates:
        raise ServerUnavailable("PostgreSQL is not installed (no pg_ctl): run postgres/install-deps.sh or `make venv`")
    return Path(candidates[-1]).parent


class PgServer:
    def __init__(self, base: Path | None = None) -> None:
        self.bindir = _bindir()
        self.base = Path(base) if base is not None else Path(tempfile.mkdtemp(prefix="tokencsp-pg-"))
        self.data = self.base / "data"
        self.socket_dir = self.base
        self.log = self.base / "server.log"
        self.passfile = self.base / "pgpass"
        self.password = secrets.token_hex(16)
        self._as_postgres = os.geteuid() == 0
        self._schemas = itertools.count()
        self._watchdog: subprocess.Popen[bytes] | None = None

    # -- processes ---------------------------------------------------------------

    def _run(self, *argv: str, timeout: float = 120) -> None:
        command = [str(self.bindir / argv[0]), *argv[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise ServerUnavailable(f"{' '.join(argv[:2])} failed ({result.returncode}): "
                                    f"{result.stderr.strip() or result.stdout.strip()}\n{log}")

    def init(self) -> None:
        if self._as_postgres:
            shutil.chown(self.base, "postgres", "postgres")
        self.base.chmod(0o755)  # the socket lives here; the data dir below is 0700
        pwfile = self.base / "superuser.pw"
        pwfile.write_text(secrets.token_hex(16) + "\n")
        if self._as_postgres:
            shutil.chown(pwfile, "postgres", "postgres")
        pwfile.chmod(0o600)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--pwfile", str(pwfile),
                  "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-instructions")
        pwfile.unlink()
        # The superuser (the tests' own set-up connection) needs no password on
        # this private socket; the application role needs its password.
        hba = self.data / "pg_hba.conf"
        hba.write_text("local all postgres trust\nlocal all all scram-sha-256\n")
        if self._as_postgres:
            shutil.chown(hba, "postgres", "postgres")
        self.passfile.write_text(f"*:*:*:{ROLE}:{self.password}\n")
        self.passfile.chmod(0o600)  # libpq ignores a pgpass file readable by others

    def start(self) -> None:
        options = f"-k {self.socket_dir} -p {PORT} -c listen_addresses= -c max_connections=60"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """mode "immediate" is a crash: no checkpoint, the next start replays the WAL."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str = "immediate") -> None:
        self.stop(mode)
        self.start()

    def running(self) -> bool:
        command = [str(self.bindir / "pg_ctl"), "-D", str(self.data), "status"]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, stdin=subprocess.DEVNULL).returncode == 0

    # -- clients ---------------------------------------------------------------

    def admin(self, dbname: str = DATABASE):  # -> psycopg.Connection
        """A superuser connection (autocommit) to the tests' database, or to ``dbname``."""
        import psycopg

        return psycopg.connect(host=str(self.socket_dir), port=PORT, user="postgres", dbname=dbname,
                               autocommit=True)

    def create_role_and_database(self) -> None:
        with self.admin("postgres") as db:
            db.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{self.password}'")
            db.execute(f"CREATE DATABASE {DATABASE} OWNER {ROLE}")

    def dsn(self, schema: str | None = None) -> str:
        """A libpq URI for the role; the password comes from PGPASSFILE, never from here."""
        uri = f"postgresql://{ROLE}@/{DATABASE}?host={quote(str(self.socket_dir), safe='/')}&port={PORT}"
        if schema is not None:
            uri += "&options=" + quote(f"-csearch_path={schema}", safe="")
        return uri

    def new_schema(self) -> str:
        """A fresh, empty schema owned by the role: one per test keeps tests independent."""
        name = f"t{os.getpid()}_{next(self._schemas)}"
        with self.admin() as db:
            db.execute(f"CREATE SCHEMA {name} AUTHORIZATION {ROLE}")
        return name

    def wait_until_accepting(self, timeout: float = 30) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                self.admin("postgres").close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def destroy(self) -> None:
        if self.running():
            self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)
        if self._watchdog is not None:
            self._watchdog.stdin.close()  # it finds nothing left to stop
            self._watchdog.wait(60)


# Stops the server when the process that started it dies without cleaning up
# (SIGKILL, a timeout's SIGTERM): it waits for EOF on a pipe only that process
# holds.  pg_ctl detaches the server, so nothing else would ever stop it.
_WATCHDOG = """
import shutil, subprocess, sys
sys.stdin.buffer.read()
command = sys.argv[4:] + [sys.argv[1], "-D", sys.argv[2], "-m", "immediate", "stop"]
subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
shutil.rmtree(sys.argv[3], ignore_errors=True)
"""


def start_server() -> PgServer:
    server = PgServer()
    try:
        server.init()
        server.start()
        prefix = ["runuser", "-u", "postgres", "--"] if server._as_postgres else []
        server._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(server.bindir / "pg_ctl"), str(server.data), str(server.base),
             *prefix], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        server.create_role_and_database()
    except BaseException:
        server.destroy()
        raise
    return server


# -- pytest fixtures (imported by the test modules that use them) -----------------


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed: pip install -e '.[test]' (or `make venv`)")
    try:
        server = start_server()
    except (ServerUnavailable, OSError, subprocess.SubprocessError) as exc:
        _unavailable(f"cannot start a PostgreSQL test server: {exc}")
    previous = os.environ.get("PGPASSFILE")
    os.environ["PGPASSFILE"] = str(server.passfile)  # subprocesses (tokencsp open) inherit it
    try:
        yield server
    finally:
        if previous is None:
            os.environ.pop("PGPASSFILE", None)
        else:
            os.environ["PGPASSFILE"] = previous
        server.destroy()


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> str:
    """The DSN of a fresh schema on the session's server."""
    if not pg_server.running():  # a test that stopped the server and failed before restarting it
        pg_server.start()
    return pg_server.dsn(pg_server.new_schema())


def _unavailable(why: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(why, pytrace=False)
    pytest.skip(why)
