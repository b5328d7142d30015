"""The configuration of one run: every flag of run_glue.py as one dataclass, validated once, here.

Layer: core. The CLI (cli.py) only parses text into a RunConfig; the library takes its defaults from the same
fields, so a default can never differ between `run_glue.py` and `experiment.run(RunConfig(...))`. config.json
stores `asdict(config)` under "args"; `RunConfig.from_dict` reads it back (older runs lack later fields, which
take their defaults), which is what `run_glue.py --config RUN/config.json` and `--resume` build on.

This module also holds the run vocabulary that the CLI, selection and the reports share (fine-tune types, bias
families and their paper notation): torch-free, so that a bad flag is refused before torch is imported.
"""
import math
import os
from dataclasses import asdict, dataclass, field, fields

from .errors import UsageError

FINE_TUNE_TYPES = ("full_ft", "bitfit", "frozen", "rand_uniform", "rand_row_col", "lora", "ia3", "bitfit_lora")
ADAPTER_TYPES = ("lora", "ia3", "bitfit_lora")  # built on peft (core/adapters.py)
LORA_TARGETS = ("query", "key", "value", "attention_output", "intermediate", "output")
BIAS_FAMILIES = ("query", "key", "value", "attention_output", "attention_layernorm", "intermediate", "output",
                 "output_layernorm")
BIAS_TERMS = BIAS_FAMILIES + ("all",)
PAPER_NOTATION = {  # paper Table 4
    "query": "b_q", "key": "b_k", "value": "b_v", "attention_output": "b_m1", "attention_layernorm": "b_LN1",
    "intermediate": "b_m2", "output": "b_m3", "output_layernorm": "b_LN2",
}
OPTIMIZERS = ("adam", "adamw")
LR_SCHEDULES = ("constant", "linear")
PRECISIONS = ("fp32", "bf16", "fp16")
BATCH_LAYOUTS = ("auto", "padded", "packed")  # packed: core/packed.py; auto: packed on the CPU, padded on a GPU
# Settings a config.json written before they existed lacks: the value that was in force then (not today's default),
# so that an old run re-runs as it ran.
LEGACY_DEFAULTS = {"batch_layout": "padded"}
SEED_MAX = 2**32 - 1  # numpy's seed range
# --cpu-numerics portable: the CPU code paths every x86-64 machine with AVX2 runs alike, so that a run re-runs
# bit-identically on another CPU type (measured: a Full-FT run made on an AVX2 machine differs in the 7th digit of
# its loss on an AVX-512 one unless both use these). Set before torch is imported; a user's own setting wins.
PORTABLE_CPU_ENV = {"MKL_CBWR": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}

# Flags that may differ between a run and its continuation (--resume) without changing a number it computes.
RESUME_NEUTRAL = frozenset({"resume", "checkpoint", "keep_checkpoint", "verbose", "no_progress", "gpu_device",
                            "eval_batch_size", "save_evaluator", "predict_test", "output_path", "data_dir"})


class Settings:
    """What RunConfig and InstructConfig (instruct_config.py) share: the dict form config.json stores, the refusal of
    unknown saved settings and the comparison `--resume` makes."""

    @classmethod
    def refuse_unknown(cls, d, not_ours):
        """UsageError for keys of a saved config that are not fields (they would be silently ignored); `not_ours`
        ends the sentence: what the file is then."""
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise UsageError(f"config has unknown setting(s) {', '.join(unknown)}; {not_ours}")

    def to_dict(self):
        return asdict(self)

    def check_bias_terms(self):
        """--bias-terms: known families, 'all' alone or each family once, and only with -f bitfit."""
        terms = self.bias_terms
        unknown = [t for t in terms if t not in BIAS_TERMS]
        if not terms or unknown:
            raise UsageError(f"--bias-terms {' '.join(unknown or ['(empty)'])}: choose from {', '.join(BIAS_TERMS)}")
        if terms != ["all"]:
            if self.fine_tune_type != "bitfit":
                raise UsageError(f"--bias-terms applies to -f bitfit only, not {self.fine_tune_type}; drop it or use "
                                 f"-f bitfit")
            if "all" in terms:
                raise UsageError("--bias-terms: 'all' cannot be combined with other terms; give 'all' alone or a list "
                                 "of families")
            if len(set(terms)) != len(terms):
                raise UsageError(f"--bias-terms {' '.join(terms)}: a term is repeated; list each family once")

    def differences(self, other, ignore):
        """[(name, mine, theirs)] of the settings that differ, except `ignore`."""
        a, b = self.to_dict(), other.to_dict()
        return [(k, a[k], b[k]) for k in a if k not in ignore and a[k] != b[k]]


