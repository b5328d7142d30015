"""Issue 6: atomic writes. A writer killed at any moment leaves the previous complete file (or none) under the
target name -- never a partial one; a reader never sees half a file; a failing write removes its temporary file."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from bitfit_experiments.artifacts.io import atomic_open, atomic_write_json, atomic_write_text
from conftest import REPO_ROOT

CHUNK = 1 << 20  # 1 MiB

# Writes an endless stream of 1 MiB chunks into atomic_open(target); says "writing" after the first chunk is
# flushed to the temporary file, so the parent can kill it in the middle of the write.
SLOW_WRITER = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {root!r})
    from bitfit_experiments.artifacts.io import atomic_open
    with atomic_open(sys.argv[1], "wb") as f:
        for i in range(10_000):
            f.write(bytes([65 + i % 26]) * {chunk})
            f.flush()
            if i == 2:
                print("writing", flush=True)
            time.sleep(0.01)
""")

# Rewrites a JSON file again and again (each version complete and self-checking) until killed.
REWRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from bitfit_experiments.artifacts.io import atomic_write_json
    for n in range(1_000_000):
        atomic_write_json(sys.argv[1], {{"n": n, "pad": "x" * 200_000, "end": n}})
        if n == 3:
            print("looping", flush=True)
""")


def _start(script, target):
    code = script.format(root=REPO_ROOT, chunk=CHUNK)
    return subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(proc, word):
    line = proc.stdout.readline()
    if word not in line:
        proc.kill()
        raise AssertionError(f"writer did not start: {line!r} {proc.stderr.read()!r}")


def _temporaries(directory, name):
    return [f for f in os.listdir(directory) if f != name]


@pytest.mark.parametrize("previous", [b"previous complete content\n" * 1000, None], ids=["previous", "none"])
def test_sigkill_mid_write_leaves_previous_file_or_none(tmp_path, previous):
    target = tmp_path / "results.bin"
    if previous is not None:
        target.write_bytes(previous)
    proc = _start(SLOW_WRITER, target)
    try:
        _wait_for(proc, "writing")
        partial = _temporaries(tmp_path, "results.bin")
        assert len(partial) == 1 and os.path.getsize(tmp_path / partial[0]) >= 3 * CHUNK  # really mid-write
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    if previous is None:
        assert not target.exists()
    else:
        assert target.read_bytes() == previous
    # what the killed writer left behind is a hidden temporary sibling, never under the target's name
    for leftover in _temporaries(tmp_path, "results.bin"):
        assert leftover.startswith(".results.bin.") and leftover.endswith(".tmp"), leftover


def test_readers_and_a_killed_rewriter_only_ever_see_complete_json(tmp_path):
    target = tmp_path / "results.json"
    proc = _start(REWRITER, target)
    seen = set()
    try:
        _wait_for(proc, "looping")
        deadline = time.time() + 1.0
        while time.time() < deadline:
            with open(target, encoding="utf-8") as f:
                obj = json.load(f)  # a partial file would not parse
            assert obj["n"] == obj["end"] and len(obj["pad"]) == 200_000
            seen.add(obj["n"])
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert len(seen) > 1, "the reader never saw the file change"
    with open(target, encoding="utf-8") as f:
        obj = json.load(f)
    assert obj["n"] == obj["end"] >= max(seen)


def test_failed_write_keeps_previous_and_removes_temporary(tmp_path):
    target = tmp_path / "config.json"
    atomic_write_json(target, {"version": 1})
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w", encoding="utf-8") as f:
            f.write('{"version": 2, "half')
            raise RuntimeError("disk full")
    assert json.loads(target.read_text()) == {"version": 1}
    assert os.listdir(tmp_path) == ["config.json"]
    with pytest.raises(TypeError):  # not serializable: fails before the target is touched
        atomic_write_json(target, {"version": object()})
    assert json.loads(target.read_text()) == {"version": 1}
    assert os.listdir(tmp_path) == ["config.json"]


def test_atomic_write_replaces_whole_file_and_creates_parents(tmp_path):
    target = tmp_path / "a" / "b" / "notes.txt"
    atomic_write_text(target, "long first version\n" * 100)
    atomic_write_text(target, "short\n")
    assert target.read_text() == "short\n"
    assert os.listdir(target.parent) == ["notes.txt"]
