"""The record of one run_instruct.py run: what its results.json holds, typed, written and read by the same code.

Layer: artifacts. The instruction-tuning counterpart of RunRecord (record.py), which is GLUE-shaped (task, headline
metric, dev splits) and therefore not reused as is; the statuses, PackSummary and RecordError are shared.
`kind: "instruct"` tells the two files apart: RunRecord.load refuses this record (unknown fields), so GLUE tables and
sweeps that walk a directory skip it with a reason instead of misreading it.
"""
import math
from dataclasses import dataclass, field

from .record import JsonRecord, PackSummary, RecordError

INSTRUCT_SCHEMA_VERSION = 1


@dataclass
class InstructEpoch:
    epoch: int
    train_loss: float        # mean of the epoch's step losses (each the mean over its batch's response tokens)
    eval_loss: float         # mean next-token loss over every response token of the held-out split
    eval_perplexity: float   # exp(eval_loss)
    epoch_time_sec: float
    eval_time_sec: float


@dataclass(kw_only=True)
class InstructRecord(JsonRecord):
    """results.json of run_instruct.py. Field order is the file's key order (status first)."""
    status: str = "running"  # running | complete | failed | interrupted
    failure_reason: str | None = None
    kind: str = "instruct"
    # what ran
    model_name: str
    data: str
    fine_tune_type: str
    bias_terms: list
    learning_rate: float
    seed: int
    max_seq_length: int
    prompt_template: dict  # {"without_input": ..., "with_input": ...} (instruct_data.PROMPT_TEMPLATES)
    num_train_examples: int
    num_eval_examples: int
    dropped_examples: dict = field(default_factory=dict)  # split -> examples whose response did not fit at all
    # what trained (selection.param_report, shares in percent of the base model)
    trainable_params: int
    total_params: int
    trainable_share: float
    # the history
    epochs: list = field(default_factory=list)  # [InstructEpoch]
    best_epoch: int | None = None  # lowest eval loss (the first of equals)
    last_epoch: int | None = None
    total_train_time_sec: float = 0.0
    peak_memory_mb: float | None = None
    resumed_after_epochs: list = field(default_factory=list)
    samples: int = 0  # generations written to samples.jsonl
    pack: PackSummary | None = None
    schema_version: int = INSTRUCT_SCHEMA_VERSION

    def add_epoch(self, epoch):
        self.epochs.append(epoch)
        losses = [e.eval_loss for e in self.epochs]
        finite = [i for i, v in enumerate(losses) if not math.isnan(v)]
        best = min(finite, key=lambda i: (losses[i], i)) if finite else len(losses) - 1
        self.best_epoch, self.last_epoch = self.epochs[best].epoch, self.epochs[-1].epoch
        self.total_train_time_sec += epoch.epoch_time_sec

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict) or d.get("kind") != "instruct":
            raise RecordError("not a run_instruct.py record (no kind: instruct)")
        version = d.get("schema_version")
        if not isinstance(version, int) or version > INSTRUCT_SCHEMA_VERSION:
            raise RecordError(f"schema version {version!r} is not one this bitfit-glue reads "
                              f"({INSTRUCT_SCHEMA_VERSION})")
        return cls.from_fields(d, InstructEpoch)
