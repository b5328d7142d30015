"""The CPU thread policy: how many OpenMP threads a run uses and how its idle threads wait, picked once at start-up
(before torch is imported) from the cores this process may use and how busy other processes keep them right now.

Why (MiniLM, CoLA 3,200 examples, 1 epoch, batch 8, whole process, 2 cores; issue #15): waiting threads that spin
(OMP_WAIT_POLICY=ACTIVE) won on a dedicated machine (27.8 s against 44.2 s sleeping, PASSIVE) and collapsed on a
shared one (453 s: a spinning thread holds a core the other jobs need, and every parallel region then waits for a
partner thread that is off its core). No single fixed setting is right in both conditions, so:

Decision rule (`decide`, pure; `apply_thread_policy` reads the machine and sets the environment):
  0. BITFIT_THREADS selects the mode: auto (default) | dedicated (assume no other load, no sampling) |
     shared (assume every other core is busy: 1 thread, sleeping) | inherit (set nothing: the runtime's defaults).
  1. The user's settings win: OMP_NUM_THREADS / MKL_NUM_THREADS fix the thread count; OMP_WAIT_POLICY,
     GOMP_SPINCOUNT or KMP_BLOCKTIME fix the waiting. Nothing the user set is overwritten.
  2. cores = the CPUs in this process's affinity mask (taskset, cpuset), capped by a cgroup CPU quota (cpu.max).
  3. busy = how many of those cores other processes use, sampled from /proc/stat over SAMPLE_SEC (the instantaneous
     picture: /proc/loadavg lags by minutes, and a run's own predecessor in a sweep would still show in it).
     A core counts as taken when more than a quarter of it is busy: taken = ceil(busy - 0.25), in [0, cores].
  4. threads = max(1, cores - taken).
  5. Waiting: 1 thread -> PASSIVE (no partner to wait for). Every thread on a free core -> spin, but bounded:
     SPIN_MS of spinning, then sleep (GOMP_SPINCOUNT = SPINS_PER_MS * SPIN_MS for GNU libgomp, KMP_BLOCKTIME = SPIN_MS
     for Intel/LLVM libomp), which keeps nearly all of ACTIVE's gain (the gaps between parallel regions of a training
     step are far shorter) and bounds the loss if other jobs start later (a waiting thread gives its core back after
     SPIN_MS instead of ACTIVE's ~5 minutes). More threads than free cores (the user's count) -> PASSIVE.
     Load unmeasurable (no /proc) -> all cores, bounded spinning.

The OpenMP runtime: torch's pip wheels ship GNU libgomp (torch/lib/libgomp.so.1, MKL with its GNU threading layer);
there GOMP_SPINCOUNT, when set, wins over OMP_WAIT_POLICY (libgomp env.c), and OMP_WAIT_POLICY=ACTIVE alone means
30e9 spins. Intel's libiomp5 and LLVM's libomp bound spinning with KMP_BLOCKTIME (ms), which likewise wins over
OMP_WAIT_POLICY. An unrecognised runtime gets both variables (each runtime ignores the other's).
Measured candidates and the numbers behind SPIN_MS: results/benchmark/THREADS.md (scripts/bench_speed.sh).

    python -m bitfit_experiments.core.threads                 # what the policy picks here, now
    python -m bitfit_experiments.core.threads --exec CMD ...  # run CMD with the policy's environment

Layer: core.
"""
import math
import os
import sys
import time
from dataclasses import dataclass, field

SAMPLE_SEC = 0.25       # how long the load is sampled at start-up
TAKEN_ABOVE = 0.25      # a core busier than this (share of its time) counts as taken by another process
SPIN_MS = 3             # bounded spinning before an idle thread sleeps (to be confirmed by scripts/bench_speed.sh)
SPINS_PER_MS = 100_000  # libgomp's own estimate (env.c); the real rate varies ~5x between CPUs
MODES = ("auto", "dedicated", "shared", "inherit")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


