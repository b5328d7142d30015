"""Atomic file writes and the environment record saved beside every result.

Every file a run or a table command writes goes through these helpers: the content is written to a temporary
file in the same directory, flushed to disk, then renamed over the target. A reader (or a sweep deciding whether
a run is complete) therefore sees the previous complete file or the new complete file, never half of one.

Layer: artifacts.
"""
import errno
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
    it exists as the other kind (or as a device, pipe, dangling link), sits under a regular file, or nothing can be
    created in its nearest existing folder. That last test creates and removes a file there: os.access() says yes to
    root everywhere, even in /proc and /sys, where nothing can be created."""
    from ..core.errors import UsageError
    full = os.path.abspath(path)
    if os.path.islink(full) and not os.path.exists(full):
        raise UsageError(f"{flag} {path} is a dangling symbolic link (to {os.readlink(full)}); remove the link or "
                         f"choose another path")
    if kind == "directory" and os.path.exists(full) and not os.path.isdir(full):
        raise UsageError(f"{flag} {path} is a file; give a new or empty directory")
    if kind == "file" and os.path.isdir(full):
        raise UsageError(f"{flag} {path} is a directory; give a file path")
    if kind == "file" and os.path.exists(full) and not os.path.isfile(full):
        raise UsageError(f"{flag} {path} is not a regular file (a device or a pipe); give a file path")
    probe = full
    while not os.path.lexists(probe):
        probe = os.path.dirname(probe)
    if probe != full and os.path.islink(probe) and not os.path.exists(probe):
        raise UsageError(f"{flag} {path}: {probe} is a dangling symbolic link (to {os.readlink(probe)}), so nothing "
                         f"can be created under it; choose another path")
    if probe != full and not os.path.isdir(probe):
        raise UsageError(f"{flag} {path}: {probe} is a file, so nothing can be created under it; choose another path")
    _try_create(probe if os.path.isdir(probe) else os.path.dirname(probe), path, flag)


def _try_create(folder, path, flag):
    from ..core.errors import UsageError
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test.", suffix=".tmp")
    except OSError as e:
        raise UsageError(f"{flag} {path}: {folder} is not writable ({e.strerror or type(e).__name__}); choose a "
                         f"location you can write to") from None
    os.close(fd)
    os.unlink(probe)


def check_new_directory(path, flag):
    """An output folder that will not replace anything: `path` is new, or an empty directory (e.g. one the user just
    made). Anything already in it -- `--export .`, a run directory -- is the user's and is refused, never deleted."""
    from ..core.errors import UsageError
    check_writable(path, flag)
    if os.path.isdir(path) and os.listdir(path):
        raise UsageError(f"{flag} {path} is not empty; give a new or empty directory (nothing that is already there "
                         f"is replaced)")


@contextmanager
def new_directory(path, flag):
    """Write a folder that replaces nothing (see check_new_directory, checked again here). Yields a path, not yet
    existing, to write the folder to (in a temporary sibling of `path`); on success it is renamed to `path`, or, if
    `path` is an existing empty directory, its entries are moved into it, so the user's folder itself is kept."""
    from ..core.errors import UsageError
    check_new_directory(path, flag)
    path = os.path.abspath(os.fspath(path))
    staging = tempfile.mkdtemp(dir=_existing_parent(path), prefix="." + os.path.basename(path) + ".")
    built = os.path.join(staging, "new")
    try:
        yield built
        try:
            _move_into_place(built, path)
        except OSError as e:  # rename never replaces a non-empty folder or a file: something appeared meanwhile
            raise UsageError(f"{flag} {path}: something else was written there meanwhile ({e.strerror}); nothing "
                             f"was replaced -- give a new or empty directory") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _existing_parent(path):
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    return parent


def _move_into_place(built, path):
    if not os.path.isdir(path):
        os.rename(built, path)  # fails, replacing nothing, if `path` became a file or a non-empty folder
        return
    for name in sorted(os.listdir(built)):
        target = os.path.join(path, name)
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), target)
        os.rename(os.path.join(built, name), target)
