"""GLUE reading: official row counts and label distributions on the real files, every format, every error path."""
import os
import re

import numpy as np
import pandas as pd
import pytest

from bitfit_experiments.core import data
from bitfit_experiments.core.data import get_task, load_split, subsample
from bitfit_experiments.core.errors import UsageError

# (task, split): (rows, {label id: count}) -- official GLUE sizes; label counts from glue/SOURCES.md.
REAL = {
    ("cola", "train"): (8551, {1: 6023, 0: 2528}), ("cola", "dev"): (1043, {1: 721, 0: 322}),
    ("sst2", "train"): (67349, {1: 37569, 0: 29780}), ("sst2", "dev"): (872, {1: 444, 0: 428}),
    ("mrpc", "train"): (3668, {1: 2474, 0: 1194}), ("mrpc", "dev"): (408, {1: 279, 0: 129}),
    ("stsb", "train"): (5749, None), ("stsb", "dev"): (1500, None),
    ("qnli", "dev"): (5463, {0: 2702, 1: 2761}),
    ("rte", "train"): (2490, {0: 1249, 1: 1241}), ("rte", "dev"): (277, {0: 146, 1: 131}),
    ("wnli", "train"): (635, {0: 323, 1: 312}), ("wnli", "dev"): (71, {0: 40, 1: 31}),
}
TEST_ROWS = {("cola", "test"): 1063, ("sst2", "test"): 1821, ("mrpc", "test"): 1725, ("stsb", "test"): 1379,
             ("qnli", "test"): 5463, ("rte", "test"): 3000, ("wnli", "test"): 146, ("mnli", "ax"): 1104}
PAIR_TASKS = {"mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"}


def check_frame(df, task):
    assert list(df.columns) == ["idx", "text_a", "text_b", "label"]
    assert df["idx"].dtype == np.int64
    assert all(isinstance(t, str) for t in df["text_a"])
    if task in PAIR_TASKS:
        assert all(isinstance(t, str) for t in df["text_b"])
    else:
        assert df["text_b"].isna().all()
    assert df["label"].dtype == (np.float32 if task == "stsb" else np.int64)


@pytest.mark.parametrize("task,split", sorted(REAL))
def test_real_counts_and_labels(glue_dir, task, split):
    rows, dist = REAL[task, split]
    df = load_split(task, split, glue_dir)
    check_frame(df, task)
    assert len(df) == rows
    if dist is None:
        assert df["label"].between(0, 5).all() and df["label"].nunique() > 50
    else:
        assert df["label"].value_counts().to_dict() == dist


@pytest.mark.parametrize("task,split", sorted(TEST_ROWS))
def test_real_test_files_unlabeled(glue_dir, task, split):
    df = load_split(task, split, glue_dir)
    check_frame(df, task)
    assert len(df) == TEST_ROWS[task, split]
    assert df["idx"].tolist() == list(range(len(df)))  # the server's index column
    if task == "stsb":
        assert df["label"].isna().all()
    else:
        assert (df["label"] == -1).all()


def test_real_text_details(glue_dir):
    # MRPC: the BOM is stripped from the header, quotes are kept literally (quoting off), idx is the row number.
    mrpc = load_split("mrpc", "dev", glue_dir)
    assert mrpc["text_b"][0] == '" The foodservice pie business does not fit our long-term growth strategy .'
    assert mrpc["idx"].tolist() == list(range(408))
    cola = load_split("cola", "dev", glue_dir)
    assert cola.loc[0, "text_a"] == "The sailors rode the breeze clear of the rocks." and cola.loc[0, "label"] == 1
    rte = load_split("rte", "dev", glue_dir)
    assert rte.loc[0, "text_b"] == "Christopher Reeve had an accident." and rte.loc[0, "label"] == 1  # not_entailment
    wnli = load_split("wnli", "train", glue_dir)
    assert wnli.loc[0, "text_b"] == "The carrot had a hole." and wnli.loc[0, "label"] == 1  # 1 = entailment
    stsb = load_split("stsb", "dev", glue_dir)
    assert stsb.loc[1, "label"] == pytest.approx(4.75)


