"""One run per output directory: an exclusive lock on the directory itself, held for the whole run.

Layer: artifacts. `run_glue.py` (and a sweep deciding whether to redo a directory) take flock on the output
directory's own file descriptor, so no lock file is ever written into a user's directory (a refused run leaves a
non-empty directory exactly as it was). The kernel drops the lock when the process dies, however it dies (kill -9,
scancel, a crash), so a lock is never stale: if nothing holds it, no run is writing there. Shell scripts test it with
util-linux `flock -n DIR true`, which succeeds only when no run holds DIR.
"""
import fcntl
import os

from ..core.errors import UsageError


class RunLock:
    """`with RunLock(out):` -- creates `out` if needed; refuses (UsageError) when another process holds it."""

    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.fd = None

    def acquire(self):
        os.makedirs(self.out_dir, exist_ok=True)
        fd = os.open(self.out_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UsageError(f"--output-path {self.out_dir}: another run is writing to it; wait for it to finish or "
                             f"choose another directory") from None
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


def is_locked(out_dir):
    """True while a live process holds the lock of `out_dir`."""
    if not os.path.isdir(out_dir):
        return False
    fd = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
