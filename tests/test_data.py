"""GLUE reading: official row counts and label distributions on the real files, every format, every error path."""
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