def test_fixture_mnli(fixture_glue_dir):
    expected = {"train": [1, 0, 0, 0, 1, 2, 1, 2], "dev_matched": [1, 2, 0, 2, 2, 2, 1],
                "dev_mismatched": [2, 2, 0, 0, 0, 0], "test_matched": [-1] * 6, "test_mismatched": [-1] * 7}
    for split, labels in expected.items():
        df = load_split("mnli", split, fixture_glue_dir)
        check_frame(df, "mnli")
        assert df["label"].tolist() == labels, split
        assert df["idx"].tolist() == list(range(len(labels)))
    train = load_split("mnli", "train", fixture_glue_dir)
    assert train.loc[0, "text_a"].startswith("Conceptually cream skimming")
    assert train.loc[0, "text_b"] == "Product and geography are what make cream skimming work. "  # not stripped
    dev = load_split("mnli", "dev_matched", fixture_glue_dir)
    assert dev.loc[6, "text_a"] == 'He said "null" and walked out.' and dev.loc[6, "text_b"] == "NA"


def test_fixture_qqp(fixture_glue_dir):
    train = load_split("qqp", "train", fixture_glue_dir)
    check_frame(train, "qqp")
    assert train["label"].tolist() == [0, 1, 0, 1, 0, 0, 0, 1]
    assert train["idx"].tolist()[:2] == [133273, 402555]  # the file's id column
    dev = load_split("qqp", "dev", fixture_glue_dir)
    assert dev["label"].tolist() == [0, 0, 1, 0, 0, 0]
    assert dev.loc[5, "text_b"] == "null"  # not turned into a missing value
    test = load_split("qqp", "test", fixture_glue_dir)
    assert test["idx"].tolist() == list(range(7)) and (test["label"] == -1).all()
    assert test.loc[4, "text_a"] == 'How "aberystwyth" start reading?'


def test_task_specs():
    assert sorted(data.TASKS) == ["cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb", "wnli"]
    assert get_task("STSB").is_regression and get_task("stsb").num_labels == 1
    assert get_task("mnli").label_names == ("entailment", "neutral", "contradiction")
    assert get_task("mnli").eval_splits == ("dev_matched", "dev_mismatched")
    assert get_task("mnli").test_splits == ("test_matched", "test_mismatched", "ax")
    assert get_task("wnli").label_names == ("not_entailment", "entailment")
    assert {t: s.headline for t, s in data.TASKS.items()} == {
        "cola": "matthews_correlation", "mnli": "accuracy", "mrpc": "f1", "qnli": "accuracy", "qqp": "f1",
        "rte": "accuracy", "sst2": "accuracy", "stsb": "spearmanr", "wnli": "accuracy"}
    with pytest.raises(UsageError, match="unknown task 'mnli-m'.*cola, mnli"):
        get_task("mnli-m")
    with pytest.raises(UsageError, match="no split 'dev'.*dev_matched"):
        load_split("mnli", "dev", "/nonexistent")


# --- bad input ---------------------------------------------------------------------------------------------------
def write(tmp_path, rel, content, mode="w"):
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "wb":
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


def raises(match, task, split, tmp_path):
    with pytest.raises(UsageError, match=match) as info:
        load_split(task, split, str(tmp_path))
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    raises(r"not found: .*RTE/dev\.tsv.*<data-dir>/<Task>/<split>\.tsv", "rte", "dev", tmp_path)
    raises(r"not found: .*diagnostic/diagnostic\.tsv", "mnli", "ax", tmp_path)


def test_empty_file(tmp_path):
    write(tmp_path, "RTE/dev.tsv", "")
    raises(r"RTE/dev\.tsv is empty", "rte", "dev", tmp_path)


def test_missing_columns(tmp_path):
    write(tmp_path, "RTE/dev.tsv", "index\tsentence1\tlabel\n0\tA man.\tentailment\n")
    raises(r"lacks column\(s\) 'sentence2'", "rte", "dev", tmp_path)
    write(tmp_path, "SST-2/train.tsv", "sentence\n a fine film\n")
    raises(r"lacks column\(s\) 'label'", "sst2", "train", tmp_path)


