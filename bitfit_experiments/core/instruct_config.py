"""The configuration of one run of run_instruct.py: every flag as one dataclass, validated once, here.

Layer: core. Like RunConfig (config.py) for run_glue.py: the CLI (instruct_cli.py) only parses text into an
InstructConfig and takes its defaults from these fields; config.json stores `asdict(config)` under "args", and
`--resume` compares the saved settings with the new ones through `differences`. Torch-free, so a bad flag is refused
before torch is imported.
"""
import math
from dataclasses import dataclass, field

from .config import OPTIMIZERS, PRECISIONS, SEED_MAX, Settings
from .errors import UsageError

INSTRUCT_TYPES = ("bitfit", "full_ft")  # lora: once it exists for causal LMs (another issue)
# Flags that may differ between a run and its continuation (--resume) without changing a number it computes.
# --data is not among them: other records are another run (a moved file is resumed under its old path or anew).
INSTRUCT_RESUME_NEUTRAL = frozenset({"resume", "checkpoint", "keep_checkpoint", "no_progress", "gpu_device",
                                     "eval_batch_size", "output_path", "max_new_tokens"})


@dataclass
class InstructConfig(Settings):
    """One run of run_instruct.py. Field names are the CLI's dest names; defaults are the CLI's defaults."""
    output_path: str | None = None
    model_name: str | None = None
    data: str | None = None
    fine_tune_type: str = "bitfit"
    bias_terms: list = field(default_factory=lambda: ["all"])
    learning_rate: float = 1e-3
    epochs: int = 3
    batch_size: int = 8
    seed: int = 0
    max_seq_length: int = 256
    eval_size: float = 0.05
    eval_batch_size: int = 8
    max_new_tokens: int = 64
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    precision: str = "fp32"
    gpu_device: int | None = None
    resume: bool = False
    checkpoint: bool = True
    keep_checkpoint: bool = False
    no_progress: bool = False

    def __post_init__(self):
        self.bias_terms = list(self.bias_terms)
        self.validate()

    @classmethod
    def from_dict(cls, d):
        """A config from config.json's "args" (unknown keys are refused: they would be silently ignored)."""
        cls.refuse_unknown(d, "it is not a run_instruct.py config.json of this version")
        return cls(**d)

    # ------------------------------------------------------------------------------------------------ validation
    def validate(self):
        """Conflicting or out-of-range settings: one clear line each (UsageError)."""
        for flag, value in (("--output-path/-o", self.output_path), ("--model-name/-m", self.model_name),
                            ("--data", self.data)):
            if not value:
                raise UsageError(f"{flag} is required")
        if self.fine_tune_type == "lora":
            raise UsageError("--fine-tune-type lora is not available for run_instruct.py yet; use bitfit or full_ft")
        _choice("--fine-tune-type", self.fine_tune_type, INSTRUCT_TYPES)
        _choice("--optimizer", self.optimizer, OPTIMIZERS)
        _choice("--precision", self.precision, PRECISIONS)
        self._check_numbers()
        self.check_bias_terms()
        if self.precision == "fp16" and self.gpu_device is None:
            raise UsageError("--precision fp16 needs a GPU (--gpu-device N); on the CPU use bf16 or fp32")

    def _check_numbers(self):
        for flag, value in (("--learning-rate", self.learning_rate), ("--weight-decay", self.weight_decay),
                            ("--eval-size", self.eval_size)):
            if not math.isfinite(value):
                raise UsageError(f"{flag} {value} is not a finite number")
        if not self.learning_rate > 0:
            raise UsageError(f"--learning-rate {self.learning_rate} is out of range; it must be > 0")
        for flag, value, low in (("--epochs", self.epochs, 1), ("--batch-size", self.batch_size, 1),
                                 ("--eval-batch-size", self.eval_batch_size, 1),
                                 ("--max-seq-length", self.max_seq_length, 8),
                                 ("--max-new-tokens", self.max_new_tokens, 0)):
            if value < low:
                raise UsageError(f"{flag} {value} is out of range; it must be >= {low}")
        if not 0 <= self.seed <= SEED_MAX:
            raise UsageError(f"--seed {self.seed} is out of range; give an integer in 0..{SEED_MAX}")
        if self.weight_decay < 0:
            raise UsageError(f"--weight-decay {self.weight_decay}: give a value >= 0")
        if not (0 < self.eval_size < 1 or (self.eval_size >= 1 and float(self.eval_size).is_integer())):
            raise UsageError(f"--eval-size {self.eval_size}: give a share of the records in (0, 1) or a whole number "
                             f"of records >= 1")



def _choice(flag, value, allowed):
    if value not in allowed:
        raise UsageError(f"{flag} {value!r} is not one of: {', '.join(allowed)}")