@dataclass(frozen=True)
class ThreadPlan:
    """What the policy decided; `env` holds only the variables it sets (never one the user set)."""
    mode: str
    cores: int
    busy: float | None       # cores busy with other processes (None: not sampled or unmeasurable)
    threads: int | None      # None: left to the user's setting or the runtime
    waiting: str | None      # "passive" | "bounded-spin" | None (left to the user or the runtime)
    runtime: str             # "gnu" | "intel" | "llvm" | "unknown"
    env: dict = field(default_factory=dict)
    reason: str = ""

    def describe(self):
        busy = "not sampled" if self.busy is None else f"{self.busy:.2f} busy"
        return (f"thread policy {self.mode}: {self.cores} core(s), {busy} -> {self.threads or 'default'} thread(s), "
                f"{self.waiting or 'default'} waiting ({self.reason}); sets "
                + (" ".join(f"{k}={v}" for k, v in sorted(self.env.items())) or "nothing"))


def _int_env(environ, names):
    for name in names:
        try:
            value = int(str(environ.get(name, "")).split(",")[0])
        except ValueError:
            continue
        if value >= 1:
            return value
    return None


def taken_cores(busy, cores):
    """Cores counted as used by other processes: ceil(busy - TAKEN_ABOVE), clipped to [0, cores]."""
    return min(cores, max(0, math.ceil(busy - TAKEN_ABOVE)))


def wait_env(waiting, runtime):
    """The variables that give `waiting` ("passive" or "bounded-spin") in this OpenMP runtime."""
    if waiting == "passive":
        return {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}  # spin ... but for at most SPIN_MS: the runtime's own bound wins over ACTIVE
    if runtime in ("gnu", "unknown"):
        env["GOMP_SPINCOUNT"] = str(SPINS_PER_MS * SPIN_MS)
    if runtime in ("intel", "llvm", "unknown"):
        env["KMP_BLOCKTIME"] = str(SPIN_MS)
    return env


def decide(cores, busy, environ, mode="auto", runtime="gnu"):
    """The plan for `cores` usable cores of which `busy` are used by other processes (None: unknown), given the
    user's environment. Pure: reads nothing but its arguments."""
    if mode not in MODES:
        raise ValueError(f"BITFIT_THREADS={mode!r}: use one of {', '.join(MODES)}")
    if mode == "inherit":
        return ThreadPlan(mode, cores, busy, None, None, runtime, {}, "BITFIT_THREADS=inherit: nothing set")
    user_threads = _int_env(environ, THREAD_VARS)
    user_wait = any(environ.get(k) for k in WAIT_VARS)
    taken = {"dedicated": 0, "shared": cores}.get(mode, None if busy is None else taken_cores(busy, cores))
    free = cores if taken is None else max(1, cores - taken)
    threads = user_threads or free
    if threads == 1:
        waiting, why = "passive", "one thread: no partner thread to wait for"
    elif taken is not None and threads + taken > cores:
        waiting, why = "passive", f"{threads} threads but only {max(0, cores - taken)} free core(s)"
    else:
        waiting = "bounded-spin"
        why = ("load unmeasurable" if taken is None else f"{taken} core(s) taken") + f": spin <= {SPIN_MS} ms, then sleep"
    env = {} if user_threads else {"OMP_NUM_THREADS": str(threads)}
    if user_wait:
        waiting, why = None, why + "; waiting left to the user's " + "/".join(k for k in WAIT_VARS if environ.get(k))
    else:
        env.update(wait_env(waiting, runtime))
    return ThreadPlan(mode, cores, busy, None if user_threads else threads, waiting, runtime, env, why)


# ---------------------------------------------------------------------------------------------- reading the machine