def test_short_row(tmp_path):
    write(tmp_path, "RTE/train.tsv", "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tentailment\n1\tA man sleeps.\n")
    raises(r"RTE/train\.tsv line 3 has 2 tab-separated field\(s\), expected at least 4", "rte", "train", tmp_path)
    write(tmp_path, "CoLA/dev.tsv", "gj04\t1\t\tA sentence.\ngj04\t0\n")
    raises(r"CoLA/dev\.tsv line 2 has 2", "cola", "dev", tmp_path)


def test_bad_labels(tmp_path):
    write(tmp_path, "RTE/dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tneutral\n")
    raises(r"line 2: label 'neutral' is not one of entailment, not_entailment", "rte", "dev", tmp_path)
    write(tmp_path, "SST-2/dev.tsv", "sentence\tlabel\ngood .\t1\nbad .\t2\n")
    raises(r"SST-2/dev\.tsv line 3: label '2' is not one of 0..1", "sst2", "dev", tmp_path)
    write(tmp_path, "STS-B/dev.tsv", "index\tsentence1\tsentence2\tscore\n0\tA.\tB.\t5.2\n")
    raises(r"score '5.2' is not a number in \[0, 5\]", "stsb", "dev", tmp_path)
    # A CoLA file with a header (e.g. the test file renamed) is caught: too few fields for the header-less layout.
    write(tmp_path, "CoLA/train.tsv", "index\tsentence\n0\tBill whistled past the house.\n")
    raises(r"line 1 has 2", "cola", "train", tmp_path)


def test_non_utf8(tmp_path):
    write(tmp_path, "WNLI/dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\tCaf\xe9.\tB.\t1\n".encode("latin-1"), "wb")
    raises(r"WNLI/dev\.tsv is not valid UTF-8", "wnli", "dev", tmp_path)


def test_extra_columns_and_order_are_fine(tmp_path):
    # Columns are found by header name, so a re-ordered file with extra columns still reads correctly.
    write(tmp_path, "QNLI/dev.tsv", "label\textra\tsentence\tindex\tquestion\nnot_entailment\tx\tS.\t7\tQ?\n")
    df = load_split("qnli", "dev", str(tmp_path))
    assert df.iloc[0].tolist() == [7, "Q?", "S.", 1]


def test_hub_failure_message(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)\nmore detail")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UsageError, match=r"nyu-mll/glue \(mnli, validation_matched\).*hub could not be reached.*"
                                         r"--data-dir") as info:
        load_split("mnli", "dev_matched", None)
    assert "\n" not in str(info.value)


def test_hub_mapping(monkeypatch):
    # The hub path maps hub columns onto ours; checked with an in-memory stand-in for the hub dataset.
    import datasets
    calls = []

    def fake(path, config, split):
        calls.append((path, config, split))
        return datasets.Dataset.from_dict({"premise": ["P."], "hypothesis": ["H."], "label": [-1], "idx": [3]})
    monkeypatch.setattr(datasets, "load_dataset", fake)
    df = load_split("mnli", "ax", None)
    assert calls == [("nyu-mll/glue", "ax", "test")]
    assert df.iloc[0].tolist() == [3, "P.", "H.", -1]
    monkeypatch.setattr(datasets, "load_dataset", lambda path, config, split: datasets.Dataset.from_dict(
        {"sentence1": ["A."], "sentence2": ["B."], "label": [-1.0], "idx": [0]}))
    df = load_split("stsb", "test", None)
    assert df["label"].dtype == np.float32 and df["label"].isna().all()


def test_subsample():
    df = pd.DataFrame({"idx": range(100), "text_a": [str(i) for i in range(100)], "text_b": None, "label": 0})
    a, b, c = subsample(df, 10, seed=1), subsample(df, 10, seed=1), subsample(df, 10, seed=2)
    assert len(a) == 10 and a["idx"].tolist() == b["idx"].tolist() != c["idx"].tolist()
    assert a["idx"].tolist() == np.random.RandomState(1).permutation(100)[:10].tolist()
    assert a.index.tolist() == list(range(10)) and a["idx"].is_unique
    assert subsample(df, None, seed=0) is df
    with pytest.raises(UsageError, match="--train-size 101.*100 rows"):
        subsample(df, 101, seed=0)
    with pytest.raises(UsageError, match="--train-size 0"):
        subsample(df, 0, seed=0)


