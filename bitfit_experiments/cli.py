"""The command line of run_glue.py: the official code's flags (same names, short forms, defaults) plus ours.

Layer: run. It only turns text into a validated RunConfig (core/config.py, where every default and rule lives)
and hands it to experiment.run. Every flag has help text; `python run_glue.py -h` is the reference. Mistakes
end with one line on stderr and exit code 2, as argparse does, but without the usage dump.
"""
import argparse
import json
import os
import sys
from dataclasses import MISSING, fields

from .artifacts.io import check_writable
from .core.config import BIAS_TERMS, FINE_TUNE_TYPES, LORA_TARGETS, PORTABLE_CPU_ENV, RunConfig
from .core.data import TASKS
from .core.errors import OneLineParser, UsageError, exit_on_usage_error


def build_parser():
    p = OneLineParser(prog="run_glue.py", description="Fine-tune a Transformer encoder on a GLUE task with BitFit "
                "(bias terms only), full fine-tuning, a frozen encoder, or random parameter subsets of BitFit's size.",
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for add in (_official_flags, _data_flags, _training_flags, _adapter_flags, _rerun_flags):
        add(p)
    defaults = {f.name: f.default_factory() if f.default_factory is not MISSING else f.default
                for f in fields(RunConfig) if f.default is not MISSING or f.default_factory is not MISSING}
    for action in p._actions:  # the defaults are RunConfig's, the one place they are written
        if action.dest in defaults:
            action.default = defaults[action.dest]
    return p


def _official_flags(p):
    """The official code's flags: same names, short forms and defaults."""
    g = p.add_argument_group("official flags (benzakenelad/BitFit run_glue.py)")
    g.add_argument("--output-path", "-o", help="directory for every output; must be new or empty (required unless "
                   "--list-params)")
    g.add_argument("--task-name", "-t", choices=sorted(TASKS), metavar="TASK",
                   help="GLUE task: " + ", ".join(sorted(TASKS)))
    g.add_argument("--model-name", "-m", help="any Hugging Face hub id or local directory of an encoder, or of a "
                   "decoder that AutoModelForSequenceClassification loads (GPT-2, BLOOM, OPT, Pythia, Qwen2, ...; "
                   "a tokenizer without a pad token pads with its EOS token)")
    g.add_argument("--fine-tune-type", "-f", choices=FINE_TUNE_TYPES, metavar="TYPE",
                   help="full_ft: every parameter; bitfit: bias terms (see --bias-terms) + pooler bias + head; "
                   "frozen: the classifier head only; rand_uniform: --rand-mask-size random entries of the encoder "
                   "+ head; rand_row_col: per encoder/pooler weight matrix one random column or rows//cols random "
                   "rows, + the encoder's LayerNorm gains + head (nothing under the embeddings, as the official "
                   "mask); lora: LoRA on "
                   "--lora-targets + head; ia3: IA3 (peft's modules for the architecture) + head; bitfit_lora: LoRA + "
                   "every bias + head")
    g.add_argument("--bias-terms", nargs="+", choices=BIAS_TERMS, metavar="TERM",
                   help="bitfit only: which bias families train, any of " + ", ".join(BIAS_TERMS) +
                   " (query=b_q key=b_k value=b_v attention_output=b_m1 attention_layernorm=b_LN1 "
                   "intermediate=b_m2 output=b_m3 output_layernorm=b_LN2; all = every bias incl. embeddings LayerNorm)")
    g.add_argument("--gpu-device", "-d", type=int, help="run on cuda:N; absent: CPU")
    g.add_argument("--seed", "-s", type=int, help="seed of data order, head init, dropout and masks")
    g.add_argument("--learning-rate", "-l", type=float, help="learning rate")
    g.add_argument("--epochs", "-e", type=int, help="training epochs")
    g.add_argument("--batch-size", "-b", type=int, help="training batch size (the paper used 16)")
    g.add_argument("--optimizer", choices=["adam", "adamw"], help="adamw: AdamW eps 1e-6 as transformers' AdamW of the official code; adam: torch Adam")
    g.add_argument("--save-evaluator", action="store_true",
                   help="save the trained evaluator (model, tokenizer, task, metric history) to OUTPUT/evaluator")
    g.add_argument("--predict-test", action="store_true",
                   help="write GLUE test-server files (e.g. RTE.tsv; MNLI also AX.tsv) to OUTPUT/test_predictions")
    g.add_argument("--verbose", action="store_true", help="print the trainable-parameter report before training")


def _data_flags(p):
    """Where the data and the model come from, and how the data is batched."""
    x = p.add_argument_group("data and model")
    x.add_argument("--allow-weight-mismatch", action="store_true",
                   help="train even when the checkpoint lacks encoder weights the architecture has (they would be "
                   "random) or holds weights it does not use; by default that is refused as a broken model folder")
    x.add_argument("--data-dir", help="local GLUE files in the original layout (<dir>/RTE/train.tsv, "
                   "...); absent: nyu-mll/glue from the Hugging Face hub")
    x.add_argument("--max-seq-length", type=int, help="truncate sequences to this many tokens")
    x.add_argument("--train-size", type=int, help="train on a seeded random subset of this many training examples (training-size curves)")
    x.add_argument("--eval-train", action="store_true",
                   help="also evaluate the training split after every epoch (the official code always does; "
                   "needed for the generalization-gap figure)")
    x.add_argument("--eval-batch-size", type=int, help="evaluation batch size (does not change results)")
    x.add_argument("--pad-to-max-length", action="store_true",
                   help="pad every batch to --max-seq-length, as the official code does (slower; padding is masked, "
                   "so the function is the same). With --eval-train --eval-batch-size 8 "
                   "(and --no-cache-features for frozen) this is the official pipeline's data path")
    x.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, help="opt-in speed: form training batches from examples of similar length (shuffled chunks, as HF "
                   "group_by_length) to cut padding (~1.8x faster epochs on SST-2). It changes what is learned: "
                   "BitFit, SST-2 2k, 1 epoch, 4 seeds: dev 0.716+-0.038 grouped vs 0.760+-0.013 with the default "
                   "random batches (the official code's)")
    x.add_argument("--batch-layout", choices=["auto", "padded", "packed"],
                   help="auto (default): packed on the CPU (measured faster there: no FLOP on padding), padded on a "
                   "GPU (small steps are launch-bound there); config.json records the layout used. "
                   "padded: each batch padded to its longest example. packed: the same batches "
                   "without padding -- each batch's examples end to end in one row, attention kept within each "
                   "example, positions restarting per example -- so no linear-layer FLOP goes to padding; the "
                   "same function up to float rounding (with dropout on, not bit-identical to padded: the random "
                   "draws fall on other tensor shapes). Encoders with a first-token head (BERT, RoBERTa, ALBERT); "
                   "others fall back to padded with a note, and config.json records the layout used")


