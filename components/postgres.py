"""PostgreSQL for the local stack: a private cluster under a directory of fineship's (initdb, pg_ctl; 127.0.0.1
only, scram-sha-256, its password in a libpq password file of mode 0600), or an operator's server given as a
URL. Either way the servers connect with password-less URLs and find the password in that file (`PGPASSFILE`),
so it never appears on a command line or in a log.

PostgreSQL refuses to run as root: when fineship runs as root, the cluster runs as the `postgres` system user
(which the Debian package creates) and its directory belongs to that user.
"""

from __future__ import annotations

import getpass
import grp
import os
import pwd
import re
import secrets
import shutil
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from components.errors import FineshipError
from components.files import write_private
from components.procs import pid_alive, terminate_group

SUPERUSER = "fineship"
INSTALL_HINT = ("install PostgreSQL's server (Debian/Ubuntu: apt-get install postgresql; macOS: brew install "
                "postgresql), or set FINESHIP_STACK_DB to the URL of a PostgreSQL server "
                "(postgresql://user:password@host:5432/postgres)")
_SOCKET_PATH_MAX = 107  # sun_path on Linux, less the terminating NUL


class PostgresError(FineshipError):
    """PostgreSQL cannot be used as asked; the message says why and what to do (never with a password)."""


class PostgresNotInstalled(PostgresError):
    """No PostgreSQL server programs here, or no unprivileged user to run them as."""


@dataclass(frozen=True)
class ServerAddress:
    """Where a PostgreSQL server is and who connects; `maintenance_db` is where databases are looked up and
    created. Holds no password."""

    host: str
    port: int = 5432
    user: str = SUPERUSER
    maintenance_db: str = "postgres"

    def url(self, database: str, driver: str = "postgresql+psycopg") -> str:
        """A URL of `database` for SQLAlchemy with `driver`, without a password (libpq and asyncpg read it from
        PGPASSFILE)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{driver}://{quote(self.user, safe='')}@{host}:{self.port}/{quote(database, safe='')}"

    def describe(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


def parse_server_url(url: str) -> tuple[ServerAddress, str | None]:
    """The address and the password (None when the URL has none) of `postgresql://user:password@host:port/db`.
    Errors name the URL with its password masked."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port or 5432
    except ValueError:  # its message may quote part of the password
        raise PostgresError(f"FINESHIP_STACK_DB is not a valid PostgreSQL URL ({redact(url)}): its port must be a "
                            "number from 1 to 65535 (write special characters of the password %-encoded)") from None
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        raise PostgresError(f"FINESHIP_STACK_DB must look like postgresql://user:password@host:5432/postgres "
                            f"(got {redact(url)})")
    if parts.query or parts.fragment:
        raise PostgresError(f"FINESHIP_STACK_DB has connection options after `?` ({redact(url)}), which the stack "
                            "does not pass on: set them as libpq environment variables instead (PGSSLMODE, "
                            "PGSSLROOTCERT), which both servers' drivers read")
    user = unquote(parts.username) if parts.username else getpass.getuser()  # libpq's default, too
    database = unquote(parts.path.lstrip("/")) or "postgres"
    password = unquote(parts.password) if parts.password is not None else None
    return ServerAddress(parts.hostname, port, user, database), password


def redact(url: str) -> str:
    """`url` with everything after the user name, up to the last `@`, replaced by `***` (so a password holding
    `@` or `/` is masked too)."""
    scheme, sep, rest = url.strip().partition("://")
    userinfo, at, address = rest.rpartition("@")
    if not sep or not at:
        return url.strip() if sep else "<not a URL>"
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{address}"