# --- issue 14: real lines and bytes, strict labels, unreadable files, QQP's malformed rows -------------------------

def test_bad_label_after_blank_lines_is_reported_on_its_own_line(tmp_path):
    """Blank lines are skipped, but they still count: line 6 is line 6 of the file, as an editor shows it."""
    write(tmp_path, "RTE/dev.tsv", "index\tsentence1\tsentence2\tlabel\n\n0\tA.\tB.\tentailment\n\n\n"
                                   "1\tA.\tB.\tmaybe\n")
    raises(r"RTE/dev\.tsv line 6: label 'maybe'", "rte", "dev", tmp_path)
    write(tmp_path, "CoLA/dev.tsv", "\n\ngj04\t1\t\tA sentence.\ngj04\t7\t\tB.\n")  # no header
    raises(r"CoLA/dev\.tsv line 4: label '7'", "cola", "dev", tmp_path)
    write(tmp_path, "RTE/train.tsv", "index\tsentence1\tsentence2\tlabel\n\n\n0\tA man sleeps.\n")
    raises(r"RTE/train\.tsv line 4 has 2 tab-separated", "rte", "train", tmp_path)


def test_bad_byte_is_reported_at_its_offset_in_the_file(tmp_path):
    """The decoder works in chunks of ~8 kB and reports an offset within its chunk: ours is the file's."""
    good = "".join(f"{i}\tA man is playing a guitar number {i}.\tSomeone plays.\tentailment\n" for i in range(600))
    head = ("index\tsentence1\tsentence2\tlabel\n" + good).encode()
    assert len(head) > 3 * 8192
    write(tmp_path, "RTE/dev.tsv", head + b"600\tCaf\xe9.\tB.\tentailment\n", "wb")
    offset = len(head) + len(b"600\tCaf")
    raises(rf"RTE/dev\.tsv is not valid UTF-8 \(byte {offset}, line 602\)", "rte", "dev", tmp_path)


def test_a_field_longer_than_csvs_limit_is_one_line(tmp_path):
    import csv
    long = "x" * (csv.field_size_limit() + 1)
    write(tmp_path, "SST-2/train.tsv", f"sentence\tlabel\ngood .\t1\n{long}\t0\n")
    raises(r"SST-2/train\.tsv line 3: field larger than field limit .*not a GLUE TSV", "sst2", "train", tmp_path)


@pytest.mark.parametrize("label", ["²", "--1", "-1", "٣", "1_0", "+1", "1.0", "0x1", ""])
def test_integer_labels_are_ascii_digits_only(tmp_path, label):
    """int() and str.isdigit() accept '²', '٣' and '1_0'; no GLUE file has them, so they are refused in one line."""
    write(tmp_path, "SST-2/dev.tsv", f"sentence\tlabel\ngood .\t1\nbad .\t{label}\n")
    raises(rf"SST-2/dev\.tsv line 3: label '{re.escape(label)}' is not one of 0\.\.1", "sst2", "dev", tmp_path)


@pytest.mark.parametrize("score", ["٣", "1_0", "nan", "inf", "-0.5", "1e0", "²", "5.0001"])
def test_scores_are_plain_decimals_in_range(tmp_path, score):
    write(tmp_path, "STS-B/dev.tsv", f"index\tsentence1\tsentence2\tscore\n0\tA.\tB.\t3.8\n1\tA.\tB.\t{score}\n")
    raises(rf"STS-B/dev\.tsv line 3: score '{re.escape(score)}' is not a number in \[0, 5\]", "stsb", "dev", tmp_path)


