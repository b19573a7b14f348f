"""Throwaway PostgreSQL and MariaDB servers for the demo and the tests, on free loopback ports.

Started from the Debian server binaries; when we run as root the servers run as their own system
users (``postgres``, ``mysql``), because ``initdb`` refuses root. Each server lives in its own
temporary directory, is configured for CDC (``wal_level=logical``; ROW binlog with full images and
metadata), and is removed on ``stop()``. Settings can be made wrong on purpose to test preflight.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _is_root() -> bool:
    return os.geteuid() == 0


def _as(user: str, cmd: list[str]) -> list[str]:
    return ["runuser", "-u", user, "--", *cmd] if _is_root() else cmd


def _owned_tempdir(prefix: str, user: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if _is_root():
        shutil.chown(path, user=user, group=user)
    return path


class ServerError(RuntimeError):
    pass


# --------------------------------------------------------------------------- PostgreSQL


def postgres_bindir() -> Path | None:
    """Where the PostgreSQL server binaries are ($CDC_PG_BINDIR, else the newest Debian install)."""
    env = os.environ.get("CDC_PG_BINDIR")
    if env:
        return Path(env)
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
    )
    for c in reversed(candidates):
        if (Path(c) / "initdb").exists() and (Path(c) / "postgres").exists():
            return Path(c)
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


class PostgresServer:
    """A throwaway PostgreSQL cluster with trust auth on 127.0.0.1."""

    def __init__(self, wal_level: str = "logical", settings: dict[str, Any] | None = None):
        bindir = postgres_bindir()
        if bindir is None:
            raise ServerError(
                "PostgreSQL server binaries not found (apt-get install postgresql, or set CDC_PG_BINDIR)"
            )
        self.bindir = bindir
        self.user = "postgres"
        self.port = free_port()
        self.wal_level = wal_level
        self.settings = dict(settings or {})
        self.dir = _owned_tempdir("cdc-pg-", "postgres")
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self._initdb()

    def _run(self, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            _as("postgres", list(cmd)), capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise ServerError(f"{' '.join(cmd)} failed: {result.stderr.strip()}\n{log}")
        return result

    def _initdb(self) -> None:
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )

    def _options(self) -> str:
        opts = {
            "port": self.port,
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.dir),
            "wal_level": self.wal_level,
            "max_replication_slots": 10,
            "max_wal_senders": 10,
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        opts.update(self.settings)
        return " ".join(f"-c {k}={v}" for k, v in opts.items())

    def start(self) -> PostgresServer:
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            self._options(),
            "-w",
            "-t",
            "60",
            "start",
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                _as(
                    "postgres",
                    [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"],
                ),
                capture_output=True,
                timeout=60,
            )

    def restart(self, wal_level: str | None = None, **settings: Any) -> PostgresServer:
        self.stop()
        if wal_level:
            self.wal_level = wal_level
        self.settings.update(settings)
        return self.start()

    def destroy(self) -> None:
        self.stop(mode="immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

    def dsn(self, database: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def execute(
        self, sql: str, database: str = "postgres", params: Any = None
    ) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.dsn(database), autocommit=True) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def create_database(self, name: str) -> str:
        self.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)


# --------------------------------------------------------------------------- MariaDB / MySQL


def mariadb_binaries() -> tuple[str, str] | None:
    server = (
        shutil.which("mariadbd")
        or shutil.which("mysqld")
        or ("/usr/sbin/mariadbd" if os.path.exists("/usr/sbin/mariadbd") else None)
    )
    install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
    return (server, install) if server and install else None


class MariaDBServer:
    """A throwaway MariaDB with a ROW binlog (full images and metadata) on 127.0.0.1, root without password."""

    def __init__(self, log_bin: bool = True, settings: dict[str, Any] | None = None):
        bins = mariadb_binaries()
        if bins is None:
            raise ServerError("MariaDB server binaries not found (apt-get install mariadb-server)")
        self.server_bin, self.install_bin = bins
        self.port = free_port()
        self.log_bin = log_bin
        self.settings: dict[str, Any] = {
            "binlog-format": "ROW",
            "binlog-row-image": "FULL",
            "binlog-row-metadata": "FULL",
        }
        self.settings.update(settings or {})
        self.dir = _owned_tempdir("cdc-maria-", "mysql")
        self.data = self.dir / "data"
        self.socket = self.dir / "mysqld.sock"
        self.log = self.dir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._install()

    def _install(self) -> None:
        cmd = [
            self.install_bin,
            "--no-defaults",
            f"--datadir={self.data}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ]
        if _is_root():
            cmd.append("--user=mysql")
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise ServerError(f"mariadb-install-db failed: {result.stderr.strip()[-2000:]}")

    def start(self) -> MariaDBServer:
        cmd = [
            self.server_bin,
            "--no-defaults",
            f"--datadir={self.data}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.socket}",
            f"--pid-file={self.dir / 'mysqld.pid'}",
            f"--log-error={self.log}",
            "--server-id=1",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=64M",
            "--innodb-flush-log-at-trx-commit=2",
            "--skip-log-slave-updates",
        ]
        if _is_root():
            cmd.append("--user=mysql")
        if self.log_bin:
            cmd.append(f"--log-bin={self.data / 'mysql-bin'}")
        cmd += [f"--{k}={v}" for k, v in self.settings.items()]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready()
        self._grant_tcp_root()
        return self

    def _wait_ready(self, timeout: float = 60) -> None:
        import pymysql

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerError(
                    f"mariadbd exited with {self.proc.returncode}: {self._log_tail()}"
                )
            try:
                pymysql.connect(
                    unix_socket=str(self.socket), user="root", connect_timeout=1
                ).close()
                return
            except pymysql.err.OperationalError:
                time.sleep(0.2)
        raise ServerError(f"mariadbd did not become ready in {timeout}s: {self._log_tail()}")

    def _grant_tcp_root(self) -> None:
        # --skip-name-resolve makes TCP clients match only IP accounts; give root one for 127.0.0.1.
        import pymysql

        with (
            pymysql.connect(unix_socket=str(self.socket), user="root", autocommit=True) as conn,
            conn.cursor() as cur,
        ):
            cur.execute("CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'")
            cur.execute("GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION")

    def _log_tail(self) -> str:
        return self.log.read_text()[-2000:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self, log_bin: bool | None = None, **settings: Any) -> MariaDBServer:
        self.stop()
        if log_bin is not None:
            self.log_bin = log_bin
        self.settings.update({k.replace("_", "-"): v for k, v in settings.items()})
        return self.start()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def dsn(self, database: str = "", user: str = "root", password: str = "") -> str:
        auth = f"{user}:{password}@" if password else f"{user}@"
        return f"mysql://{auth}127.0.0.1:{self.port}/{database}"

    def execute(
        self, sql: str, database: str | None = None, params: Any = None
    ) -> list[tuple[Any, ...]]:
        import pymysql

        with (
            pymysql.connect(
                host="127.0.0.1", port=self.port, user="root", database=database, autocommit=True
            ) as conn,
            conn.cursor() as cur,
        ):
            cur.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []


class _ChildServer:
    """A server run as a child process of ours: ``stop`` ends it (``start`` may run it again)."""

    proc: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


class RedisServer(_ChildServer):
    """A throwaway redis-server on a free loopback port, keeping nothing on disk (the machine's
    own Redis service is never touched). ``stop`` then ``start`` again: the same port, empty, as
    Memorystore without persistence comes back after a failover."""

    def __init__(self) -> None:
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="cdc-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        if shutil.which("redis-server") is None:
            raise ServerError(
                "redis-server is not installed (apt-get install redis-server; "
                "scripts/install-system-deps.sh installs it)"
            )
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        return self

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


#: where Debian's google-cloud-cli-bigtable-emulator package (and the Cloud SDK) put the emulator
_CBTEMULATOR_PATHS = ("/usr/lib/google-cloud-sdk/platform/bigtable-emulator/cbtemulator",)


def cbtemulator_binary() -> str | None:
    """The Bigtable emulator (``cbtemulator``): ``$CDC_CBTEMULATOR``, the PATH, or the Cloud
    SDK's platform folder."""
    explicit = os.environ.get("CDC_CBTEMULATOR")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    found = shutil.which("cbtemulator")
    if found:
        return found
    return next((p for p in _CBTEMULATOR_PATHS if os.access(p, os.X_OK)), None)


class BigtableEmulator(_ChildServer):
    """The Bigtable emulator on a free loopback port, in memory. ``stop`` then ``start`` again:
    the same port, empty. Clients find it through ``BIGTABLE_EMULATOR_HOST`` (``host``)."""

    def __init__(self, project: str = "cdc-test", instance: str = "online") -> None:
        self.port = free_port()
        self.project, self.instance = project, instance
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"bigtable://{self.project}/{self.instance}/cdc_online"

    def start(self) -> BigtableEmulator:
        binary = cbtemulator_binary()
        if binary is None:
            raise ServerError(
                "the Bigtable emulator (cbtemulator) is not installed: apt-get install "
                "google-cloud-cli-bigtable-emulator from Google's Cloud SDK repository, or "
                "`gcloud components install bigtable`; or set CDC_CBTEMULATOR to its path"
            )
        self.proc = subprocess.Popen(
            [binary, "-host", "127.0.0.1", "-port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise ServerError(f"cbtemulator did not start on port {self.port}") from None
                time.sleep(0.05)

    def destroy(self) -> None:
        self.stop()