def _training_flags(p):
    """The training recipe and run management."""
    t = p.add_argument_group("training")
    t.add_argument("--rand-mask-size", type=int, help="rand_uniform: number of trainable encoder entries (default: as many as BitFit trains)")
    t.add_argument("--lr-schedule", choices=["constant", "linear"], help="constant (the official code) or linear warm-up and decay")
    t.add_argument("--warmup-ratio", type=float, help="with --lr-schedule linear: warm-up share of steps")
    t.add_argument("--weight-decay", type=float, help="optimizer weight decay (official: 0)")
    t.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="autocast precision of forward/backward; trainable parameters stay fp32 (fp16: CUDA only)")
    t.add_argument("--cache-features", action=argparse.BooleanOptionalAction, help="frozen only: run the frozen encoder once (eval mode) and train the head on its cached "
                   "outputs; --no-cache-features runs the encoder every step in train mode, as the official code "
                   "(its dropout then perturbs the features)")
    t.add_argument("--list-params", action="store_true",
                   help="print the trainable-parameter report (per bias family: tensors, parameters, share) and exit")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --output-path from its last completed epoch (same flags required); "
                   "a complete run is left as it is, a new or empty directory starts from scratch")
    t.add_argument("--checkpoint", action=argparse.BooleanOptionalAction, help="save an epoch-end checkpoint (trainable tensors, optimizer, RNG states) for --resume; "
                   "removed when the run completes")
    t.add_argument("--keep-checkpoint", action="store_true",
                   help="keep the last epoch's checkpoint when the run completes, so that it can later be trained "
                   "longer: --resume with a larger --epochs continues it, and (constant schedule) the result is "
                   "bit-identical to a run started with that many epochs")
    t.add_argument("--cpu-numerics", choices=["portable", "native"],
                   help="portable: the AVX2 code paths of MKL and ATen on every x86-64 CPU (MKL_CBWR=AVX2, "
                   "ATEN_CPU_CAPABILITY=avx2), so a run re-runs bit-identically on another CPU type; native: the "
                   "fastest paths of this CPU (e.g. AVX-512, AMX for bf16), whose last digits differ between CPUs")
    t.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bars")


