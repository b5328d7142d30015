"""The command line of run_instruct.py: run_glue.py's flags where they mean the same thing (-o -m -f -l -e -b -s
--bias-terms -d --max-seq-length --no-progress --resume ...), plus --data, --eval-size and --max-new-tokens.

Layer: run. It only turns text into a validated InstructConfig (core/instruct_config.py, where every default and rule
lives) and hands it to instruct.run. Mistakes end with one line on stderr and exit code 2.
"""
import argparse
from dataclasses import MISSING, fields

from .artifacts.io import check_writable
from .cli import OneLineParser, launch, set_process_environment
from .core.config import BIAS_TERMS, OPTIMIZERS, PRECISIONS
from .core.errors import exit_on_usage_error
from .core.instruct_config import INSTRUCT_TYPES, InstructConfig
from .core.instruct_data import PROMPT_TEMPLATE_WITH_INPUT


def build_parser():
    p = OneLineParser(prog="run_instruct.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                      description="Instruction-tune a causal LM (BLOOM(Z), GPT-2, OPT, Pythia, Qwen2, ...) on "
                      "alpaca-format records with BitFit (bias terms only) or full fine-tuning. Prompt template: "
                      + repr(PROMPT_TEMPLATE_WITH_INPUT) + " (without the input line when a record has none); the "
                      "loss covers the response tokens (output + EOS) only.")
    g = p.add_argument_group("as in run_glue.py")
    g.add_argument("--output-path", "-o", help="directory for every output; must be new or empty (required)")
    g.add_argument("--model-name", "-m", help="a causal LM: Hugging Face hub id or local directory (required)")
    g.add_argument("--fine-tune-type", "-f", choices=INSTRUCT_TYPES, metavar="TYPE",
                   help="bitfit: the base model's bias terms (see --bias-terms; the pretrained output layer stays "
                   "frozen); full_ft: every parameter")
    g.add_argument("--bias-terms", nargs="+", choices=BIAS_TERMS, metavar="TERM",
                   help="bitfit only: which bias families train, any of " + ", ".join(BIAS_TERMS) + "; a fused "
                   "q/k/v bias (GPT-2, BLOOM, GPT-NeoX) trains exactly the chosen families' entries")
    g.add_argument("--learning-rate", "-l", type=float, help="learning rate (constant)")
    g.add_argument("--epochs", "-e", type=int, help="training epochs")
    g.add_argument("--batch-size", "-b", type=int, help="training batch size")
    g.add_argument("--seed", "-s", type=int, help="seed of the held-out split, data order and dropout")
    g.add_argument("--gpu-device", "-d", type=int, help="run on cuda:N; absent: CPU")
    g.add_argument("--optimizer", choices=OPTIMIZERS, help="adamw (eps 1e-6, as run_glue) or adam")
    g.add_argument("--weight-decay", type=float, help="optimizer weight decay")
    g.add_argument("--precision", choices=PRECISIONS, help="autocast precision of forward/backward; trainable "
                   "parameters stay fp32 (fp16: CUDA only)")
    g.add_argument("--max-seq-length", type=int, help="cut prompt + response to this many tokens (an example whose "
                   "response is cut away entirely is dropped and counted)")
    g.add_argument("--eval-batch-size", type=int, help="batch size of the eval loss (does not change results)")
    g.add_argument("--resume", action="store_true", help="continue the run in --output-path from its last "
                   "completed epoch (same flags required; a larger --epochs trains a --keep-checkpoint run longer)")
    g.add_argument("--checkpoint", action=argparse.BooleanOptionalAction,
                   help="save an epoch-end checkpoint for --resume; removed when the run completes")
    g.add_argument("--keep-checkpoint", action="store_true",
                   help="keep the last epoch's checkpoint when the run completes (to train it longer later)")
    g.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bars")
    d = p.add_argument_group("instruction data")
    d.add_argument("--data", help="alpaca-format records (instruction, input, output): a local .json (a list) or "
                   ".jsonl (one per line) file, or a hub dataset id such as yahma/alpaca-cleaned (required)")
    d.add_argument("--eval-size", type=float, help="held-out records for the eval loss and perplexity: a share in "
                   "(0, 1) or a whole number of records; drawn with --seed")
    d.add_argument("--max-new-tokens", type=int, help="greedy generation length for the fixed prompts written to "
                   "samples.jsonl (0: no samples)")
    defaults = {f.name: f.default_factory() if f.default_factory is not MISSING else f.default
                for f in fields(InstructConfig)}
    for action in p._actions:  # the defaults are InstructConfig's, the one place they are written
        if action.dest in defaults:
            action.default = defaults[action.dest]
    return p


def parse_config(argv=None):
    """argv -> a validated InstructConfig."""
    ns = build_parser().parse_args(argv)
    return InstructConfig(**vars(ns))


@exit_on_usage_error
def main(argv=None):
    config = parse_config(argv)
    check_writable(config.output_path, "--output-path")
    set_process_environment(config)
    from .instruct import run  # heavy imports only after the flags are known to be good
    launch(run, config)