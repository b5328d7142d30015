"""BANK=K in the sweep scripts: turn a run list into jobs, grouping the bankable runs into bias banks of at most K.

    printf '%s\n' "${RUN_CMDS[@]}" | python -m bitfit_experiments.bank_plan --bank K --banks-dir DIR --python PY

Reads run_glue.py commands (one per line, shell-quoted, `PY RUN_GLUE flags...`), writes one job per line: either the
command unchanged, or `PY REPO/run_bank.py --bank-dir DIR/<id> -- flags -- flags ...`. In list order:
  - a run already complete, or begun as a single run (its directory holds a record or checkpoint): unchanged;
  - a member of a bank begun earlier (its config.json names the bank): that bank's command again, with its members as
    recorded (so it resumes), once -- or the run alone, to be redone, if that bank has finished without it;
  - bitfit runs that share every setting but the learning rate, the seed and --bias-terms: banks of at most K (a
    bank of one is just the run); anything else: unchanged.
The bank directory's name is a hash of its members' directories: the same list gives the same banks.

Layer: run.
"""
import hashlib
import json
import os
import shlex
import sys

from .cli import parse_config
from .core.bank import MEMBER_FIELDS
from .core.config import RESUME_NEUTRAL
from .core.errors import OneLineParser, UsageError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(words):
    try:
        return parse_config(words[2:])
    except (UsageError, SystemExit):
        return None  # the run itself will say what is wrong


def _saved(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _state(out):
    """complete / begun (a single run's leftovers) / banked (bank dir) / new."""
    record = _saved(os.path.join(out, "results.json")) or {}
    if record.get("status") == "complete":
        return "complete", None
    bank = (_saved(os.path.join(out, "config.json")) or {}).get("bank")
    if isinstance(bank, dict) and os.path.exists(os.path.join(bank.get("dir", ""), "bank.json")):
        return "banked", bank["dir"]
    if os.path.exists(os.path.join(out, "checkpoint.safetensors")):
        return "begun", None
    return "new", None


def _bank_command(python, bank_dir, member_words):
    cmd = [python, os.path.join(REPO, "run_bank.py"), "--bank-dir", bank_dir]
    for words in member_words:
        cmd += ["--", *words]
    return shlex.join(cmd)


def _resume_bank(python, bank_dir):
    """The command that continues a bank begun earlier, or None if it has finished (a member completed: the checkpoint
    is gone; the members that did not complete are redone alone)."""
    members = (_saved(os.path.join(bank_dir, "bank.json")) or {}).get("members", [])
    for m in members:
        record = _saved(os.path.join(m["args"]["output_path"], "results.json")) or {}
        if record.get("status") == "complete":
            return None
    return shlex.join([python, os.path.join(REPO, "run_bank.py"), "--bank-dir", bank_dir, "--resume"])


def plan(lines, k, banks_dir, python):
    jobs, groups, seen_banks = [], {}, set()
    for line in lines:
        words = shlex.split(line)
        config = _config(words) if k > 1 else None
        if config is None:
            jobs.append(line)
            continue
        state, bank_dir = _state(config.output_path)
        if state == "banked":
            if bank_dir not in seen_banks:
                seen_banks.add(bank_dir)
                jobs.append(_resume_bank(python, bank_dir) or line)
            continue
        if state != "new" or config.fine_tune_type != "bitfit" or config.batch_layout == "packed" \
                or config.precision == "fp16":
            jobs.append(line)
            continue
        shared = {n: v for n, v in config.to_dict().items() if n not in MEMBER_FIELDS | RESUME_NEUTRAL}
        key = json.dumps(shared, sort_keys=True)
        if key not in groups:
            groups[key] = []
            jobs.append(groups[key])  # the bank takes the place of its first member
        groups[key].append((line, words[2:], config.output_path))
    return [_emit(job, k, banks_dir, python) for job in jobs]


def _emit(job, k, banks_dir, python):
    if isinstance(job, str):
        return [job]
    out = []
    for start in range(0, len(job), k):
        chunk = job[start:start + k]
        if len(chunk) == 1:
            out.append(chunk[0][0])
            continue
        ident = hashlib.sha1("\n".join(os.path.abspath(d) for _, _, d in chunk).encode()).hexdigest()[:12]
        out.append(_bank_command(python, os.path.join(banks_dir, ident), [w for _, w, _ in chunk]))
    return out


def main(argv=None):
    p = OneLineParser(prog="python -m bitfit_experiments.bank_plan", description=__doc__.split("\n\n")[0])
    p.add_argument("--bank", type=int, required=True, help="at most this many runs per bank (1: no banks)")
    p.add_argument("--banks-dir", required=True, help="where the banks' own directories go")
    p.add_argument("--python", default=sys.executable, help="the interpreter of the bank commands")
    args = p.parse_args(argv)
    if args.bank < 1:
        print(f"error: BANK={args.bank}: give at least 1 (1 = no banks)", file=sys.stderr)
        sys.exit(2)
    lines = [line for line in sys.stdin.read().splitlines() if line.strip()]
    for group in plan(lines, args.bank, args.banks_dir, args.python):
        for job in group:
            print(job)


if __name__ == "__main__":
    main()
