"""CPU seconds from /proc (Linux; None or {} elsewhere) for the benchmarks: a process's, a PostgreSQL server's (its
postmaster and every process it started), and a local TCP port's listener's (a broker running on this machine).

The benchmarks run their servers on the same two cores as onex, so what the servers spend is part of what a run costs:
read together with the client's CPU, it says where the machine's time went."""

from __future__ import annotations

import contextlib
import os
from typing import Any

CLOCK_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_LISTEN = "0A"  # /proc/net/tcp's state of a listening socket


def stat_fields(path: str) -> list[str] | None:
    """The fields of a /proc ``stat`` file after the command's name (state, ppid, ... utime at 11, stime, cutime,
    cstime); None where unreadable (not Linux, or the process or thread just ended)."""
    try:
        with open(path) as f:
            return f.read().rpartition(")")[2].split()
    except OSError:
        return None


def process_cpu(pid: int) -> float | None:
    """utime + stime of a live process, every thread of it (None where there is no /proc, or no such process)."""
    fields = stat_fields(f"/proc/{pid}/stat")
    return None if fields is None else (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def children(pid: int, running: str) -> list[int]:
    """The live processes whose parent is ``pid`` and whose command line holds ``running`` (say a store's SQLite writer
    process, ``_sqlite_exec.py``); [] where there is no /proc."""
    found = []
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or (fields := stat_fields(f"/proc/{entry}/stat")) is None or fields[1] != str(pid):
                continue
            with contextlib.suppress(OSError), open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                if running.encode() in cmdline.read():
                    found.append(int(entry))
    return found


def postgres_parent(pid: int) -> int | None:
    """The postmaster of the PostgreSQL backend ``pid`` (``SELECT pg_backend_pid()``) when the server runs on this
    machine, visible in /proc as a postgres process (not in a container's pid namespace); None otherwise."""
    stat = stat_fields(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError), open(f"/proc/{pid}/comm") as f:
        if stat is not None and f.read().startswith("postgres"):
            return int(stat[1])
    return None


async def postmaster_of(conn: Any) -> int | None:
    """``postgres_parent`` of the backend an open asyncpg connection ``conn`` talks to."""
    return postgres_parent(await conn.fetchval("SELECT pg_backend_pid()"))


def server_cpu(postmaster: int | None) -> float | None:
    """CPU seconds so far of ``postmaster`` and every process it started, ended ones included (through its
    children's time: a backend that ended counts); None without a postmaster."""
    if postmaster is None:
        return None
    total = 0
    for name in os.listdir("/proc"):
        stat = stat_fields(f"/proc/{name}/stat") if name.isdigit() else None
        if stat is not None and postmaster in (int(name), int(stat[1])):
            total += sum(int(v) for v in stat[11:15])  # utime, stime, cutime, cstime
    return total / CLOCK_TICK


def listener(port: int) -> int | None:
    """The pid of the process listening on TCP ``port`` of this machine (a broker started here or running here),
    found through its socket's inode; None where there is none, or /proc does not show it."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == _LISTEN and int(fields[1].rpartition(":")[2], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{name}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{name}/fd/{fd}") in inodes:
                        return int(name)
    return None