def _adapter_flags(p):
    """LoRA / IA3 (peft)."""
    a = p.add_argument_group("adapters (-f lora / ia3 / bitfit_lora, built on peft)")
    a.add_argument("--lora-r", type=int, help="LoRA rank r")
    a.add_argument("--lora-alpha", type=float, help="LoRA alpha (the update is scaled by alpha / r); 8 is the LoRA "
                   "paper's GLUE setting for RoBERTa-base")
    a.add_argument("--lora-dropout", type=float, help="dropout on the LoRA branch's input")
    a.add_argument("--lora-targets", nargs="+", choices=LORA_TARGETS, metavar="FAMILY",
                   help="the projections that get LoRA, named like --bias-terms: " + ", ".join(LORA_TARGETS) +
                   " (mapped from parameter names)"),


def _rerun_flags(p):
    """Re-executing a run from its config.json."""
    c = p.add_argument_group("re-running a run")
    c.add_argument("--config", metavar="CONFIG_JSON",
                   help="re-execute a run from its config.json (the settings it ran with); flags given beside it "
                   "override the saved ones, e.g. -o NEW_DIR, --model-name and --data-dir for paths that differ on "
                   "this machine. The model's weights must have the sha256 recorded in the config")

def _explicit(parser, argv):
    """The flags given on the command line (not their defaults): parse again with every default suppressed."""
    saved = [(a, a.default) for a in parser._actions]
    for a, _ in saved:
        a.default = argparse.SUPPRESS
    try:
        return vars(parser.parse_args(argv))
    finally:
        for a, default in saved:
            a.default = default


def parse_config(argv=None):
    """argv -> a validated RunConfig. With --config, the saved settings are the base and the flags given override
    them (a re-run never resumes or lists unless asked)."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.config is None:
        settings = {k: v for k, v in vars(ns).items() if k != "config"}
        missing = [flag for flag, k in (("--task-name/-t", "task_name"), ("--fine-tune-type/-f", "fine_tune_type"))
                   if settings[k] is None]
        if missing:
            parser.error(f"the following arguments are required: {', '.join(missing)}")
        return RunConfig(**settings)
    given = {k: v for k, v in _explicit(parser, argv).items() if k != "config"}
    saved = _load_saved(ns.config)
    if "output_path" not in given and not given.get("list_params"):
        raise UsageError(f"--config {ns.config}: give -o NEW_DIR for the re-run (the original run's directory is "
                         f"never written to)")
    settings = {**saved["args"], "resume": False, "list_params": False, **given}
    config = RunConfig.from_dict(settings)
    _check_model_identity(config.model_name, saved.get("model"), "model_name" in given)
    return config


def parse_bank_rerun(argv=None):
    """`--config MEMBER/config.json -o NEW` of a bias-bank member: (the whole bank's configs, each member in
    NEW/<member>, and the bank directory NEW/_bank); None for anything else."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.config is None:
        return None
    saved = _load_saved(ns.config)
    if not isinstance(saved.get("bank"), dict):
        return None
    given = {k: v for k, v in _explicit(parser, argv).items() if k != "config"}
    new_dir = given.pop("output_path", None)
    if new_dir is None:
        raise UsageError(f"--config {ns.config}: give -o NEW_DIR for the re-run of its bank (each member goes into "
                         f"NEW_DIR/<member>; the original directories are never written to)")
    from .bank import rerun_configs
    configs, bank_dir = rerun_configs(saved, given, new_dir)
    _check_model_identity(configs[0].model_name, saved.get("model"), "model_name" in given)
    return configs, bank_dir


