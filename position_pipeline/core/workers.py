"""Which process a run's worker is, and whether it is gone for certain. No Dagster here.

A sync run records its worker's identity before it claims anything; the sensor hands a run's claims on early only
when that worker is provably gone: a dead process cannot append, so the write fence (`leases`) holds without the
ten-minute wait that guards against a worker Dagster reports finished while it lives on. "Provably" means seen from
the same host and the same PID namespace, with no live process of that PID and start time (a zombie counts as
gone: it runs no code). Anything else (another machine, another container, a process that may be the same) is
"not known gone", and the old, slow path applies.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class Worker:
    """A process, identified across PID reuse: host, PID namespace, PID, and its start time in clock ticks."""

    host: str
    namespace: str
    pid: int
    started: str

    def __str__(self) -> str:
        return f"{self.host}|{self.namespace}|{self.pid}|{self.started}"

    @classmethod
    def parse(cls, text: str) -> Worker | None:
        """The worker `str(worker)` wrote, or None for anything else."""
        parts = text.split("|")
        if len(parts) != 4 or not parts[2].isdigit():
            return None
        return cls(parts[0], parts[1], int(parts[2]), parts[3])


def this_worker() -> Worker:
    """The identity of the calling process."""
    pid = os.getpid()
    return Worker(socket.gethostname(), _namespace(), pid, _start_time(pid) or "")


def worker_gone(worker: Worker) -> bool:
    """True only when `worker` is certainly not running: same host and PID namespace as the caller, and no process
    with its PID and start time (or only a zombie). False whenever that cannot be told from here."""
    if worker.host != socket.gethostname() or worker.namespace != _namespace() or not worker.namespace:
        return False
    try:
        os.kill(worker.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # a process of another user has that PID: alive
    stat = _stat(worker.pid)
    if stat is None:
        return True  # it exited between the two looks
    state, started = stat
    return state == "Z" or (bool(worker.started) and started != worker.started)


def _namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""  # no /proc: liveness cannot be told safely


def _start_time(pid: int) -> str | None:
    stat = _stat(pid)
    return None if stat is None else stat[1]


def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of process `pid` from /proc, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[-1].split()  # after "pid (comm)": state is field 3, starttime field 22
    return fields[0], fields[19]
