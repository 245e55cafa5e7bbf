"""One results directory, one writer: an exclusive ``flock`` on ``RESULTS_DIR/.lock``.

A sweep (and ``solverzoo report`` writing into the results directory) holds the lock for as
long as it writes; the file says who holds it (pid, host, start time, command). A second writer
does not wait: it stops at once with exit code 2 and a message naming the holder. The jobs of
one Hydra multirun (``-m``, e.g. with the joblib launcher) hold it shared, each running its own
cells, and take it exclusively, one after the other, to build the table and report. The kernel
releases the lock when the holder exits, however it exits (SIGKILL included), so a stale
``.lock`` file never blocks anyone. ``flock`` is advisory and per host: on a network file system
shared by several hosts it may not exclude a writer on another host.
"""
from __future__ import annotations

import datetime
import fcntl
import os
import socket
import sys
from pathlib import Path

LOCK_NAME = ".lock"


class ResultsLocked(RuntimeError):
    """Another process is writing into the results directory."""


_HELD: dict[str, int] = {}  # lock path -> how many ResultsLocks of this process hold it (re-entrant)


class ResultsLock:
    """``with ResultsLock(results_dir):`` holds the results directory's write lock (re-entrant
    within one process: the CLI takes it before Hydra starts, the sweep again inside)."""

    def __init__(self, results_dir: str | Path, shared: bool = False):
        self.path = Path(results_dir) / LOCK_NAME
        self.shared = shared  # Hydra multirun jobs of one command share the directory (each its own cells)
        self._fd: int | None = None
        self._nested = False

    def acquire(self) -> ResultsLock:
        key = os.path.realpath(self.path)
        if _HELD.get(key):
            _HELD[key] += 1
            self._nested = True
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise ResultsLocked(f"results directory {self.path.parent} is in use by another solverzoo process "
                                f"({holder or 'holder unknown'}); wait for it to finish, or pass another "
                                "results_dir") from None
        if not self.shared:
            os.ftruncate(fd, 0)
        else:
            os.lseek(fd, 0, os.SEEK_END)
        info = (f"pid {os.getpid()} on host {socket.gethostname()}, started "
                f"{datetime.datetime.now().isoformat(timespec='seconds')}: {' '.join(sys.argv)[:300]}")
        os.write(fd, info.encode("utf-8", "replace") + b"\n")
        os.fsync(fd)
        self._fd = fd
        _HELD[key] = 1
        return self

    def exclusive(self) -> None:
        """Turn a shared hold into an exclusive one (waits for the sibling jobs' writes: the table
        and report are built by one process at a time)."""
        if self._fd is not None and self.shared:
            fcntl.flock(self._fd, fcntl.LOCK_EX)

    def release(self) -> None:
        key = os.path.realpath(self.path)
        if self._nested:
            _HELD[key] -= 1
            self._nested = False
            return
        if self._fd is not None:
            _HELD.pop(key, None)
            if not self.shared:
                try:  # leave the file (unlinking it would race a waiting acquirer); empty it
                    os.ftruncate(self._fd, 0)
                except OSError:
                    pass
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ResultsLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 4096).decode("utf-8", "replace").strip()
    except OSError:
        return ""
