"""GLUE test-server files: name, header, label strings, row counts checked against the real test files."""
import csv

import numpy as np
import pytest

from bitfit_experiments.core.data import get_task, load_split
from bitfit_experiments.core.errors import UsageError
from bitfit_experiments.artifacts.submission import SERVER_FILES, write_server_file

TEST_ROWS = {("cola", "test"): 1063, ("sst2", "test"): 1821, ("mrpc", "test"): 1725, ("stsb", "test"): 1379,
             ("qnli", "test"): 5463, ("rte", "test"): 3000, ("wnli", "test"): 146, ("mnli", "ax"): 1104,
             ("qqp", "test"): 7, ("mnli", "test_matched"): 6, ("mnli", "test_mismatched"): 7}  # last three: fixtures
STRINGS = {"mnli": {"entailment", "neutral", "contradiction"}, "qnli": {"entailment", "not_entailment"},
           "rte": {"entailment", "not_entailment"}}


def read(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quotechar=None))


def test_covers_every_test_split():
    assert SERVER_FILES.keys() == TEST_ROWS.keys()
    from bitfit_experiments.core.data import TASKS
    assert {(t, s) for t, spec in TASKS.items() for s in spec.test_splits} == set(SERVER_FILES)


@pytest.mark.parametrize("task,split", sorted(TEST_ROWS))
def test_round_trip(task, split, glue_dir, fixture_glue_dir, tmp_path):
    data_dir = fixture_glue_dir if task == "qqp" or split.startswith("test_") else glue_dir
    df = load_split(task, split, data_dir)
    assert len(df) == TEST_ROWS[task, split]
    spec = get_task(task)
    rng = np.random.RandomState(0)
    preds = rng.uniform(-1, 6, len(df)) if spec.is_regression else rng.randint(0, spec.num_labels, len(df))
    path = write_server_file(task, split, df["idx"], preds, str(tmp_path), expected_rows=TEST_ROWS[task, split])
    assert path == str(tmp_path / SERVER_FILES[task, split])
    rows = read(path)
    assert rows[0] == ["index", "prediction"] and len(rows) == len(df) + 1
    assert [int(r[0]) for r in rows[1:]] == df["idx"].tolist()
    values = [r[1] for r in rows[1:]]
    if spec.is_regression:
        expected = [f"{v:.3f}" for v in np.clip(preds, 0, 5)]
        assert values == expected and {"0.000", "5.000"} <= set(values)
    elif task in STRINGS:
        assert values == [spec.label_names[p] for p in preds] and set(values) == STRINGS[task]
    else:
        assert values == [str(p) for p in preds] and set(values) == {"0", "1"}


def test_exact_bytes(tmp_path):
    path = write_server_file("rte", "test", [0, 1, 2], np.array([0, 1, 0]), tmp_path, 3)
    assert open(path, "rb").read() == b"index\tprediction\n0\tentailment\n1\tnot_entailment\n2\tentailment\n"
    path = write_server_file("wnli", "test", [0, 1], [1, 0], tmp_path, 2)
    assert open(path, "rb").read() == b"index\tprediction\n0\t1\n1\t0\n"
    path = write_server_file("mnli", "ax", [0, 1, 2], [2, 1, 0], tmp_path, 3)
    assert open(path).read() == "index\tprediction\n0\tcontradiction\n1\tneutral\n2\tentailment\n"
    path = write_server_file("stsb", "test", [0, 1], np.array([3.14159, -0.2], dtype=np.float32), tmp_path, 2)
    assert open(path).read() == "index\tprediction\n0\t3.142\n1\t0.000\n"


def test_errors_write_nothing(tmp_path):
    with pytest.raises(UsageError, match="RTE.tsv: 2 predictions.*has 3000 rows"):
        write_server_file("rte", "test", [0, 1], [0, 1], tmp_path, 3000)
    with pytest.raises(UsageError, match="no GLUE server file for rte/dev"):
        write_server_file("rte", "dev", [0], [0], tmp_path, 1)
    with pytest.raises(ValueError, match="class ids must be in 0..1"):
        write_server_file("sst2", "test", [0, 1], [0, 2], tmp_path, 2)
    assert list(tmp_path.iterdir()) == []
