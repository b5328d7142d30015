"""The thread policy (core/threads.py): its decision rule, how it reads the machine, and that its variables reach
torch's OpenMP runtime."""
import os
import subprocess
import sys

import pytest

from bitfit_experiments.core import threads
from conftest import REPO_ROOT

SPIN = str(threads.SPINS_PER_MS * threads.SPIN_MS)


# ------------------------------------------------------------------------------------------------ the decision rule

def test_a_quiet_machine_gets_every_core_and_bounded_spinning():
    plan = threads.decide(2, 0.05, {})
    assert plan.threads == 2 and plan.waiting == "bounded-spin"
    assert plan.env == {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": SPIN}


@pytest.mark.parametrize("busy", [2.0, 1.9, 1.0, 0.3])
def test_a_busy_core_is_not_used_and_one_thread_sleeps(busy):
    """2 cores, >= a quarter of one busy elsewhere: 1 thread, PASSIVE (and never an unbounded spin)."""
    plan = threads.decide(2, busy, {})
    assert plan.threads == 1 and plan.waiting == "passive"
    assert plan.env == {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


@pytest.mark.parametrize("busy,taken", [(0.0, 0), (0.25, 0), (0.26, 1), (1.25, 1), (1.26, 2), (3.1, 3), (9.0, 8)])
def test_a_core_counts_as_taken_above_a_quarter_busy(busy, taken):
    assert threads.taken_cores(busy, 8) == taken


def test_threads_come_from_the_free_cores_of_a_larger_machine():
    plan = threads.decide(8, 3.1, {})
    assert plan.threads == 5 and plan.waiting == "bounded-spin" and plan.env["OMP_NUM_THREADS"] == "5"


def test_the_users_thread_count_is_kept_and_decides_the_waiting():
    over = threads.decide(2, 0.0, {"OMP_NUM_THREADS": "4"})  # more threads than cores: never spin
    assert over.threads is None and over.waiting == "passive" and over.env == {"OMP_WAIT_POLICY": "PASSIVE"}
    fits = threads.decide(8, 2.0, {"MKL_NUM_THREADS": "4"})
    assert fits.waiting == "bounded-spin" and "OMP_NUM_THREADS" not in fits.env
    loaded = threads.decide(2, 2.0, {"OMP_NUM_THREADS": "2"})
    assert loaded.waiting == "passive"


@pytest.mark.parametrize("key,value", [("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "10000"), ("KMP_BLOCKTIME", "0")])
def test_the_users_waiting_is_kept(key, value):
    plan = threads.decide(2, 0.0, {key: value})
    assert plan.env == {"OMP_NUM_THREADS": "2"} and plan.waiting is None


@pytest.mark.parametrize("runtime,keys", [("gnu", {"GOMP_SPINCOUNT"}), ("intel", {"KMP_BLOCKTIME"}),
                                          ("llvm", {"KMP_BLOCKTIME"}), ("unknown", {"GOMP_SPINCOUNT", "KMP_BLOCKTIME"})])
def test_the_spin_bound_uses_the_runtimes_own_variable(runtime, keys):
    env = threads.decide(2, 0.0, {}, runtime=runtime).env
    assert {k for k in env if k in ("GOMP_SPINCOUNT", "KMP_BLOCKTIME")} == keys
    assert env.get("KMP_BLOCKTIME", str(threads.SPIN_MS)) == str(threads.SPIN_MS)


def test_modes():
    assert threads.decide(2, 2.0, {}, mode="dedicated").threads == 2
    shared = threads.decide(8, 0.0, {}, mode="shared")
    assert shared.threads == 1 and shared.waiting == "passive"
    assert threads.decide(2, 0.0, {}, mode="inherit").env == {}
    unknown = threads.decide(2, None, {})  # load unmeasurable: every core, bounded spinning
    assert unknown.threads == 2 and unknown.waiting == "bounded-spin"
    with pytest.raises(ValueError):
        threads.decide(2, 0.0, {}, mode="fast")


def test_apply_keeps_the_users_values_and_samples_only_when_needed():
    calls = []

    def sampler():
        calls.append(1)
        return 2.0

    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    plan = threads.apply_thread_policy(env, sampler=sampler, cores=2, runtime="gnu")
    assert calls == [1] and env == {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "1"} and plan.threads == 1
    for settled in ({"OMP_NUM_THREADS": "1"}, {"OMP_NUM_THREADS": "2", "GOMP_SPINCOUNT": "0"},
                    {"BITFIT_THREADS": "dedicated"}, {"BITFIT_THREADS": "inherit"}):
        calls.clear()
        threads.apply_thread_policy(dict(settled), sampler=sampler, cores=2, runtime="gnu")
        assert calls == [], settled
    env = {"BITFIT_THREADS": "Shared"}
    threads.apply_thread_policy(env, sampler=sampler, cores=4, runtime="gnu")
    assert env["OMP_NUM_THREADS"] == "1" and env["OMP_WAIT_POLICY"] == "PASSIVE"


# --------------------------------------------------------------------------------------------- reading the machine

def _stat(per_cpu):
    lines = ["cpu  999 0 999 999 0 0 0 0 0 0"]  # the aggregate line, which must not be counted
    lines += [f"cpu{i} {user} 0 0 {idle} 0 0 0 0 0 0" for i, (user, idle) in enumerate(per_cpu)]
    return "\n".join(lines + ["intr 1 2 3", "procs_running 3"]) + "\n"


def test_busy_cores_counts_only_this_process_cpus(tmp_path):
    stat = tmp_path / "stat"
    snapshots = [_stat([(100, 100), (100, 100), (100, 100)]), _stat([(200, 100), (125, 175), (100, 200)])]
    stat.write_text(snapshots[0])

    def sleep(_):
        stat.write_text(snapshots[1])

    # cpu0 fully busy, cpu1 a quarter, cpu2 idle
    assert threads.busy_cores({0, 1, 2}, stat_path=str(stat), sleep=sleep) == pytest.approx(1.25)
    stat.write_text(snapshots[0])
    assert threads.busy_cores({1, 2}, stat_path=str(stat), sleep=sleep) == pytest.approx(0.25)
    assert threads.busy_cores({0}, stat_path=str(tmp_path / "missing")) is None


def test_usable_cores_honours_a_cgroup_quota(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    quota = tmp_path / "cpu.max"
    quota.write_text("max 100000\n")
    assert threads.usable_cores(str(quota)) == affinity
    quota.write_text("50000 100000\n")
    assert threads.usable_cores(str(quota)) == 1
    assert threads.usable_cores(str(tmp_path / "none")) == affinity


def test_openmp_runtime_is_read_from_torchs_libraries(tmp_path):
    for name, runtime in (("libgomp.so.1", "gnu"), ("libiomp5.so", "intel"), ("libomp.dylib", "llvm")):
        lib = tmp_path / runtime / "lib"
        lib.mkdir(parents=True)
        (lib / name).write_text("")
        assert threads.openmp_runtime(str(tmp_path / runtime)) == runtime
    assert threads.openmp_runtime(str(tmp_path / "nothing")) == "unknown"
    assert threads.openmp_runtime() == "gnu"  # the torch wheel of this project's environment ships libgomp


# ---------------------------------------------------------------------------------- the variables reach the runtime

IDLE_CPU = ("import time, torch\nx = torch.randn(256, 256)\nfor _ in range(5): (x @ x + 1).sum()\n"
            "t = time.process_time(); time.sleep(0.6); print(torch.get_num_threads(), time.process_time() - t)")


def _under_policy(extra_env):
    env = {k: v for k, v in os.environ.items() if k not in threads.THREAD_VARS + threads.WAIT_VARS}
    env.update(extra_env)
    out = subprocess.run([sys.executable, "-m", "bitfit_experiments.core.threads", "--exec", sys.executable, "-c",
                          IDLE_CPU], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    n, idle_cpu = out.stdout.split()
    return int(n), float(idle_cpu), out.stderr


def test_the_policy_reaches_torch_and_bounds_the_spinning():
    """Idle-time CPU of a process whose threads just finished parallel work, while its main thread sleeps 0.6 s:
    an unbounded spin (OMP_WAIT_POLICY=ACTIVE) burns it; the policy's bounded spin must not."""
    cores = threads.usable_cores()
    n, idle_cpu, err = _under_policy({"BITFIT_THREADS": "dedicated"})
    assert n == cores and "GOMP_SPINCOUNT" in err
    assert idle_cpu < 0.1
    if cores > 1:  # the check can see spinning: the same process with an unbounded spin
        _, spinning, _ = _under_policy({"BITFIT_THREADS": "dedicated", "OMP_WAIT_POLICY": "ACTIVE"})
        assert spinning > 0.15
    n, _, _ = _under_policy({"BITFIT_THREADS": "shared"})
    assert n == 1


def test_a_thread_count_the_caller_must_keep_wins_over_the_load_but_not_over_the_user():
    env = {}
    plan = threads.apply_thread_policy(env, threads=2, sampler=lambda: 2.0, cores=2, runtime="gnu")
    assert env == {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"} and plan.waiting == "passive"
    env = {"OMP_NUM_THREADS": "1"}
    threads.apply_thread_policy(env, threads=2, sampler=lambda: 0.0, cores=2, runtime="gnu")
    assert env["OMP_NUM_THREADS"] == "1"


def test_a_config_rerun_keeps_the_thread_count_the_run_recorded(tmp_path, tiny_model_dir, tiny_glue_dir):
    """Reductions split by thread can round differently, so a re-run from config.json uses the recorded count even
    when the policy would now pick another one."""
    import json
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    first = subprocess.run([sys.executable, "run_glue.py", "-t", "rte", "-m", tiny_model_dir, "--data-dir",
                            tiny_glue_dir, "-f", "bitfit", "-e", "1", "-b", "8", "--no-progress", "-o",
                            str(tmp_path / "a")], cwd=repo, env={**env, "OMP_NUM_THREADS": "1"},
                           capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-1500:]
    again = subprocess.run([sys.executable, "run_glue.py", "--config", str(tmp_path / "a" / "config.json"), "-o",
                            str(tmp_path / "b")], cwd=repo, env={**env, "BITFIT_THREADS": "dedicated"},
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-1500:]
    with open(tmp_path / "b" / "config.json") as f:
        assert json.load(f)["torch_threads"] == 1
