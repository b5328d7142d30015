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


# --- the server zip: python -m bitfit_experiments.submission (issue 14, item 10) ---------------------------------
import json
import os
import shutil
import subprocess
import sys
import zipfile

from bitfit_experiments.artifacts.submission import SERVER_ROWS
from bitfit_experiments.core.errors import exit_on_usage_error
from bitfit_experiments.report import submission
from conftest import REPO_ROOT
from test_tables import make_run

PLACEHOLDERS = ["SST-2.tsv", "MRPC.tsv", "STS-B.tsv", "QQP.tsv", "QNLI.tsv", "WNLI.tsv"]


def predict_test(run_dir, task, label, data_dir):
    """Write a run's test_predictions/ as run_glue.py --predict-test does; every row predicts `label` (a class id),
    so the zip shows which run each file came from. Splits without a test file here get the published size."""
    spec = get_task(task)
    for split in spec.test_splits:
        name = SERVER_FILES[(task, split)]
        try:
            idx = load_split(task, split, data_dir)["idx"]
        except UsageError:
            idx = range(SERVER_ROWS[name])
        write_server_file(task, split, idx, np.full(len(idx), label), os.path.join(run_dir, "test_predictions"),
                          expected_rows=len(idx))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """RTE: BitFit lr 1e-3 wins on the last epoch (mean .69; seed 1 is its best run), BitFit lr 1e-4 wins on the best
    epoch (.75 vs .70); Full-FT trails. CoLA: one Full-FT run. MNLI: one BitFit run (MNLI-m, MNLI-mm and AX)."""
    glue = os.environ.get("GLUE_DIR") or os.path.join(REPO_ROOT, "..", "shared", "glue")
    root = str(tmp_path_factory.mktemp("submission") / "runs")
    made = {
        "rte_lr1e-3_s0": (make_run(root, "rte/bitfit/lr1e-3/s0", "rte", "bitfit", 1e-3, 0, [0.60, 0.68]), 0),
        "rte_lr1e-3_s1": (make_run(root, "rte/bitfit/lr1e-3/s1", "rte", "bitfit", 1e-3, 1, [0.72, 0.70]), 1),
        "rte_lr1e-4_s0": (make_run(root, "rte/bitfit/lr1e-4/s0", "rte", "bitfit", 1e-4, 0, [0.75, 0.50]), 0),
        "rte_full": (make_run(root, "rte/full/s0", "rte", "full_ft", 2e-5, 0, [0.60, 0.66]), 0),
        "cola_full": (make_run(root, "cola/full/s0", "cola", "full_ft", 2e-5, 0, [0.30, 0.40]), 1),
        "mnli": (make_run(root, "mnli/bitfit/s0", "mnli", "bitfit", 1e-3, 0, [0.70], mm=[0.71]), 2),
    }
    for key, (path, label) in made.items():
        predict_test(path, key.split("_")[0], label, glue)
    return root, {k: p for k, (p, _) in made.items()}, glue


def make_zip(capsys, root, out, *flags):
    capsys.readouterr()
    files = submission.main([root, "--zip", str(out), *flags])
    return files, zipfile.ZipFile(out), capsys.readouterr().out


def test_zip_holds_the_best_run_per_task_and_marked_placeholders(capsys, runs, tmp_path):
    root, made, glue = runs
    files, z, out = make_zip(capsys, root, tmp_path / "glue_submission.zip", "--data-dir", glue)
    assert z.namelist() == list(SERVER_FILES.values())  # flat, all eleven, the server's names
    for name in z.namelist():
        rows = z.read(name).decode().splitlines()
        assert rows[0] == "index\tprediction" and len(rows) - 1 == SERVER_ROWS[name], name
    best = os.path.join(made["rte_lr1e-3_s1"], "test_predictions")
    assert z.read("RTE.tsv") == open(os.path.join(best, "RTE.tsv"), "rb").read()  # best lr (last epoch), best seed
    mnli = os.path.join(made["mnli"], "test_predictions")
    for name in ("MNLI-m.tsv", "MNLI-mm.tsv", "AX.tsv"):  # AX comes from the MNLI run
        assert z.read(name) == open(os.path.join(mnli, name), "rb").read()
    assert z.read("CoLA.tsv") == open(os.path.join(made["cola_full"], "test_predictions", "CoLA.tsv"), "rb").read()
    comment = json.loads(z.comment)
    assert sorted(comment["placeholders"]) == sorted(PLACEHOLDERS)
    assert comment["sources"]["RTE.tsv"] == made["rte_lr1e-3_s1"] and comment["sources"]["QQP.tsv"] == "placeholder"
    assert sorted(f.name for f in files if f.placeholder) == sorted(PLACEHOLDERS)
    assert sum("PLACEHOLDER" in line for line in out.splitlines()) == len(PLACEHOLDERS)
    assert set(z.read("QNLI.tsv").decode().splitlines()[1:]) == {f"{i}\tentailment" for i in range(5463)}


