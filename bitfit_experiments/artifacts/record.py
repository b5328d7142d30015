"""The run record: what results.json holds, as one typed object that is written and read by the same code.

Layer: artifacts. `experiment.py` builds a RunRecord and saves it after every epoch; tables, claims, figures, the
benchmark, the sweeps' planner and the tests read it back with `RunRecord.load` -- never by raw key. Renaming a
field here therefore breaks every reader at once (and the schema test), instead of silently emptying a column.

Schema history: version 1 (no `schema_version` field) is what runs wrote before the record was typed; it loads
unchanged, with the fields added later at their defaults. Version 2 adds `schema_version` and
`skipped_malformed_rows`.
"""
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields

from .io import atomic_write_json

SCHEMA_VERSION = 2
STATUSES = ("running", "complete", "failed", "interrupted")


class RecordError(ValueError):
    """A results.json that cannot be read as a run record (damaged, not a record, or from a newer schema)."""


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    epoch_time_sec: float
    eval_time_sec: float
    metrics: dict  # split -> metric -> value ("dev", "dev_matched", ..., and "train" with --eval-train)


@dataclass
class PackSummary:
    pack_bytes: int
    full_model_bytes: int
    ratio_to_full_model: float
    stored_values: int
    fixups: int


class JsonRecord:
    """What RunRecord and InstructRecord (instruct_record.py) share: results.json written atomically and read back
    with every field checked (`from_fields`)."""

    @property
    def complete(self):
        return self.status == "complete"

    def to_dict(self):
        return asdict(self)

    def save(self, path):
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path):
        """The record in `path` (a results.json, or a run directory). Raises RecordError with the reason."""
        if os.path.isdir(path):
            path = os.path.join(path, "results.json")
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except (OSError, UnicodeDecodeError) as e:
            raise RecordError(f"cannot read {path} ({type(e).__name__})") from None
        except ValueError:
            raise RecordError(f"{path} is not valid JSON (damaged or half-written)") from None
        try:
            return cls.from_dict(d)
        except RecordError as e:
            raise RecordError(f"{path}: {e}") from None

    @classmethod
    def from_fields(cls, d, epoch_cls, **overrides):
        """The record of a results.json object `d` (its epochs as `epoch_cls`, its pack a PackSummary); RecordError
        for a field the record does not have, fields that do not match, or an unknown status."""
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise RecordError(f"unknown field(s) {', '.join(unknown)}")
        try:
            record = cls(**dict(d, **overrides, epochs=[epoch_cls(**e) for e in d.get("epochs") or []],
                                pack=PackSummary(**d["pack"]) if d.get("pack") else None))
        except TypeError as e:
            raise RecordError(f"fields do not match the record ({e})") from None
        if record.status not in STATUSES:
            raise RecordError(f"status {record.status!r} is not one of {', '.join(STATUSES)}")
        return record


@dataclass(kw_only=True)
class RunRecord(JsonRecord):
    """results.json. Field order is the file's key order (status first, as a reader looks for it)."""
    status: str = "running"  # running | complete | failed | interrupted
    failure_reason: str | None = None
    # what ran
    task: str
    model_name: str
    fine_tune_type: str
    bias_terms: list
    learning_rate: float
    seed: int
    train_size: int | None
    num_train_examples: int
    headline_metric: str
    eval_splits: list
    # what trained (selection.param_report)
    trainable_params: int
    total_params: int
    trainable_share: float
    paper_param_share: float
    # the history
    epochs: list = field(default_factory=list)  # [EpochRecord]
    best_epoch: int | None = None
    last_epoch: int | None = None
    best: dict | None = None  # the metrics of the best epoch (split -> metric -> value)
    last: dict | None = None
    total_train_time_sec: float = 0.0
    peak_memory_mb: float | None = None
    resumed_after_epochs: list = field(default_factory=list)
    cached_features: bool = False
    pack: PackSummary | None = None
    skipped_malformed_rows: int = 0
    schema_version: int = SCHEMA_VERSION

    # ------------------------------------------------------------------------------------------------ the history
    def add_epoch(self, epoch):
        """Append an EpochRecord and update best/last: the best epoch is the first maximum of the headline metric
        on the first dev split (MNLI: matched); when every value is NaN, the last epoch."""
        self.epochs.append(epoch)
        scores = [self.headline_of(e) for e in self.epochs]
        finite = [i for i, s in enumerate(scores) if not math.isnan(s)]
        best = max(finite, key=lambda i: (scores[i], -i)) if finite else len(scores) - 1
        self.best_epoch, self.best = self.epochs[best].epoch, self.epochs[best].metrics
        self.last_epoch, self.last = self.epochs[-1].epoch, self.epochs[-1].metrics
        self.total_train_time_sec += epoch.epoch_time_sec

    def headline_of(self, epoch, split=None):
        """The headline metric of one EpochRecord on `split` (default: the first dev split)."""
        return float(epoch.metrics[split or self.eval_splits[0]][self.headline_metric])

    def headline(self, which="best", split=None):
        """The headline metric of the best (or last) epoch on `split` (default: the first dev split)."""
        metrics = self.best if which == "best" else self.last
        return float(metrics[split or self.eval_splits[0]][self.headline_metric])

    # ------------------------------------------------------------------------------------------------ JSON
    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict):
            raise RecordError("not a JSON object")
        version = d.get("schema_version", 1)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise RecordError(f"schema version {version!r} is newer than this bitfit-glue reads ({SCHEMA_VERSION}); "
                              f"update bitfit-glue")
        return cls.from_fields(d, EpochRecord, schema_version=version)


def load_config_args(run_dir):
    """The `args` of a run's config.json (the flags it ran with). Raises RecordError with the reason."""
    path = os.path.join(run_dir, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            args = json.load(f)["args"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise RecordError(f"{path} is missing or damaged") from None
    if not isinstance(args, dict):
        raise RecordError(f"{path}: 'args' is not an object")
    return args


def find_runs(runs_dir):
    """(runs, ignored) under runs_dir at any depth: runs = [(run_dir, RunRecord, config args)]; ignored =
    [(run_dir, reason)] for records or configs that cannot be read. One damaged file never hides the others."""
    runs, ignored = [], []
    for root, dirs, files in os.walk(runs_dir):
        dirs.sort()
        if "results.json" not in files:
            continue
        try:
            record = RunRecord.load(os.path.join(root, "results.json"))
            args = load_config_args(root) if os.path.exists(os.path.join(root, "config.json")) else {}
        except RecordError as e:
            ignored.append((root, str(e)))
            continue
        runs.append((root, record, args))
    return runs, ignored