def test_plain_scores_and_labels_still_read(tmp_path):
    write(tmp_path, "STS-B/dev.tsv", "index\tsentence1\tsentence2\tscore\n0\tA.\tB.\t5.000\n1\tA.\tB.\t.5\n"
                                     "2\tA.\tB.\t 0 \n")
    assert load_split("stsb", "dev", str(tmp_path))["label"].tolist() == [5.0, 0.5, 0.0]


def test_index_with_unicode_digits_is_refused(tmp_path):
    write(tmp_path, "RTE/test.tsv", "index\tsentence1\tsentence2\n0\tA.\tB.\n١\tA.\tB.\n")
    raises(r"RTE/test\.tsv line 3: index '١' is not a non-negative integer", "rte", "test", tmp_path)


def test_unreadable_file_is_one_line_even_as_root(tmp_path, monkeypatch):
    """Root reads a chmod 000 file anyway, so the refusal is simulated: open() raises PermissionError."""
    path = write(tmp_path, "RTE/dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tentailment\n")
    real_open = open

    def guarded(file, *args, **kwargs):
        if os.fspath(file) == path:
            raise PermissionError(13, "Permission denied", path)
        return real_open(file, *args, **kwargs)
    monkeypatch.setattr("builtins.open", guarded)
    raises(r"cannot read .*RTE/dev\.tsv \(Permission denied\); make the file readable", "rte", "dev", tmp_path)


def test_a_directory_where_a_file_belongs(tmp_path):
    (tmp_path / "RTE" / "dev.tsv").mkdir(parents=True)
    raises(r"RTE/dev\.tsv is a directory, not a GLUE file", "rte", "dev", tmp_path)


# The original QQP train.tsv: a question with a line break in it splits its row into two short lines (GLUE-baselines
# issue 5 quotes one: '"\tWas Muhammad a real historical figure? ...\t0'). Both halves have fewer than 6 fields.
QQP_SPLIT_ROW = ('133274\t213223\t213224\t"How do I get over the fear of\n'
                 '"\tWas Muhammad a real historical figure? What is the evidence for his existence?\t0\n')


def _qqp_with_split_row(tmp_path, fixture_glue_dir, split="train"):
    import shutil
    folder = tmp_path / "QQP"
    shutil.copytree(os.path.join(fixture_glue_dir, "QQP"), folder)
    lines = (folder / f"{split}.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    (folder / f"{split}.tsv").write_text("".join(lines[:3] + [QQP_SPLIT_ROW] + lines[3:]), encoding="utf-8")
    return str(tmp_path)


def test_qqp_train_skips_malformed_rows_like_the_glue_processors(tmp_path, fixture_glue_dir, capsys):
    data_dir = _qqp_with_split_row(tmp_path, fixture_glue_dir)
    capsys.readouterr()
    df = load_split("qqp", "train", data_dir)
    clean = load_split("qqp", "train", fixture_glue_dir)
    assert df.attrs["skipped_malformed_rows"] == 2
    assert clean.attrs["skipped_malformed_rows"] == 0
    pd.testing.assert_frame_equal(df, clean, check_flags=False)  # the good rows, all of them, unchanged
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "skipped 2 malformed row(s)" in err[0] and "line(s) 4, 5" in err[0], err
    assert subsample(df, 3, 0).attrs["skipped_malformed_rows"] == 2  # survives the --train-size subset


def test_qqp_dev_and_test_and_other_tasks_stay_strict(tmp_path, fixture_glue_dir):
    data_dir = _qqp_with_split_row(tmp_path, fixture_glue_dir, split="dev")
    with pytest.raises(UsageError, match=r"QQP/dev\.tsv line 4 has 4 tab-separated field\(s\), expected at least 6"):
        load_split("qqp", "dev", data_dir)
    write(tmp_path, "RTE/train.tsv", "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tentailment\n1\tA man\n")
    raises(r"RTE/train\.tsv line 3 has 2", "rte", "train", tmp_path)


def test_a_qqp_train_file_of_only_short_rows_is_not_skipped_to_nothing(tmp_path):
    write(tmp_path, "QQP/train.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n1\t2\t3\tA?\n4\tB?\t0\n")
    raises(r"every data row has fewer than 6 tab-separated fields", "qqp", "train", tmp_path)