def test_epoch_selection_and_filters_use_the_tables_selection(capsys, runs, tmp_path):
    root, made, glue = runs
    _, z, _ = make_zip(capsys, root, tmp_path / "best.zip", "--data-dir", glue, "--epoch-selection", "best")
    assert json.loads(z.comment)["sources"]["RTE.tsv"] == made["rte_lr1e-4_s0"]
    _, z, _ = make_zip(capsys, root, tmp_path / "bitfit.zip", "--data-dir", glue, "--method", "BitFit")
    assert json.loads(z.comment)["sources"]["CoLA.tsv"] == "placeholder"  # CoLA has only a Full-FT run
    _, z, _ = make_zip(capsys, root, tmp_path / "full.zip", "--data-dir", glue, "--method", "Full-FT")
    assert json.loads(z.comment)["sources"]["RTE.tsv"] == made["rte_full"]


def test_same_runs_same_bytes(capsys, runs, tmp_path):
    root, _, glue = runs
    make_zip(capsys, root, tmp_path / "a.zip", "--data-dir", glue)
    make_zip(capsys, root, tmp_path / "b.zip", "--data-dir", glue)
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()


def test_without_test_files_the_published_sizes_are_checked(capsys, runs, tmp_path):
    root, made, _ = runs
    _, z, _ = make_zip(capsys, root, tmp_path / "no_data.zip", "--data-dir", str(tmp_path / "nothing"))
    assert z.read("RTE.tsv") == open(os.path.join(made["rte_lr1e-3_s1"], "test_predictions", "RTE.tsv"), "rb").read()


# --- bad input: one line, exit code 2, no zip, nothing changed -----------------------------------------------------

def zip_error(capsys, argv, *words):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        exit_on_usage_error(submission.main)([str(a) for a in argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    for word in words:
        assert word in err, (word, err)
    return err


@pytest.fixture
def runs_copy(runs, tmp_path):
    root, made, glue = runs
    copy = str(tmp_path / "runs")
    shutil.copytree(root, copy)
    return copy, {k: p.replace(root, copy) for k, p in made.items()}, glue


def test_best_run_without_test_predictions_is_named(capsys, runs_copy, tmp_path):
    root, made, glue = runs_copy
    shutil.rmtree(os.path.join(made["rte_lr1e-3_s1"], "test_predictions"))
    out = tmp_path / "s.zip"
    zip_error(capsys, [root, "--zip", out, "--data-dir", glue], made["rte_lr1e-3_s1"], "--predict-test")
    assert not out.exists() and os.listdir(tmp_path) == ["runs"]  # no zip, no temporary file left


def test_predictions_of_another_size_are_refused(capsys, runs_copy, tmp_path):
    root, made, glue = runs_copy
    path = os.path.join(made["cola_full"], "test_predictions", "CoLA.tsv")
    lines = open(path).read().splitlines(keepends=True)
    open(path, "w").write("".join(lines[:-1]))
    zip_error(capsys, [root, "--zip", tmp_path / "s.zip", "--data-dir", glue], path, "1062 rows", "1063")
    assert not (tmp_path / "s.zip").exists()


def test_a_prediction_the_server_would_reject(capsys, runs_copy, tmp_path):
    root, made, glue = runs_copy
    path = os.path.join(made["mnli"], "test_predictions", "AX.tsv")
    lines = open(path).read().splitlines(keepends=True)
    lines[5] = "4\tmaybe\n"
    open(path, "w").write("".join(lines))
    zip_error(capsys, [root, "--zip", tmp_path / "s.zip", "--data-dir", glue], path, "line 6", "'maybe'")


def test_a_test_file_of_another_size_is_refused(capsys, runs, tmp_path):
    root, _, glue = runs
    data_dir = tmp_path / "glue"
    (data_dir / "RTE").mkdir(parents=True)
    lines = open(os.path.join(glue, "RTE", "test.tsv"), encoding="utf-8").read().splitlines(keepends=True)
    (data_dir / "RTE" / "test.tsv").write_text("".join(lines[:100]), encoding="utf-8")
    zip_error(capsys, [root, "--zip", tmp_path / "s.zip", "--data-dir", data_dir], "RTE", "99 rows", "3000")


def test_existing_zip_is_never_replaced(capsys, runs, tmp_path):
    root, _, glue = runs
    out = tmp_path / "glue_submission.zip"
    out.write_bytes(b"last week's submission")
    zip_error(capsys, [root, "--zip", out, "--data-dir", glue], "--zip", "already exists")
    assert out.read_bytes() == b"last week's submission"


@pytest.mark.parametrize("where", ["under_a_file", "a_directory"])
def test_zip_path_that_cannot_be_written(capsys, runs, tmp_path, where):
    root, _, glue = runs
    blocker = tmp_path / "blocker"
    blocker.write_text("keep\n")
    target = blocker / "s.zip" if where == "under_a_file" else tmp_path
    zip_error(capsys, [root, "--zip", target, "--data-dir", glue], "--zip")
    assert blocker.read_text() == "keep\n"


def test_no_runs(capsys, runs, tmp_path):
    root, _, glue = runs
    zip_error(capsys, [tmp_path / "nope", "--zip", tmp_path / "s.zip"], "does not exist")
    zip_error(capsys, [root, "--zip", tmp_path / "s.zip", "--method", "rand uniform"], "no complete run", "--method")


def test_process_one_line(runs, tmp_path):
    root, made, glue = runs
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "bitfit_experiments.submission", root, "--zip",
                           str(tmp_path / "x" / "s.zip"), "--data-dir", str(tmp_path / "no_glue"), "--model", "nobody"],
                          capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=300)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert not (tmp_path / "x").exists()
