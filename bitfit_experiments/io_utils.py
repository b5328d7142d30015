"""Atomic file writes and the environment record saved beside every result.

Every file a run or a table command writes goes through these helpers: the content is written to a temporary
file in the same directory, flushed to disk, then renamed over the target. A reader (or a sweep deciding whether
a run is complete) therefore sees the previous complete file or the new complete file, never half of one.
"""
import json
import os
import platform
import shutil
import sys
import tempfile
from contextlib import contextmanager


@contextmanager
def atomic_open(path, mode="w", **kwargs):
    """Open a temporary sibling of `path` for writing; rename it over `path` only if the block succeeds."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextmanager
def atomic_directory(path):
    """Build a directory in a temporary sibling (yielded); on success it replaces `path` as a whole, so readers see
    the old complete folder or the new one. (Replacing an existing folder takes two renames: a crash between them
    leaves no folder under `path`, never a half-written one.)"""
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix="." + os.path.basename(path) + ".")
    try:
        yield tmp
        if os.path.exists(path):
            old = tempfile.mkdtemp(dir=parent, prefix="." + os.path.basename(path) + ".old.")
            os.replace(path, os.path.join(old, "x"))
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path, text):
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_save_figure(fig, path, **kwargs):
    """Save a matplotlib figure atomically (the format is taken from the target's extension)."""
    fmt = os.path.splitext(path)[1].lstrip(".") or "png"
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format=fmt, **kwargs)


def _json_default(o):
    # numpy scalars and paths show up in configs and metrics; store them as plain JSON values.
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def library_versions():
    """Versions of everything that can change a number, saved in config.json beside each result."""
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("torch", "transformers", "datasets", "numpy", "scikit-learn", "scipy", "pandas", "bitfit-glue"):
        try:
            from importlib.metadata import version
            versions[name] = version(name)
        except Exception:
            versions[name] = None
    return versions


def check_writable(path, flag, kind="directory"):
    """Refuse, before anything is loaded or written, a `path` that cannot become a `kind` ("directory" or "file"):
    it exists as the other kind, sits under a regular file, or its nearest existing folder is not writable."""
    from .errors import UsageError
    full = os.path.abspath(path)
    if kind == "directory" and os.path.exists(full) and not os.path.isdir(full):
        raise UsageError(f"{flag} {path} is a file; give a new or empty directory")
    if kind == "file" and os.path.isdir(full):
        raise UsageError(f"{flag} {path} is a directory; give a file path")
    probe = full
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if probe != full and not os.path.isdir(probe):
        raise UsageError(f"{flag} {path}: {probe} is a file, so nothing can be created under it; choose another path")
    if not os.access(probe if os.path.isdir(probe) else os.path.dirname(probe), os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: {probe} is not writable; choose a location you can write to")
