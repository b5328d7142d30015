"""The run record (results.json) is one typed contract: written and read by the same code, every committed run
still loads, the best epoch is the first maximum of the headline metric, and the tables read their columns from it."""
import dataclasses
import json
import math
import os

import pytest

from bitfit_experiments.artifacts.record import (SCHEMA_VERSION, EpochRecord, RecordError, RunRecord, find_runs)
from bitfit_experiments.report import tables
from conftest import REPO_ROOT


def record(**kw):
    base = dict(task="rte", model_name="m", fine_tune_type="bitfit", bias_terms=["all"], learning_rate=1e-3, seed=0,
                train_size=None, num_train_examples=10, headline_metric="accuracy", eval_splits=["dev"],
                trainable_params=5, total_params=100, trainable_share=5.0, paper_param_share=4.0)
    return RunRecord(**{**base, **kw})


def epoch(n, acc, loss=0.5):
    return EpochRecord(epoch=n, train_loss=loss, epoch_time_sec=1.0, eval_time_sec=0.1,
                       metrics={"dev": {"accuracy": acc}})


def test_best_epoch_is_the_first_maximum_not_the_worst_or_the_last():
    r = record()
    for n, acc in enumerate([0.55, 0.71, 0.60, 0.71, 0.52], 1):
        r.add_epoch(epoch(n, acc))
    assert r.best_epoch == 2 and r.best == {"dev": {"accuracy": 0.71}}
    assert r.last_epoch == 5 and r.last == {"dev": {"accuracy": 0.52}}
    assert r.headline("best") == 0.71 and r.headline("last") == 0.52
    assert r.total_train_time_sec == 5.0


def test_nan_epochs_are_never_the_best_unless_all_are():
    r = record()
    for n, acc in enumerate([math.nan, 0.6, math.nan], 1):
        r.add_epoch(epoch(n, acc))
    assert r.best_epoch == 2
    r = record()
    for n in (1, 2):
        r.add_epoch(epoch(n, math.nan))
    assert r.best_epoch == 2  # every value NaN: the last epoch


def test_round_trip_is_exact_and_key_order_starts_with_status(tmp_path):
    r = record()
    r.add_epoch(epoch(1, 0.6))
    r.save(tmp_path / "results.json")
    raw = json.loads((tmp_path / "results.json").read_text())
    assert list(raw)[:2] == ["status", "failure_reason"] and raw["schema_version"] == SCHEMA_VERSION
    back = RunRecord.load(str(tmp_path))
    assert back == r and isinstance(back.epochs[0], EpochRecord)


@pytest.mark.parametrize("mutate, reason", [
    (lambda d: d.update(paper_param_share_renamed=d.pop("paper_param_share")), "unknown field"),
    (lambda d: d.pop("task"), "do not match"),
    (lambda d: d.update(status="done"), "status"),
    (lambda d: d.update(schema_version=SCHEMA_VERSION + 1), "newer"),
])
def test_a_renamed_missing_or_unknown_field_is_refused_not_ignored(tmp_path, mutate, reason):
    d = record().to_dict()
    mutate(d)
    (tmp_path / "results.json").write_text(json.dumps(d))
    with pytest.raises(RecordError, match=reason):
        RunRecord.load(str(tmp_path))


def test_every_committed_run_loads_and_tables_read_param_share_from_it():
    runs, ignored = find_runs(os.path.join(REPO_ROOT, "results"))
    assert runs and not ignored, ignored
    legacy = [r for _, r, _ in runs if r.schema_version == 1]
    assert legacy, "the committed 2-epoch runs are schema 1 and must keep loading"
    done, _ = tables.load_runs(os.path.join(REPO_ROOT, "results", "cpu_repro_2epoch_grouped", "runs"))
    cells = tables.aggregate(done, "best")
    assert cells and all(c["param_share"] is not None for c in cells.values())


def test_one_damaged_record_is_listed_and_the_others_still_load(tmp_path):
    good, bad = tmp_path / "a", tmp_path / "b"
    good.mkdir(), bad.mkdir()
    r = record(status="complete")
    r.add_epoch(epoch(1, 0.6))
    r.save(good / "results.json")
    (bad / "results.json").write_text('{"status": "compl')
    runs, ignored = find_runs(str(tmp_path))
    assert [p for p, _, _ in runs] == [str(good)] and ignored[0][0] == str(bad) and "JSON" in ignored[0][1]


def test_the_record_has_every_field_the_readers_use():
    """tables/claims/figures/benchmark read these attributes; a rename in the record must fail here too."""
    names = {f.name for f in dataclasses.fields(RunRecord)}
    for used in ("status", "failure_reason", "task", "model_name", "fine_tune_type", "bias_terms", "learning_rate",
                 "seed", "train_size", "num_train_examples", "headline_metric", "eval_splits", "paper_param_share",
                 "epochs", "best", "last", "best_epoch", "last_epoch"):
        assert used in names
