"""Train several BitFit runs as one bias bank (one model in memory, one forward pass per step for all of them).

    python -m bitfit_experiments.bank --bank-dir BANK_DIR --runs RUNS_FILE
    python -m bitfit_experiments.bank --bank-dir BANK_DIR -- -t rte -m M -f bitfit -l 1e-3 -s 0 -o A \\
                                                          -- -t rte -m M -f bitfit -l 4e-4 -s 1 -o B

Each member is given as run_glue.py's own flags (RUNS_FILE: one member per line, shell-quoted; blank lines and
#-comments are skipped). Members may differ in --learning-rate, --seed, --bias-terms and --output-path only; every
other setting is the bank's. Only `bitfit` can be banked. Run the same command again to resume. Exit 0 when every
member completed, 1 if any failed (the others still complete), 2 on bad input.

Layer: run (the bank's command line; bank_run.py does the work).
"""
import argparse
import os
import shlex
import sys

from .artifacts.io import check_writable
from .cli import parse_config, recorded_threads, set_process_environment
from .core.config import RunConfig
from .core.errors import OneLineParser, UsageError, exit_on_usage_error


def _parser():
    p = OneLineParser(prog="python -m bitfit_experiments.bank", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bank-dir", required=True, help="the bank's directory: its member list (bank.json) and its one "
                   "checkpoint; a new bank needs a new or empty directory, the same one resumes it")
    p.add_argument("--runs", metavar="RUNS_FILE", help="a file with one member per line: run_glue.py flags")
    p.add_argument("--gpu-device", "-d", type=int, default=None, help="train the bank on this GPU (overrides the "
                   "members' own -d)")
    p.add_argument("--resume", action="store_true", help="continue the bank in --bank-dir with the members its "
                   "bank.json records (no member flags needed)")
    return p


def split_members(argv):
    """(own flags, [member flag lists]) of `... -- member flags -- member flags`."""
    own, members, current = [], [], None
    for a in argv:
        if a == "--":
            current = []
            members.append(current)
        elif current is None:
            own.append(a)
        else:
            current.append(a)
    return own, [m for m in members if m]


def read_runs_file(path):
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except OSError as e:
        raise UsageError(f"--runs {path}: cannot read it ({e.strerror}); give a file with one run_glue.py flag line "
                         f"per member") from None
    return [shlex.split(line) for line in lines if line and not line.startswith("#")]


def member_configs(member_argvs):
    configs = []
    for i, argv in enumerate(member_argvs, 1):
        try:
            configs.append(parse_config(argv))
        except SystemExit:
            raise UsageError(f"member {i}: its run_glue.py flags are not valid (see above); fix that line") from None
        except UsageError as e:
            raise UsageError(f"member {i}: {e}") from None
    return configs


def recorded_configs(bank_dir):
    """The member configs bank.json in `bank_dir` records."""
    import json
    path = os.path.join(bank_dir, "bank.json")
    try:
        with open(path, encoding="utf-8") as f:
            return [RunConfig.from_dict(m["args"]) for m in json.load(f)["members"]]
    except OSError:
        raise UsageError(f"--resume: {bank_dir} holds no bank (no bank.json); give the bank's directory") from None
    except (ValueError, KeyError, TypeError):
        raise UsageError(f"--resume: {path} is damaged; delete {bank_dir} to start the bank again") from None


def rerun_configs(saved, given, new_dir):
    """The configs of a bank re-executed from a member's config.json (`saved`, with its "bank"), into `new_dir`:
    one subdirectory per member; `given` (explicit run_glue flags) overrides every member's saved settings."""
    configs = []
    for m in saved["bank"]["members"]:
        settings = {**m["args"], "resume": False, "list_params": False, **given,
                    "output_path": os.path.join(new_dir, m["name"])}
        configs.append(RunConfig.from_dict(settings))
    return configs, os.path.join(new_dir, "_bank")


def launch_bank(configs, bank_dir, threads=None):
    """Run the bank; exit 1 if any member failed, 130 on an interrupt. `threads`: the count to keep (a re-run or
    resume uses the one the bank recorded)."""
    check_writable(bank_dir, "--bank-dir")
    for c in configs:
        check_writable(c.output_path, "--output-path")
    set_process_environment(configs[0], threads=threads)
    from .bank_run import run_bank  # heavy imports only after the input is known to be good
    try:
        records = run_bank(configs, bank_dir)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    failed = [(c.output_path, r.failure_reason) for c, r in zip(configs, records) if r.status != "complete"]
    for out, why in failed:
        print(f"error: member {out} failed: {why}", file=sys.stderr)
    if failed:
        sys.exit(1)


@exit_on_usage_error
def main(argv=None):
    own, members = split_members(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(own)
    if args.resume:
        if members or args.runs:
            raise UsageError("--resume takes the members from --bank-dir's bank.json; give no member flags with it")
        configs = _on_gpu(recorded_configs(args.bank_dir), args.gpu_device)
        return launch_bank(configs, args.bank_dir,
                           threads=recorded_threads(os.path.join(configs[0].output_path, "config.json")))
    if args.runs:
        members = members + read_runs_file(args.runs)
    if not members:
        raise UsageError("no members: give --runs RUNS_FILE or members after `--` (run_glue.py flags each)")
    launch_bank(_on_gpu(member_configs(members), args.gpu_device), args.bank_dir)


def _on_gpu(configs, gpu):
    if gpu is not None:
        for c in configs:
            c.gpu_device = gpu
    return configs


if __name__ == "__main__":
    main()