def _load_saved(path):
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        if not isinstance(saved.get("args"), dict):
            raise ValueError
    except OSError as e:
        raise UsageError(f"--config {path}: cannot read it ({e.strerror or type(e).__name__}); give a run's "
                         f"config.json") from None
    except (ValueError, AttributeError):
        raise UsageError(f"--config {path} is not a run_glue.py config.json (no 'args' object)") from None
    return saved


def _check_model_identity(model_name, recorded, overridden):
    """A re-run must use the weights the run used: same sha256 as recorded in its config.json."""
    if not recorded or not recorded.get("sha256"):
        return  # runs from before model identities were recorded
    from .core.identity import model_identity
    expanded = os.path.expanduser(model_name)
    if not overridden and not os.path.isdir(expanded) and os.path.isabs(expanded):
        raise UsageError(f"--config: this run's model {recorded['name']} ({recorded['sha256'][:19]}...) is not at "
                         f"{model_name} on this machine; pass --model-name with the folder that holds those weights")
    found = model_identity(model_name)
    if found["sha256"] is not None and found["sha256"] != recorded["sha256"]:
        raise UsageError(f"--model-name {model_name}: its weights have {found['sha256'][:19]}..., but the run used "
                         f"{recorded['name']} with {recorded['sha256'][:19]}...; pass the model the run used")


@exit_on_usage_error
def main(argv=None):
    bank = parse_bank_rerun(argv)
    if bank is not None:  # a bias-bank member's config: the whole bank runs again
        from .bank import launch_bank
        return launch_bank(*bank, threads=recorded_threads(_explicit(build_parser(), argv)["config"]))
    config = parse_config(argv)
    if not config.list_params:
        check_writable(config.output_path, "--output-path")
    saved = _explicit(build_parser(), argv).get("config")
    if config.resume and not saved:
        saved = os.path.join(config.output_path, "config.json")
    set_process_environment(config, threads=recorded_threads(saved) if saved else None)
    from .experiment import list_params, run  # heavy imports only after the flags are known to be good
    if config.list_params:
        return list_params(config)
    launch(run, config)


def set_process_environment(config, threads=None):
    """What must be set before torch is imported (the user's own settings win): the thread policy (core/threads.py:
    threads from the free cores, idle threads spin briefly on a dedicated machine and sleep on a shared one) and the
    portable CPU numerics. `threads`: a count to keep (a --resume or --config re-run uses the one the run recorded)."""
    from .core.threads import apply_thread_policy
    apply_thread_policy(threads=threads)
    if getattr(config, "cpu_numerics", "portable") == "portable":
        for key, value in PORTABLE_CPU_ENV.items():
            os.environ.setdefault(key, value)


def recorded_threads(path):
    """torch_threads of a run's config.json (None if absent or unreadable)."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f).get("torch_threads")
        return int(value) if value else None
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def launch(run, config):
    """Run; Ctrl-C/SIGTERM end with exit 130, a run recorded as failed with exit 1 and its reason on one line."""
    try:
        record = run(config)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    if record is not None and record.status == "failed":
        print(f"error: run failed: {record.failure_reason}", file=sys.stderr)
        sys.exit(1)
