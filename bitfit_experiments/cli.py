"""The command line of run_glue.py: the official code's flags (same names, short forms, defaults) plus ours.

Every flag has help text; `python run_glue.py -h` is the reference. Mistakes end with one line on stderr and exit
code 2, as argparse does, but without the usage dump.
"""
import argparse
import math
import os
import sys

from .errors import UsageError, exit_on_usage_error
from .io_utils import check_writable

TASKS = ["cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb", "wnli"]
FINE_TUNE_TYPES = ["full_ft", "bitfit", "frozen", "rand_uniform", "rand_row_col"]
BIAS_TERMS = ["query", "key", "value", "attention_output", "attention_layernorm", "intermediate", "output",
              "output_layernorm", "all"]


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (`error: ...`) and exit code 2, without the usage dump."""

    def error(self, message):
        print(f"error: {message} (see {self.prog} -h)", file=sys.stderr)
        sys.exit(2)


def build_parser():
    p = OneLineParser(prog="run_glue.py", description="Fine-tune a Transformer encoder on a GLUE task with BitFit "
                "(bias terms only), full fine-tuning, a frozen encoder, or random parameter subsets of BitFit's size.",
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("official flags (benzakenelad/BitFit run_glue.py)")
    g.add_argument("--output-path", "-o", help="directory for every output; must be new or empty (required unless "
                   "--list-params)")
    g.add_argument("--task-name", "-t", required=True, choices=TASKS, metavar="TASK",
                   help="GLUE task: " + ", ".join(TASKS))
    g.add_argument("--model-name", "-m", default="bert-base-cased",
                   help="any Hugging Face hub id or local directory of an encoder")
    g.add_argument("--fine-tune-type", "-f", required=True, choices=FINE_TUNE_TYPES, metavar="TYPE",
                   help="full_ft: every parameter; bitfit: bias terms (see --bias-terms) + pooler bias + head; "
                   "frozen: the classifier head only; rand_uniform: --rand-mask-size random entries of the encoder "
                   "+ head; rand_row_col: a random row/column per weight matrix + LayerNorm gains + head")
    g.add_argument("--bias-terms", nargs="+", default=["all"], choices=BIAS_TERMS, metavar="TERM",
                   help="bitfit only: which bias families train, any of " + ", ".join(BIAS_TERMS) +
                   " (query=b_q key=b_k value=b_v attention_output=b_m1 attention_layernorm=b_LN1 "
                   "intermediate=b_m2 output=b_m3 output_layernorm=b_LN2; all = every bias incl. embeddings LayerNorm)")
    g.add_argument("--gpu-device", "-d", type=int, default=None, help="run on cuda:N; absent: CPU")
    g.add_argument("--seed", "-s", type=int, default=0, help="seed of data order, head init, dropout and masks")
    g.add_argument("--learning-rate", "-l", type=float, default=1e-3, help="learning rate")
    g.add_argument("--epochs", "-e", type=int, default=16, help="training epochs")
    g.add_argument("--batch-size", "-b", type=int, default=8, help="training batch size (the paper used 16)")
    g.add_argument("--optimizer", choices=["adam", "adamw"], default="adamw",
                   help="adamw: AdamW eps 1e-6 as transformers' AdamW of the official code; adam: torch Adam")
    g.add_argument("--save-evaluator", action="store_true",
                   help="save the trained evaluator (model, tokenizer, task, metric history) to OUTPUT/evaluator")
    g.add_argument("--predict-test", action="store_true",
                   help="write GLUE test-server files (e.g. RTE.tsv; MNLI also AX.tsv) to OUTPUT/test_predictions")
    g.add_argument("--verbose", action="store_true", help="print the trainable-parameter report before training")

    x = p.add_argument_group("data")
    x.add_argument("--data-dir", default=None, help="local GLUE files in the original layout (<dir>/RTE/train.tsv, "
                   "...); absent: nyu-mll/glue from the Hugging Face hub")
    x.add_argument("--max-seq-length", type=int, default=128, help="truncate sequences to this many tokens")
    x.add_argument("--train-size", type=int, default=None,
                   help="train on a seeded random subset of this many training examples (training-size curves)")
    x.add_argument("--eval-train", action="store_true",
                   help="also evaluate the training split after every epoch (the official code always does; "
                   "needed for the generalization-gap figure)")
    x.add_argument("--eval-batch-size", type=int, default=64, help="evaluation batch size (does not change results)")
    x.add_argument("--pad-to-max-length", action="store_true",
                   help="pad every batch to --max-seq-length, as the official code does (slower; padding is masked, "
                   "so the function is the same). With --eval-train --eval-batch-size 8 "
                   "(and --no-cache-features for frozen) this is the official pipeline's data path")
    x.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, default=False,
                   help="opt-in speed: form training batches from examples of similar length (shuffled chunks, as HF "
                   "group_by_length) to cut padding (~1.8x faster epochs on SST-2). It changes what is learned: "
                   "BitFit, SST-2 2k, 1 epoch, 4 seeds: dev 0.716+-0.038 grouped vs 0.760+-0.013 with the default "
                   "random batches (the official code's)")

    t = p.add_argument_group("training")
    t.add_argument("--rand-mask-size", type=int, default=None,
                   help="rand_uniform: number of trainable encoder entries (default: as many as BitFit trains)")
    t.add_argument("--lr-schedule", choices=["constant", "linear"], default="constant",
                   help="constant (the official code) or linear warm-up and decay")
    t.add_argument("--warmup-ratio", type=float, default=0.0, help="with --lr-schedule linear: warm-up share of steps")
    t.add_argument("--weight-decay", type=float, default=0.0, help="optimizer weight decay (official: 0)")
    t.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="autocast precision of forward/backward; trainable parameters stay fp32 (fp16: CUDA only)")
    t.add_argument("--cache-features", action=argparse.BooleanOptionalAction, default=True,
                   help="frozen only: run the frozen encoder once (eval mode) and train the head on its cached "
                   "outputs; --no-cache-features runs the encoder every step in train mode, as the official code "
                   "(its dropout then perturbs the features)")
    t.add_argument("--list-params", action="store_true",
                   help="print the trainable-parameter report (per bias family: tensors, parameters, share) and exit")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --output-path from its last completed epoch (same flags required); "
                   "a complete run is left as it is, a new or empty directory starts from scratch")
    t.add_argument("--checkpoint", action=argparse.BooleanOptionalAction, default=True,
                   help="save an epoch-end checkpoint (trainable tensors, optimizer, RNG states) for --resume; "
                   "removed when the run completes")
    t.add_argument("--keep-checkpoint", action="store_true",
                   help="keep the last epoch's checkpoint when the run completes, so that it can later be trained "
                   "longer: --resume with a larger --epochs continues it, and (constant schedule) the result is "
                   "bit-identical to a run started with that many epochs")
    t.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bars")
    return p


def validate(args):
    """Conflicting or out-of-range flags: one clear line each."""
    if not args.list_params and not args.output_path:
        raise UsageError("--output-path/-o is required (a new or empty directory for the results)")
    for flag, value in [("--learning-rate", args.learning_rate), ("--warmup-ratio", args.warmup_ratio),
                        ("--weight-decay", args.weight_decay)]:
        if not math.isfinite(value):
            raise UsageError(f"{flag} {value} is not a finite number; give a real value such as 1e-3")
    for flag, value, low in [("--learning-rate", args.learning_rate, None), ("--epochs", args.epochs, 1),
                             ("--batch-size", args.batch_size, 1), ("--eval-batch-size", args.eval_batch_size, 1),
                             ("--max-seq-length", args.max_seq_length, 8)]:
        if (low is None and not value > 0) or (low is not None and value < low):
            raise UsageError(f"{flag} {value} is out of range; it must be {'> 0' if low is None else f'>= {low}'}")
    if args.train_size is not None and args.train_size < 1:
        raise UsageError(f"--train-size {args.train_size}: give a positive number of training examples")
    if args.bias_terms != ["all"]:
        if args.fine_tune_type != "bitfit":
            raise UsageError(f"--bias-terms applies to -f bitfit only, not {args.fine_tune_type}; drop it or use -f bitfit")
        if "all" in args.bias_terms:
            raise UsageError("--bias-terms: 'all' cannot be combined with other terms; give 'all' alone or a list of families")
        if len(set(args.bias_terms)) != len(args.bias_terms):
            raise UsageError(f"--bias-terms {' '.join(args.bias_terms)}: a term is repeated; list each family once")
    if args.rand_mask_size is not None:
        if args.fine_tune_type != "rand_uniform":
            raise UsageError("--rand-mask-size applies to -f rand_uniform only; drop it or use -f rand_uniform")
        if args.rand_mask_size < 1:
            raise UsageError(f"--rand-mask-size {args.rand_mask_size}: give a positive number of entries")
    if not 0.0 <= args.warmup_ratio < 1.0:
        raise UsageError(f"--warmup-ratio {args.warmup_ratio}: give a share in [0, 1)")
    if args.warmup_ratio > 0 and args.lr_schedule == "constant":
        raise UsageError("--warmup-ratio needs --lr-schedule linear (the constant schedule has no warm-up)")
    if args.weight_decay < 0:
        raise UsageError(f"--weight-decay {args.weight_decay}: give a value >= 0")
    if args.precision == "fp16" and args.gpu_device is None:
        raise UsageError("--precision fp16 needs a GPU (--gpu-device N); on the CPU use bf16 or fp32")
    if not args.list_params:
        check_writable(args.output_path, "--output-path")
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        raise UsageError(f"--data-dir {args.data_dir} is not a directory; point it at the folder that holds the GLUE "
                         f"task folders (RTE/, CoLA/, ...)")
    return args


@exit_on_usage_error
def main(argv=None):
    args = validate(build_parser().parse_args(argv))
    # Idle OpenMP threads sleep instead of spinning: on a CPU shared with other jobs, spinning made every small op
    # wait 8-16 ms for the other thread here. Must be set before torch is imported; the user's setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from .experiment import run  # heavy imports (torch, transformers) only after the flags are known to be good
    try:
        run(args)
    except FloatingPointError as e:
        print(f"error: run failed: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