def find_bin_dir(versions_dir: Path = Path("/usr/lib/postgresql")) -> Path:
    """The directory of PostgreSQL's server programs: `pg_ctl` on PATH, else the newest
    `versions_dir`/<version>/bin (Debian's package puts them there, off PATH)."""
    on_path = shutil.which("pg_ctl")
    candidates = [Path(os.path.realpath(on_path)).parent] if on_path else []
    versions = versions_dir.glob("*/bin")
    candidates += sorted(versions, key=lambda p: [int(x) for x in re.findall(r"\d+", p.parent.name)] or [0],
                         reverse=True)
    for bin_dir in candidates:
        if all((bin_dir / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return bin_dir
    raise PostgresNotInstalled(f"PostgreSQL's server programs (initdb, pg_ctl, postgres) were not found on PATH "
                               f"or in {versions_dir}/*/bin: {INSTALL_HINT}")


@dataclass(frozen=True)
class RunAs:
    """The unprivileged user a cluster runs as when fineship runs as root."""

    name: str
    uid: int
    gid: int


def cluster_user() -> RunAs | None:
    """None when this process is not root (the cluster runs as this user); else the `postgres` system user."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresNotInstalled("PostgreSQL refuses to run as root, and there is no `postgres` system user to "
                                   "run it as (apt-get install postgresql creates one); or run fineship as a "
                                   "regular user, or set FINESHIP_STACK_DB to the URL of a PostgreSQL server") from None
    return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _blocked_at(path: Path, user: RunAs) -> Path | None:
    """The first existing directory on the way to `path` that `user` may not enter, if any."""
    groups = {user.gid} | {g.gr_gid for g in grp.getgrall() if user.name in g.gr_mem}
    for directory in [*reversed(path.parents), path]:
        if not directory.exists():
            break
        st = directory.stat()
        bit = stat.S_IXUSR if st.st_uid == user.uid else stat.S_IXGRP if st.st_gid in groups else stat.S_IXOTH
        if not st.st_mode & bit:
            return directory
    return None


def _pgpass_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def write_pgpass(path: Path, server: ServerAddress, password: str) -> Path:
    """Keep `password` for `server`'s user in a libpq password file (mode 0600) at `path`."""
    fields = [server.host, str(server.port), "*", server.user, password]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, ":".join(_pgpass_field(f) for f in fields) + "\n")
    return path


def read_pgpass(path: Path, user: str) -> tuple[int | None, str] | None:
    """The port and password that the password file at `path` keeps for `user` (None when it keeps none)."""
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        fields = [f.replace("\\:", ":").replace("\\\\", "\\")
                  for f in re.split(r"(?<!\\):", line.strip())]
        if len(fields) == 5 and fields[3] == user:
            return (int(fields[1]) if fields[1].isdigit() else None), fields[4]
    return None


def new_password() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class LocalCluster:
    """A PostgreSQL cluster of fineship's own in `root`: data in `root/data`, its log `root/postgres.log`, its
    Unix socket in `root/run`; it listens on 127.0.0.1 only and asks every client for a scram-sha-256 password."""

    root: Path
    bin_dir: Path
    run_as: RunAs | None = None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        return self.root / "run"

    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        who = ({"user": self.run_as.uid, "group": self.run_as.gid, "extra_groups": []} if self.run_as else {})
        # A bare environment: the cluster's processes inherit nothing of fineship's (no secrets, no PG* settings).
        env = {"PATH": os.environ.get("PATH", os.defpath), "LC_ALL": "C", "LANG": "C"}
        return subprocess.run([str(self.bin_dir / args[0]), *args[1:]], capture_output=True, text=True, env=env,
                              cwd=self.root, timeout=timeout, stdin=subprocess.DEVNULL, **who)

    def prepare_root(self) -> None:
        """Create `root` for the user the cluster runs as; refuse a place that user cannot reach."""
        if self.run_as is not None:
            blocked = _blocked_at(self.root.parent, self.run_as)
            if blocked is not None:
                raise PostgresError(
                    f"PostgreSQL refuses to run as root, so fineship runs it as the system user "
                    f"`{self.run_as.name}`, which may not enter {blocked} (mode "
                    f"{stat.S_IMODE(blocked.stat().st_mode):o}): set FINESHIP_HOME to a directory that user can "
                    f"reach, run fineship as a regular user, or set FINESHIP_STACK_DB to the URL of a PostgreSQL "
                    f"server")
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        if self.run_as is not None:
            for d in (self.root, self.socket_dir):
                os.chown(d, self.run_as.uid, self.run_as.gid)

    def init(self, password: str) -> None:
        """Create the cluster with the superuser `fineship` whose password is `password`."""
        self.prepare_root()
        pwfile = self.root / ".initdb-password"
        write_private(pwfile, password + "\n", owner=(self.run_as.uid, self.run_as.gid) if self.run_as else None)
        try:
            done = self._run("initdb", "-D", str(self.data_dir), "-U", SUPERUSER, f"--pwfile={pwfile}",
                             "--auth=scram-sha-256", "-E", "UTF8", "--no-locale")
        finally:
            pwfile.unlink(missing_ok=True)
        if done.returncode != 0:
            raise PostgresError(f"initdb could not create the cluster in {self.data_dir}: "
                                f"{(done.stdout + done.stderr).strip()[-1200:]}")
        socket = self.socket_dir / ".s.PGSQL.65535"
        # A socket path too long for the kernel would stop the server: then it listens on TCP only.
        sockets = str(self.socket_dir) if len(str(socket).encode()) <= _SOCKET_PATH_MAX else ""
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write("\n# fineship: loopback only, a socket only its owner may use, passwords as scram-sha-256\n"
                       "listen_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{sockets.replace(chr(39), chr(39) * 2)}'\n"
                       "unix_socket_permissions = 0700\n"
                       "password_encryption = 'scram-sha-256'\n")

    def status(self) -> tuple[int, int] | None:
        """(postmaster pid, port) while the cluster runs, else None."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return None
        if len(lines) < 4 or not lines[0].strip().isdigit() or not pid_alive(int(lines[0])):
            return None
        return int(lines[0]), int(lines[3])

    def start(self, port: int) -> int:
        """Start the cluster on 127.0.0.1:`port`; return the postmaster's pid."""
        self.prepare_root()
        done = self._run("pg_ctl", "start", "-w", "-t", "90", "-s", "-D", str(self.data_dir),
                         "-l", str(self.log_file), "-o", f"-p {int(port)}", timeout=120)
        running = self.status()
        if done.returncode != 0 or running is None:
            tail = self.log_file.read_text(errors="replace")[-1500:] if self.log_file.is_file() else ""
            raise PostgresError(f"PostgreSQL did not start on 127.0.0.1:{port}: {done.stderr.strip()[-500:]}\n"
                                f"its log {self.log_file} ends with:\n{tail}")
        return running[0]

    def stop(self, timeout: int = 60) -> bool:
        """Stop the cluster (fast shutdown: open sessions are ended); False when it was not running."""
        running = self.status()
        if running is None:
            return False
        done = self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", str(timeout),
                         timeout=timeout + 30)
        if done.returncode != 0 and pid_alive(running[0]):
            terminate_group(running[0], grace=10)  # the postmaster leads its own session (pg_ctl made it so)
        return True


