"""One run per output directory: an exclusive lock held for the whole run.

Layer: artifacts. `run_glue.py` (and a sweep deciding whether to redo a directory) take `OUT/.lock` with flock.
The kernel drops the lock when the process dies, however it dies (kill -9, scancel, a crash), so a lock file that is
present but not held is stale by construction: the next run or `--resume` takes it over. Shell scripts test it with
util-linux `flock -n OUT/.lock true` (succeeds only when no run holds it).
"""
import fcntl
import os

from ..core.errors import UsageError

LOCK_NAME = ".lock"


class RunLock:
    """`with RunLock(out):` -- creates `out` if needed; refuses (UsageError) when another process holds the lock."""

    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.path = os.path.join(out_dir, LOCK_NAME)
        self.fd = None

    def acquire(self):
        os.makedirs(self.out_dir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise UsageError(f"--output-path {self.out_dir}: another run is writing to it{holder}; wait for it to "
                             f"finish or choose another directory") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


def _read_holder(fd):
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def is_locked(out_dir):
    """True while a live process holds OUT/.lock."""
    path = os.path.join(out_dir, LOCK_NAME)
    if not os.path.exists(path):
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