def usable_cores(cpu_max_path="/sys/fs/cgroup/cpu.max"):
    """CPUs this process may run on (affinity mask), capped by a cgroup v2 CPU quota when one is set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = open(cpu_max_path).read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _cpu_times(stat_path, cpus):
    """{cpu: (busy jiffies, total jiffies)} for the given CPU numbers, from /proc/stat's per-CPU lines."""
    out = {}
    with open(stat_path) as f:
        for line in f:
            name, *values = line.split()
            if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
                continue
            v = [int(x) for x in values[:8]] + [0] * (8 - len(values[:8]))
            idle = v[3] + v[4]  # idle + iowait
            busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]  # user nice system irq softirq steal (guest is in user)
            out[int(name[3:])] = (busy, busy + idle)
    return out


def busy_cores(cpus=None, seconds=SAMPLE_SEC, stat_path="/proc/stat", sleep=time.sleep):
    """How many of `cpus` (default: this process's affinity set) other processes kept busy over `seconds`, as a
    sum of per-CPU busy shares (this process sleeps meanwhile). None where /proc/stat cannot be read."""
    try:
        cpus = set(cpus if cpus is not None else os.sched_getaffinity(0))
        before = _cpu_times(stat_path, cpus)
        sleep(seconds)
        after = _cpu_times(stat_path, cpus)
    except (AttributeError, OSError, ValueError):
        return None
    total = 0.0
    for cpu, (b1, t1) in after.items():
        b0, t0 = before.get(cpu, (b1, t1))
        if t1 > t0:
            total += (b1 - b0) / (t1 - t0)
    return total if after else None


def openmp_runtime(torch_dir=None):
    """Which OpenMP runtime torch loads, from the libraries it ships (torch is not imported)."""
    if torch_dir is None:
        import importlib.util
        spec = importlib.util.find_spec("torch")
        locations = list(spec.submodule_search_locations or []) if spec else []
        torch_dir = locations[0] if locations else None
    try:
        names = os.listdir(os.path.join(torch_dir, "lib")) if torch_dir else []
    except OSError:
        names = []
    for prefix, runtime in (("libgomp", "gnu"), ("libiomp", "intel"), ("libomp", "llvm")):
        if any(n.startswith(prefix) for n in names):
            return runtime
    return "unknown"


def apply_thread_policy(environ=None, *, threads=None, sampler=busy_cores, cores=None, runtime=None):
    """Pick the policy and set its variables in `environ` (default os.environ; keys already there are kept).
    Call it before torch is imported: the OpenMP runtime reads these variables once, when torch loads it.
    Samples the load only when the answer depends on it. `threads`: a count the caller must keep, e.g. a --resume
    continuing a run with the torch_threads its config.json recorded (reductions split by thread can round
    differently); it counts as the user's OMP_NUM_THREADS unless that is set."""
    environ = os.environ if environ is None else environ
    if threads and not _int_env(environ, THREAD_VARS):
        environ["OMP_NUM_THREADS"] = str(int(threads))
    mode = (environ.get("BITFIT_THREADS") or "auto").strip().lower()
    if mode not in MODES:  # a user's setting: one line and exit 2 from every entry point, not a traceback
        from .errors import UsageError
        raise UsageError(f"BITFIT_THREADS={environ.get('BITFIT_THREADS')!r} is not a thread mode; use one of "
                         f"{', '.join(MODES)} (or OMP_NUM_THREADS=N for a thread count)")
    cores = usable_cores() if cores is None else cores
    runtime = openmp_runtime() if runtime is None else runtime
    user_threads = _int_env(environ, THREAD_VARS)
    user_wait = any(environ.get(k) for k in WAIT_VARS)
    settled = bool(user_wait and user_threads) or user_threads == 1 or cores == 1  # nothing left to decide
    busy = sampler() if mode == "auto" and not settled else None
    plan = decide(cores, busy, environ, mode, runtime)
    for key, value in plan.env.items():
        environ.setdefault(key, value)
    # Applied after torch was imported (an in-process caller: a notebook, the tests), the variables reach only child
    # processes; this process keeps the threads torch started with. Nothing to warn a user about.
    return plan


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    plan = apply_thread_policy()
    print(plan.describe(), file=sys.stderr)
    if argv[:1] == ["--exec"] and argv[1:]:
        cmd = argv[1:]
        os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main()