def ensure_databases(server: ServerAddress, password: str | None, names: Sequence[str]) -> list[str]:
    """Create those of `names` that `server` lacks, and check that the user may create tables in each (the
    servers create theirs at start-up); return the ones created. Errors name the server and database, never the
    password."""
    import psycopg
    from psycopg import errors, sql

    where = f"PostgreSQL at {server.host}:{server.port} (database {server.maintenance_db}, user {server.user})"

    def scrub(err: Exception) -> str:  # libpq's message on one line, without the password should it quote it
        text = " ".join(str(err).split())
        return text.replace(password, "***") if password else text

    try:  # CREATE DATABASE cannot run in a transaction: autocommit
        conn = psycopg.connect(host=server.host, port=server.port, user=server.user, password=password,
                               dbname=server.maintenance_db, connect_timeout=10, autocommit=True)
    except psycopg.Error as err:
        raise PostgresError(f"cannot connect to {where} ({scrub(err)}): check FINESHIP_STACK_DB (host, port, user, "
                            "password), or unset it to run a private cluster with --db postgres") from None
    created = []
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)", (list(names),))
            have = {row[0] for row in cur.fetchall()}
            for name in (n for n in names if n not in have):
                try:
                    cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                except errors.InsufficientPrivilege:
                    raise PostgresError(f"database {name} does not exist on {where}, and that user may not create "
                                        f"it: ask the server's administrator for CREATE DATABASE {name} OWNER "
                                        f"{server.user}") from None
                created.append(name)
    except psycopg.Error as err:
        raise PostgresError(f"could not check or create the databases {', '.join(names)} on {where}: "
                            f"{scrub(err)}") from None
    finally:
        conn.close()
    for name in names:
        try:
            with psycopg.connect(host=server.host, port=server.port, user=server.user, password=password,
                                 dbname=name, connect_timeout=10) as db:
                may_create = db.execute("SELECT has_schema_privilege('public', 'CREATE')").fetchone()[0]
        except psycopg.Error as err:
            raise PostgresError(f"cannot use database {name} on {where}: {scrub(err)}") from None
        if not may_create:
            raise PostgresError(f"user {server.user} may not create tables in database {name} (schema public) on "
                                f"{server.host}:{server.port}, and the server needs to: ask the server's "
                                f"administrator for ALTER DATABASE {name} OWNER TO {server.user}")
    return created
