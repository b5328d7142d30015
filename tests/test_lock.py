"""One run per output directory: a second run into a directory that a live run holds is refused (exit 2, one
line), nothing is written into it, and the lock dies with its process."""
import os
import subprocess
import sys

from bitfit_experiments.artifacts.lock import RunLock, is_locked
from conftest import REPO_ROOT, write_tiny_rte


def _cmd(out, model_dir, glue, *extra):
    return [sys.executable, os.path.join(REPO_ROOT, "run_glue.py"), "-o", str(out), "-t", "rte", "-m", model_dir,
            "--data-dir", glue, "-f", "bitfit", "-e", "1", "-b", "8", "-l", "1e-3", "--no-progress", *extra]


def test_a_second_run_into_a_locked_directory_is_refused(tmp_path, tiny_model_dir):
    glue = write_tiny_rte(str(tmp_path / "glue"), n_train=16, n_dev=8, n_test=4)
    out = tmp_path / "run"
    with RunLock(str(out)):  # stands in for a live run
        assert is_locked(str(out))
        for extra in ((), ("--resume",)):
            proc = subprocess.run(_cmd(out, tiny_model_dir, glue, *extra), capture_output=True, text=True)
            assert proc.returncode == 2, proc.stderr
            assert "another run is writing to it" in proc.stderr and "Traceback" not in proc.stderr
        assert os.listdir(out) == []  # nothing of the refused run was written, not even a lock file
    assert not is_locked(str(out))
    # the lock of a process that is gone does not hold anything up
    proc = subprocess.run(_cmd(out, tiny_model_dir, glue), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (out / "results.json").exists() and not is_locked(str(out))


def test_a_run_refused_before_writing_leaves_no_directory(tmp_path, tiny_model_dir):
    out = tmp_path / "new"
    proc = subprocess.run(_cmd(out, tiny_model_dir, str(tmp_path / "no_glue_here")), capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert not out.exists()


def test_a_killed_holder_releases_the_lock(tmp_path):
    import signal
    import time
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]);"
                               "from bitfit_experiments.artifacts.lock import RunLock; RunLock(sys.argv[2]).acquire();"
                               "print('held', flush=True); time.sleep(60)", REPO_ROOT, str(out)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held" and is_locked(str(out))
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    deadline = time.time() + 10
    while is_locked(str(out)) and time.time() < deadline:
        time.sleep(0.05)
    assert not is_locked(str(out))