@dataclass
class RunConfig(Settings):
    """One run of run_glue.py. Field names are the CLI's dest names; defaults are the CLI's defaults."""
    task_name: str
    fine_tune_type: str
    output_path: str | None = None
    model_name: str = "bert-base-cased"
    bias_terms: list = field(default_factory=lambda: ["all"])
    gpu_device: int | None = None
    seed: int = 0
    learning_rate: float = 1e-3
    epochs: int = 16
    batch_size: int = 8
    optimizer: str = "adamw"
    save_evaluator: bool = False
    predict_test: bool = False
    verbose: bool = False
    data_dir: str | None = None
    allow_weight_mismatch: bool = False
    max_seq_length: int = 128
    train_size: int | None = None
    eval_train: bool = False
    eval_batch_size: int = 64
    pad_to_max_length: bool = False
    group_by_length: bool = False
    batch_layout: str = "auto"
    rand_mask_size: int | None = None
    lora_r: int = 8
    lora_alpha: float = 8.0
    lora_dropout: float = 0.1
    lora_targets: list = field(default_factory=lambda: ["query", "value"])
    lr_schedule: str = "constant"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    precision: str = "fp32"
    cache_features: bool = True
    list_params: bool = False
    resume: bool = False
    checkpoint: bool = True
    keep_checkpoint: bool = False
    no_progress: bool = False
    cpu_numerics: str = "portable"

    def __post_init__(self):
        self.bias_terms = list(self.bias_terms)
        self.lora_targets = list(self.lora_targets)
        self.validate()

    @classmethod
    def from_dict(cls, d):
        """A config from config.json's "args" (unknown keys are refused: they would be silently ignored)."""
        cls.refuse_unknown(d, "it was written by another version of bitfit-glue -- remove them or update bitfit-glue")
        missing = [n for n in ("task_name", "fine_tune_type") if d.get(n) is None]
        if missing:
            raise UsageError(f"config lacks {', '.join(missing)}; it is not a run_glue.py config.json")
        return cls(**{**LEGACY_DEFAULTS, **d})

    # ------------------------------------------------------------------------------------------------ validation
    def validate(self):
        """Conflicting or out-of-range settings: one clear line each (UsageError)."""
        from .data import TASKS  # the task registry is the one list of task names
        _choice("--task-name", self.task_name, TASKS)
        _choice("--fine-tune-type", self.fine_tune_type, FINE_TUNE_TYPES)
        _choice("--optimizer", self.optimizer, OPTIMIZERS)
        _choice("--lr-schedule", self.lr_schedule, LR_SCHEDULES)
        _choice("--precision", self.precision, PRECISIONS)
        _choice("--cpu-numerics", self.cpu_numerics, ("portable", "native"))
        _choice("--batch-layout", self.batch_layout, BATCH_LAYOUTS)
        if self.batch_layout == "packed" and self.pad_to_max_length:
            raise UsageError("--batch-layout packed pads nothing, --pad-to-max-length pads everything; drop one")
        if not self.list_params and not self.output_path:
            raise UsageError("--output-path/-o is required (a new or empty directory for the results)")
        self._check_numbers()
        self._check_method_flags()
        if self.precision == "fp16" and self.gpu_device is None:
            raise UsageError("--precision fp16 needs a GPU (--gpu-device N); on the CPU use bf16 or fp32")
        if self.data_dir is not None and not os.path.isdir(self.data_dir):
            raise UsageError(f"--data-dir {self.data_dir} is not a directory; point it at the folder that holds the "
                             f"GLUE task folders (RTE/, CoLA/, ...)")

    def _check_numbers(self):
        for flag, value in [("--learning-rate", self.learning_rate), ("--warmup-ratio", self.warmup_ratio),
                            ("--weight-decay", self.weight_decay)]:
            if not math.isfinite(value):
                raise UsageError(f"{flag} {value} is not a finite number; give a real value such as 1e-3")
        for flag, value, low in [("--learning-rate", self.learning_rate, None), ("--epochs", self.epochs, 1),
                                 ("--batch-size", self.batch_size, 1), ("--eval-batch-size", self.eval_batch_size, 1),
                                 ("--max-seq-length", self.max_seq_length, 8)]:
            if (low is None and not value > 0) or (low is not None and value < low):
                raise UsageError(f"{flag} {value} is out of range; it must be {'> 0' if low is None else f'>= {low}'}")
        if not 0 <= self.seed <= SEED_MAX:
            raise UsageError(f"--seed {self.seed} is out of range; give an integer in 0..{SEED_MAX}")
        if self.train_size is not None and self.train_size < 1:
            raise UsageError(f"--train-size {self.train_size}: give a positive number of training examples")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise UsageError(f"--warmup-ratio {self.warmup_ratio}: give a share in [0, 1)")
        if self.warmup_ratio > 0 and self.lr_schedule == "constant":
            raise UsageError("--warmup-ratio needs --lr-schedule linear (the constant schedule has no warm-up)")
        if self.weight_decay < 0:
            raise UsageError(f"--weight-decay {self.weight_decay}: give a value >= 0")

    def _check_method_flags(self):
        self.check_bias_terms()
        self._check_lora_flags()
        if self.rand_mask_size is not None:
            if self.fine_tune_type != "rand_uniform":
                raise UsageError("--rand-mask-size applies to -f rand_uniform only; drop it or use -f rand_uniform")
            if self.rand_mask_size < 1:
                raise UsageError(f"--rand-mask-size {self.rand_mask_size}: give a positive number of entries")


    def _check_lora_flags(self):
        lora = self.fine_tune_type in ("lora", "bitfit_lora")
        defaults = RunConfig.__dataclass_fields__
        changed = [f"--{n.replace('_', '-')}" for n in ("lora_r", "lora_alpha", "lora_dropout", "lora_targets")
                   if getattr(self, n) != (defaults[n].default_factory() if n == "lora_targets" else defaults[n].default)]
        if changed and not lora:
            raise UsageError(f"{', '.join(changed)} apply to -f lora / bitfit_lora only, not {self.fine_tune_type}; "
                             f"drop them or use -f lora")
        if self.lora_r < 1:
            raise UsageError(f"--lora-r {self.lora_r}: the rank must be a positive integer (e.g. 8)")
        if not (math.isfinite(self.lora_alpha) and self.lora_alpha > 0):
            raise UsageError(f"--lora-alpha {self.lora_alpha}: give a positive number (e.g. 8)")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise UsageError(f"--lora-dropout {self.lora_dropout}: give a probability in [0, 1)")
        unknown = [t for t in self.lora_targets if t not in LORA_TARGETS]
        if not self.lora_targets or unknown or len(set(self.lora_targets)) != len(self.lora_targets):
            raise UsageError(f"--lora-targets {' '.join(self.lora_targets) or '(empty)'}: list each of "
                             f"{', '.join(LORA_TARGETS)} at most once")


def _choice(flag, value, allowed):
    if value not in allowed:
        raise UsageError(f"{flag} {value!r} is not one of: {', '.join(allowed)}")
