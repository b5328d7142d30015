"""Issue 14, item 9, end to end: a run on the original QQP train.tsv, whose few malformed rows (a question split by a
line break) are skipped as the GLUE processors did, with the count in the log and in results.json."""
import json
import os
import shutil

from bitfit_experiments import cli
from test_data import QQP_SPLIT_ROW


def test_run_on_qqp_with_malformed_rows_records_how_many_were_skipped(tmp_path, capfd, fixture_glue_dir,
                                                                        tiny_model_dir):
    glue = tmp_path / "glue"
    shutil.copytree(os.path.join(fixture_glue_dir, "QQP"), glue / "QQP")
    train = glue / "QQP" / "train.tsv"
    lines = train.read_text(encoding="utf-8").splitlines(keepends=True)
    train.write_text("".join(lines[:2] + [QQP_SPLIT_ROW] + lines[2:]), encoding="utf-8")
    out = tmp_path / "run"
    cli.main(["-o", str(out), "-t", "qqp", "-m", tiny_model_dir, "--data-dir", str(glue), "-f", "bitfit", "-e", "1",
              "--no-progress"])
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "complete"
    assert results["skipped_malformed_rows"] == 2
    assert results["num_train_examples"] == len(lines) - 1  # every good row trained, the two halves skipped
    log = capfd.readouterr().err
    assert "skipped 2 malformed row(s)" in log and "line(s) 3, 4" in log
