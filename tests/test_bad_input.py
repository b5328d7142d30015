"""Issue 6: every bad input ends with ONE line `error: ...` on stderr that names the offending flag/file/value and
the fix, exit code 2, no traceback -- and nothing that was already on disk is changed (or created).

Most cases call `cli.main([...])` in-process (fast on 2 shared cores); a few run `run_glue.py` as a subprocess to
prove the same end to end. Runtime cases use the tiny random BERT and tiny RTE data from conftest.py.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from unittest import mock

import pytest

from bitfit_experiments import cli

from bitfit_experiments.core import data
from bitfit_experiments.core.errors import UsageError
from conftest import REPO_ROOT, write_tiny_rte


# ------------------------------------------------------------------------------------------------------- helpers

def snapshot(root):
    """{relative path: sha256} of every file and directory under root (None when root does not exist)."""
    root = str(root)
    if not os.path.exists(root):
        return None
    if os.path.isfile(root):
        return {".": hashlib.sha256(open(root, "rb").read()).hexdigest()}
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        out[rel + "/"] = "dir"
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                out[os.path.join(rel, name)] = hashlib.sha256(f.read()).hexdigest()
    return out


def assert_one_line_error(code, err, *names):
    assert code == 2, f"exit code {code}, stderr: {err!r}"
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {err!r}"
    assert lines[0].startswith("error: "), lines[0]
    for name in names:
        assert name in lines[0], f"{name!r} not named in: {lines[0]}"
    return lines[0]


def run_main(capsys, argv, main=None):
    """A CLI's main in-process (default: run_glue's cli.main): (exit code, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        (main or cli.main)([str(a) for a in argv])
    return exc.value.code, capsys.readouterr().err


def expect_error(capsys, argv, *names, untouched=(), main=None):
    """Run the CLI, check the one-line error, and check every path in `untouched` is byte-identical afterwards
    (a path that did not exist must still not exist)."""
    before = {str(p): snapshot(p) for p in untouched}
    code, err = run_main(capsys, argv, main)
    line = assert_one_line_error(code, err, *names)
    for p, snap in before.items():
        assert snapshot(p) == snap, f"{p} changed although the run was refused"
    return line


@pytest.fixture
def base(tmp_path, tiny_model_dir, tiny_glue_dir):
    """Good flags of a tiny 1-epoch run into a new directory; cases change one thing."""
    out = tmp_path / "out"
    return out, ["-o", out, "-t", "rte", "-m", tiny_model_dir, "--data-dir", tiny_glue_dir, "-f", "bitfit",
                 "-e", "1", "--no-progress"]


def _replace(argv, flag, value):
    argv = list(argv)
    argv[argv.index(flag) + 1] = value
    return argv


# ------------------------------------------------------------------ malformed, out-of-range and conflicting flags
# All refused by argparse or RunConfig.validate() before torch is even imported.

FLAG_CASES = [
    # (id, extra flags or replacements, words the message must contain)
    ("negative_epochs", {"-e": "-1"}, ["--epochs", "-1"]),
    ("zero_epochs", {"-e": "0"}, ["--epochs"]),
    ("zero_batch_size", ["-b", "0"], ["--batch-size", "0"]),
    ("zero_eval_batch_size", ["--eval-batch-size", "0"], ["--eval-batch-size"]),
    ("zero_lr", ["-l", "0"], ["--learning-rate"]),
    ("negative_lr", ["-l", "-1e-3"], ["--learning-rate"]),
    ("nan_lr", ["-l", "nan"], ["--learning-rate"]),
    ("inf_lr", ["-l", "inf"], ["--learning-rate", "finite"]),
    ("lr_not_a_number", ["-l", "fast"], ["--learning-rate", "'fast'"]),
    ("epochs_not_an_int", {"-e": "2.5"}, ["--epochs", "'2.5'"]),
    ("tiny_max_seq_length", ["--max-seq-length", "2"], ["--max-seq-length"]),
    ("zero_train_size", ["--train-size", "0"], ["--train-size"]),
    ("negative_weight_decay", ["--weight-decay", "-0.1"], ["--weight-decay"]),
    ("nan_weight_decay", ["--weight-decay", "nan"], ["--weight-decay"]),
    ("bias_terms_with_full_ft", {"-f": "full_ft", "extra": ["--bias-terms", "query"]}, ["--bias-terms", "full_ft"]),
    ("all_with_another_term", ["--bias-terms", "all", "query"], ["--bias-terms", "'all'"]),
    ("repeated_term", ["--bias-terms", "query", "query"], ["--bias-terms", "repeated"]),
    ("rand_mask_size_with_bitfit", ["--rand-mask-size", "100"], ["--rand-mask-size", "rand_uniform"]),
    ("rand_mask_size_zero", {"-f": "rand_uniform", "extra": ["--rand-mask-size", "0"]}, ["--rand-mask-size"]),
    ("warmup_without_linear", ["--warmup-ratio", "0.1"], ["--warmup-ratio", "--lr-schedule linear"]),
    ("warmup_ratio_above_one", ["--lr-schedule", "linear", "--warmup-ratio", "1.5"], ["--warmup-ratio"]),
    ("fp16_without_gpu", ["--precision", "fp16"], ["fp16", "--gpu-device"]),
    ("unknown_task", {"-t": "rtee"}, ["--task-name", "'rtee'"]),
    ("unknown_fine_tune_type", {"-f": "bitfitt"}, ["--fine-tune-type", "'bitfitt'"]),
    ("unknown_bias_term", ["--bias-terms", "querry"], ["--bias-terms", "'querry'"]),
    ("unknown_optimizer", ["--optimizer", "sgd"], ["--optimizer", "'sgd'"]),
    ("unknown_flag", ["--num-epochs", "3"], ["--num-epochs"]),
    ("flag_without_value", ["--seed"], ["--seed"]),
]


@pytest.mark.parametrize("change,names", [c[1:] for c in FLAG_CASES], ids=[c[0] for c in FLAG_CASES])
def test_bad_flag(capsys, base, change, names):
    out, argv = base
    if isinstance(change, dict):
        for flag, value in change.items():
            argv = argv + value if flag == "extra" else _replace(argv, flag, value)
    else:
        argv = argv + change
    expect_error(capsys, argv, *names, untouched=[out])


def test_missing_output_path(capsys, tiny_model_dir):
    expect_error(capsys, ["-t", "rte", "-m", tiny_model_dir, "-f", "bitfit"], "--output-path")


def test_missing_task(capsys, tmp_path, tiny_model_dir):
    expect_error(capsys, ["-o", tmp_path / "o", "-m", tiny_model_dir, "-f", "bitfit"], "--task-name",
                 untouched=[tmp_path / "o"])


def test_data_dir_missing(capsys, base, tmp_path):
    out, argv = base
    expect_error(capsys, _replace(argv, "--data-dir", tmp_path / "nope"), "--data-dir", str(tmp_path / "nope"),
                 untouched=[out])


# ---------------------------------------------------------------------------------------------- output directory

def test_output_dir_not_empty_is_untouched(capsys, base):
    out, argv = base
    os.makedirs(out / "evaluator")
    (out / "results.json").write_text('{"status": "complete", "precious": true}\n')
    (out / "evaluator" / "model.safetensors").write_bytes(os.urandom(4096))
    expect_error(capsys, argv, "--output-path", str(out), "not empty", untouched=[out])


def test_output_path_is_a_file(capsys, base):
    out, argv = base
    out.write_text("a file, not a directory\n")
    expect_error(capsys, argv, "--output-path", str(out), "file", untouched=[out])


def test_output_path_under_a_file_cannot_be_written(capsys, base, tmp_path):
    """Works as root too: nothing can be created below a regular file."""
    _, argv = base
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me\n")
    target = blocker / "sub" / "run"
    expect_error(capsys, _replace(argv, "-o", target), "--output-path", str(blocker), untouched=[blocker])
    # --resume must not get further either
    expect_error(capsys, _replace(argv, "-o", target) + ["--resume"], "--output-path", untouched=[blocker])


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write to a read-only directory")
def test_output_dir_not_writable_chmod(capsys, base, tmp_path):
    _, argv = base
    parent = tmp_path / "readonly"
    parent.mkdir()
    os.chmod(parent, 0o555)
    try:
        expect_error(capsys, _replace(argv, "-o", parent / "run"), "--output-path", "not writable",
                     untouched=[parent])
    finally:
        os.chmod(parent, 0o755)


def test_output_dir_not_writable_reported(capsys, base, tmp_path, monkeypatch):
    """An existing empty directory we may not write to (simulated, so it runs as root too: writability is tested by
    creating a file there, which is what fails)."""
    import tempfile
    _, argv = base
    target = tmp_path / "locked"
    target.mkdir()
    real_mkstemp = tempfile.mkstemp

    def refuse(*args, dir=None, **kwargs):
        if dir is not None and os.path.abspath(dir) == str(target):
            raise PermissionError(13, "Permission denied", str(target))
        return real_mkstemp(*args, dir=dir, **kwargs)
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    expect_error(capsys, _replace(argv, "-o", target), "--output-path", str(target), "not writable",
                 "Permission denied", untouched=[target])


# ---------------------------------------------------------------------------------------- device and model path

def test_gpu_device_without_gpu(capsys, base):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out, argv = base
    expect_error(capsys, argv + ["--gpu-device", "0"], "--gpu-device 0", "CPU", untouched=[out])
    expect_error(capsys, argv + ["--gpu-device", "0", "--precision", "fp16"], "--gpu-device 0", untouched=[out])


def test_negative_gpu_device(capsys, base):
    out, argv = base
    expect_error(capsys, argv + ["--gpu-device", "-1"], "--gpu-device -1", untouched=[out])


def test_model_path_missing(capsys, base, tmp_path):
    out, argv = base
    missing = str(tmp_path / "models" / "no-such-model")
    expect_error(capsys, _replace(argv, "-m", missing), "--model-name", missing, untouched=[out])


def test_model_dir_without_config(capsys, base, tmp_path, tiny_model_dir):
    out, argv = base
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    os.unlink(model / "config.json")
    expect_error(capsys, _replace(argv, "-m", model), "--model-name", "config.json", untouched=[out, model])


def test_model_dir_with_corrupt_weights(capsys, base, tmp_path, tiny_model_dir):
    out, argv = base
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    expect_error(capsys, _replace(argv, "-m", model), str(model), untouched=[out, model])


# ------------------------------------------------------------------------------------------------------ GLUE data

@pytest.fixture
def rte(tmp_path):
    """A private copy of tiny RTE data that a case may break: returns (data dir, RTE folder)."""
    root = write_tiny_rte(str(tmp_path / "glue"))
    return root, os.path.join(root, "RTE")


def _rewrite(path, edit):
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(edit(lines)) + "\n")


def _data_case(capsys, base, rte, *names, extra=()):
    out, argv = base
    root, _ = rte
    return expect_error(capsys, _replace(argv, "--data-dir", root) + list(extra), *names, untouched=[out, root])


def test_data_dir_without_task_folder(capsys, base, tmp_path):
    out, argv = base
    empty = tmp_path / "glue"
    (empty / "CoLA").mkdir(parents=True)
    expect_error(capsys, _replace(argv, "--data-dir", empty), os.path.join("RTE", "train.tsv"), "--data-dir",
                 untouched=[out, empty])


def test_missing_dev_split(capsys, base, rte):
    os.unlink(os.path.join(rte[1], "dev.tsv"))
    _data_case(capsys, base, rte, os.path.join("RTE", "dev.tsv"))


def test_missing_test_split_with_predict_test(capsys, base, rte):
    os.unlink(os.path.join(rte[1], "test.tsv"))
    _data_case(capsys, base, rte, os.path.join("RTE", "test.tsv"), extra=["--predict-test"])


def test_missing_label_column(capsys, base, rte):
    _rewrite(os.path.join(rte[1], "train.tsv"), lambda ls: ["\t".join(l.split("\t")[:3]) for l in ls])
    _data_case(capsys, base, rte, "train.tsv", "'label'")


def test_renamed_text_column(capsys, base, rte):
    _rewrite(os.path.join(rte[1], "dev.tsv"), lambda ls: [ls[0].replace("sentence2", "hypothesis")] + ls[1:])
    _data_case(capsys, base, rte, "dev.tsv", "'sentence2'")


def test_extra_columns_are_fine(rte):
    """Read by column name: an extra column (anywhere) changes nothing."""
    root, folder = rte
    before = data.load_split("rte", "dev", root)
    _rewrite(os.path.join(folder, "dev.tsv"),
             lambda ls: ["\t".join(["x" if i else "source", *l.split("\t"), "y" if i else "comment"])
                         for i, l in enumerate(ls)])
    after = data.load_split("rte", "dev", root)
    assert after.equals(before)


def test_empty_train_file(capsys, base, rte):
    open(os.path.join(rte[1], "train.tsv"), "w").close()
    _data_case(capsys, base, rte, "train.tsv", "empty")


def test_header_only_train_file(capsys, base, rte):
    _rewrite(os.path.join(rte[1], "train.tsv"), lambda ls: ls[:1])
    _data_case(capsys, base, rte, "train.tsv", "no data rows")


def test_label_outside_label_set(capsys, base, rte):
    _rewrite(os.path.join(rte[1], "train.tsv"), lambda ls: ls[:5] + [ls[5].rsplit("\t", 1)[0] + "\tmaybe"] + ls[6:])
    _data_case(capsys, base, rte, "train.tsv", "line 6", "'maybe'", "not_entailment")


def test_non_utf8_file(capsys, base, rte):
    path = os.path.join(rte[1], "dev.tsv")
    with open(path, "ab") as f:
        f.write(b"7\tCaf\xe9 au lait .\tA drink \xff .\tentailment\n")
    _data_case(capsys, base, rte, "dev.tsv", "UTF-8")


def test_truncated_row(capsys, base, rte):
    _rewrite(os.path.join(rte[1], "dev.tsv"), lambda ls: ls[:3] + [ls[3].split("\t")[0]] + ls[4:])
    _data_case(capsys, base, rte, "dev.tsv", "line 4")


def test_train_size_larger_than_training_split(capsys, base, rte):
    _data_case(capsys, base, rte, "--train-size", extra=["--train-size", "100000"])


# ------------------------------------------------------------------------------------- a finished run on disk
# One real tiny run (2 epochs, evaluator saved) whose epoch-1 checkpoint is kept (normally removed on completion),
# shared read-only by the evaluator and --resume cases; each case works on its own copy.

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir, tiny_glue_dir):
    from bitfit_experiments.experiment import run
    out = str(tmp_path_factory.mktemp("bad_input_run") / "run")
    args = cli.parse_config(
        ["-o", out, "-t", "rte", "-m", tiny_model_dir, "--data-dir", tiny_glue_dir, "-f", "bitfit", "-e", "2",
         "-b", "16", "--no-progress", "--save-evaluator"])
    with mock.patch("bitfit_experiments.experiment.remove_checkpoint"):
        run(args)
    assert os.path.exists(os.path.join(out, "checkpoint.safetensors"))
    return out, args


@pytest.fixture
def run_copy(tmp_path, finished_run):
    out = str(tmp_path / "run")
    shutil.copytree(finished_run[0], out)
    return out


def _resume_argv(run_dir, args, **changes):
    argv = ["-o", run_dir, "-t", "rte", "-m", args.model_name, "--data-dir", args.data_dir, "-f", "bitfit",
            "-e", "2", "-b", "16", "--no-progress", "--resume"]
    for flag, value in changes.items():
        argv += [flag, value]
    return argv


def _mark_unfinished(run_dir):
    path = os.path.join(run_dir, "results.json")
    with open(path) as f:
        results = json.load(f)
    results["status"] = "running"
    with open(path, "w") as f:
        json.dump(results, f)


def test_non_empty_output_dir_of_a_real_run_is_untouched(capsys, run_copy, finished_run):
    argv = _resume_argv(run_copy, finished_run[1])[:-1]  # same flags, without --resume
    expect_error(capsys, argv, "--output-path", "not empty", untouched=[run_copy])


def test_resume_with_other_flags(capsys, run_copy, finished_run):
    line = expect_error(capsys, _resume_argv(run_copy, finished_run[1], **{"-l": "1e-2"}), "--resume", run_copy,
                        "learning_rate", untouched=[run_copy])
    assert "another configuration" in line


def test_resume_of_another_fine_tune_type(capsys, run_copy, finished_run):
    argv = _replace(_resume_argv(run_copy, finished_run[1]), "-f", "frozen")
    expect_error(capsys, argv, "--resume", "fine_tune_type", untouched=[run_copy])


def test_resume_on_a_directory_that_holds_no_run(capsys, tmp_path, finished_run):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("not a run\n")
    expect_error(capsys, _resume_argv(other, finished_run[1]), "--resume", "config.json", untouched=[other])


def test_resume_with_damaged_config(capsys, run_copy, finished_run):
    with open(os.path.join(run_copy, "config.json"), "r+b") as f:
        f.truncate(40)
    expect_error(capsys, _resume_argv(run_copy, finished_run[1]), "config.json", "damaged", untouched=[run_copy])


def test_resume_with_config_that_is_not_an_object(capsys, run_copy, finished_run):
    with open(os.path.join(run_copy, "config.json"), "w") as f:
        f.write("[1, 2, 3]\n")
    expect_error(capsys, _resume_argv(run_copy, finished_run[1]), "config.json", untouched=[run_copy])


def test_resume_with_truncated_checkpoint(capsys, run_copy, finished_run):
    _mark_unfinished(run_copy)
    ckpt = os.path.join(run_copy, "checkpoint.safetensors")
    with open(ckpt, "r+b") as f:
        f.truncate(os.path.getsize(ckpt) // 2)
    expect_error(capsys, _resume_argv(run_copy, finished_run[1]), ckpt, "corrupt", untouched=[run_copy])


def test_resume_with_garbage_checkpoint(capsys, run_copy, finished_run):
    _mark_unfinished(run_copy)
    ckpt = os.path.join(run_copy, "checkpoint.safetensors")
    with open(ckpt, "wb") as f:
        f.write(b"\x00garbage" * 100)
    expect_error(capsys, _resume_argv(run_copy, finished_run[1]), ckpt, untouched=[run_copy])


# --------------------------------------------------------------------------------------- a saved evaluator, broken

def _load_error(directory):
    from bitfit_experiments.artifacts.evaluator import GLUEEvaluator
    before = snapshot(directory)
    with pytest.raises(UsageError) as exc:
        GLUEEvaluator.load(str(directory))
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message
    assert snapshot(directory) == before
    return message


def test_evaluator_truncated_weights(run_copy):
    ev = os.path.join(run_copy, "evaluator")
    weights = os.path.join(ev, "model.safetensors")
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) // 3)
    message = _load_error(ev)
    assert ev in message and "--save-evaluator" in message


def test_evaluator_garbage_json(run_copy):
    ev = os.path.join(run_copy, "evaluator")
    with open(os.path.join(ev, "evaluator.json"), "wb") as f:
        f.write(b"{\"format\": \"bitfit-glue-evaluator/1\", \"task\": \xff\xfe")
    assert "evaluator.json" in _load_error(ev)


def test_evaluator_json_not_an_object(run_copy):
    ev = os.path.join(run_copy, "evaluator")
    with open(os.path.join(ev, "evaluator.json"), "w") as f:
        f.write("[]\n")
    assert "evaluator.json" in _load_error(ev)


def test_evaluator_json_without_task(run_copy):
    ev = os.path.join(run_copy, "evaluator")
    path = os.path.join(ev, "evaluator.json")
    with open(path) as f:
        meta = json.load(f)
    del meta["task"]
    with open(path, "w") as f:
        json.dump(meta, f)
    assert "evaluator.json" in _load_error(ev)


def test_evaluator_missing_or_not_a_folder(run_copy, tmp_path):
    assert "evaluator.json" in _load_error(run_copy)  # the run folder, not its evaluator/ folder
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert str(a_file) in _load_error(a_file)


# ------------------------------------------------------------------------------- end to end, as a real process

def _process(argv):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "run_glue.py"), *map(str, argv)],
                          capture_output=True, text=True, env=env, timeout=300)
    return proc.returncode, proc.stderr


def test_process_unknown_task(base):
    out, argv = base
    code, err = _process(_replace(argv, "-t", "mnli-m"))
    assert_one_line_error(code, err, "--task-name", "'mnli-m'")
    assert not out.exists()


def test_process_missing_dev_split_writes_nothing(base, rte):
    """Goes through model loading and data reading in a real process: still one line, and no output dir."""
    out, argv = base
    os.unlink(os.path.join(rte[1], "dev.tsv"))
    code, err = _process(_replace(argv, "--data-dir", rte[0]))
    assert_one_line_error(code, err, os.path.join("RTE", "dev.tsv"))
    assert not out.exists()


def test_process_resume_other_configuration(run_copy, finished_run):
    before = snapshot(run_copy)
    code, err = _process(_resume_argv(run_copy, finished_run[1], **{"--seed": "5"}))
    assert_one_line_error(code, err, "--resume", "seed")
    assert snapshot(run_copy) == before


# --------------------------------------------------------------------------- known gaps (owners of other files)

def test_max_seq_length_beyond_model_positions(capsys, base):
    """The tiny model has 128 positions: 256 is refused before anything is written."""
    out, argv = base
    expect_error(capsys, argv + ["--max-seq-length", "256"], "--max-seq-length", "128", untouched=[out])


# --------------------------------------------------------------------- task packs via python -m bitfit_experiments.predict

@pytest.fixture(scope="module")
def pack_setup(tmp_path_factory, tiny_model_dir):
    """A bitfit pack of the tiny BERT (biases moved a little, as training would) and another tiny BERT of the same
    shape but other weights, for the "pack of another base model" case."""
    import torch
    from transformers import BertConfig, BertModel
    from bitfit_experiments.artifacts import packs
    from bitfit_experiments.core import selection
    from bitfit_experiments.core.model import load_model
    from conftest import make_tiny_tokenizer
    root = tmp_path_factory.mktemp("bad_input_packs")
    torch.manual_seed(0)
    model = load_model(tiny_model_dir, data.get_task("rte"))
    sel = selection.select(model, "bitfit", ["all"], None, 0)
    snap = packs.snapshot(model, sel)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in sel.trainable:
                p.add_(0.01)
    pack = str(root / "run" / "pack")
    packs.write_pack(pack, model, snap, sel, base_model=tiny_model_dir, task="rte")
    other = str(root / "other_base")
    torch.manual_seed(99)
    config = BertConfig.from_pretrained(tiny_model_dir)
    BertModel(config).save_pretrained(other)
    make_tiny_tokenizer().save_pretrained(other)
    return tiny_model_dir, pack, other


@pytest.fixture
def pack_copy(tmp_path, pack_setup):
    pack = str(tmp_path / "pack")
    shutil.copytree(pack_setup[1], pack)
    return pack


def run_predict(capsys, argv):
    from bitfit_experiments import predict
    return run_main(capsys, argv, predict.main)


def expect_predict_error(capsys, argv, *names, untouched=()):
    from bitfit_experiments import predict
    return expect_error(capsys, argv, *names, untouched=untouched, main=predict.main)


def test_pack_good_copy_predicts(capsys, pack_setup, pack_copy):
    """The baseline the pack cases break: the intact copy works."""
    from bitfit_experiments import predict
    logits = predict.main(["--base", pack_setup[0], "--pack", pack_copy, "--sentences", "the cat ||| a dog"])
    assert logits.shape == (1, 2)


def test_pack_truncated_tensors(capsys, pack_setup, pack_copy):
    path = os.path.join(pack_copy, "pack.safetensors")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    expect_predict_error(capsys, ["--base", pack_setup[0], "--pack", pack_copy, "--sentences", "the cat ||| a dog"],
                         path, "truncated", untouched=[pack_copy])


def test_pack_garbage_manifest(capsys, pack_setup, pack_copy):
    path = os.path.join(pack_copy, "manifest.json")
    with open(path, "wb") as f:
        f.write(b"\x89PNG not a manifest \xff")
    expect_predict_error(capsys, ["--base", pack_setup[0], "--pack", pack_copy, "--sentences", "the cat ||| a dog"],
                         path, untouched=[pack_copy])


def test_pack_manifest_missing(capsys, pack_setup, pack_copy):
    os.unlink(os.path.join(pack_copy, "manifest.json"))
    expect_predict_error(capsys, ["--base", pack_setup[0], "--pack", pack_copy, "--sentences", "the cat ||| a dog"],
                         pack_copy, "manifest.json", untouched=[pack_copy])


def test_pack_for_another_base_model(capsys, pack_setup, pack_copy, tmp_path):
    base, _, other = pack_setup
    out = tmp_path / "preds.tsv"
    line = expect_predict_error(capsys, ["--base", other, "--pack", pack_copy, "--sentences", "the cat ||| a dog",
                                         "--output", out], pack_copy, untouched=[pack_copy, other, out])
    assert base in line  # names the base it was trained on: the fix


def test_pack_directory_missing(capsys, pack_setup, tmp_path):
    missing = str(tmp_path / "no_pack")
    expect_predict_error(capsys, ["--base", pack_setup[0], "--pack", missing, "--sentences", "the cat"],
                         "--pack", missing)


def test_pack_predict_gpu_device_without_gpu(capsys, pack_setup, pack_copy):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    expect_predict_error(capsys, ["--base", pack_setup[0], "--pack", pack_copy, "--sentences", "the cat ||| a dog",
                                  "--gpu-device", "0"], "--gpu-device 0", untouched=[pack_copy])


def test_pack_predict_input_with_wrong_columns(capsys, pack_setup, pack_copy, tmp_path):
    """predict prints the pack summary to stderr before it reads --input, so here the error is the LAST line and the
    only 'error:' line (reported: reading --input before the summary would make it the only line)."""
    tsv = tmp_path / "dev.tsv"
    tsv.write_text("index\tpremise\thypothesis\tlabel\n0\tthe cat\ta dog\tentailment\n")
    before = snapshot(tmp_path)
    code, err = run_predict(capsys, ["--base", pack_setup[0], "--pack", pack_copy, "--input", tsv])
    lines = err.splitlines()
    assert_one_line_error(code, lines[-1] + "\n", str(tsv), "'sentence1'")
    assert "Traceback" not in err and sum(l.startswith("error:") for l in lines) == 1
    assert snapshot(tmp_path) == before


def test_process_predict_pack_for_another_base(pack_setup, pack_copy):
    """End to end as `python -m bitfit_experiments.predict`."""
    base, _, other = pack_setup
    before = snapshot(pack_copy)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "bitfit_experiments.predict", "--base", other, "--pack", pack_copy,
                           "--sentences", "the cat ||| a dog"], capture_output=True, text=True, env=env,
                          cwd=REPO_ROOT, timeout=300)
    assert_one_line_error(proc.returncode, proc.stderr, pack_copy)
    assert snapshot(pack_copy) == before


def test_pack_predict_without_any_input(capsys, pack_setup, pack_copy):
    expect_predict_error(capsys, ["--base", pack_setup[0], "--pack", pack_copy], "--input")


def test_pack_predict_output_cannot_be_written(capsys, pack_setup, pack_copy, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me\n")
    expect_predict_error(capsys, ["--base", pack_setup[0], "--pack", pack_copy, "--sentences", "the cat ||| a dog",
                                  "--output", blocker / "preds.tsv"], "--output", untouched=[blocker, pack_copy])


# ======================================================================================= issue 14: hardening
# Every example of the issue, and variants: one line `error: ...`, exit code 2, nothing the user owns changed.

# ------------------------------------------------------------------- output paths that cannot be written (item 5)

@pytest.mark.parametrize("root", ["/proc", "/sys"])
def test_output_under_proc_or_sys(capsys, base, root):
    """os.access() says yes to root there; creating a file says no, and that is what is checked."""
    if not os.path.isdir(root):
        pytest.skip(f"no {root} on this system")
    _, argv = base
    target = os.path.join(root, "bitfit-run", "out")
    expect_error(capsys, _replace(argv, "-o", target), "--output-path", target, "not writable")
    assert not os.path.exists(os.path.join(root, "bitfit-run"))


def test_output_path_is_a_dangling_symlink(capsys, base, tmp_path):
    _, argv = base
    link = tmp_path / "run"
    link.symlink_to(tmp_path / "gone" / "run")
    expect_error(capsys, _replace(argv, "-o", link), "--output-path", str(link), "dangling symbolic link")
    assert os.path.islink(link) and os.listdir(tmp_path) == ["run"]  # the link is left as it was; nothing created


def test_output_path_under_a_dangling_symlink(capsys, base, tmp_path):
    _, argv = base
    link = tmp_path / "runs"
    link.symlink_to(tmp_path / "gone")
    expect_error(capsys, _replace(argv, "-o", link / "rte"), "--output-path", str(link), "dangling")
    assert os.path.islink(link) and os.listdir(tmp_path) == ["runs"]


# ------------------------------------------------------------------------- GLUE files (items 5, 8 and 9)

@pytest.mark.parametrize("label", ["²", "--1", "٣", "1_0"])
def test_label_that_int_would_half_accept(capsys, base, rte, label):
    """'²'.isdigit() is True and int('²') raises: once a traceback, now a line naming the file, line and label.
    WNLI writes its labels as 0/1, so the tiny RTE rows are turned into a WNLI folder."""
    root, folder = rte
    wnli = os.path.join(root, "WNLI")
    os.rename(folder, wnli)
    for split in ("train", "dev"):
        _rewrite(os.path.join(wnli, f"{split}.tsv"), lambda ls: [l.replace("\tnot_entailment", "\t0")
                                                                 .replace("\tentailment", "\t1") for l in ls])
    path = os.path.join(wnli, "train.tsv")
    _rewrite(path, lambda ls: ls[:4] + [ls[4].rsplit("\t", 1)[0] + "\t" + label] + ls[5:])
    out, argv = base
    expect_error(capsys, _replace(_replace(argv, "--data-dir", root), "-t", "wnli"), path, "line 5", repr(label),
                 untouched=[out, root])


def test_tsv_field_longer_than_csvs_limit(capsys, base, rte):
    import csv
    _rewrite(os.path.join(rte[1], "dev.tsv"),
             lambda ls: ls[:2] + ["2\t" + "x" * (csv.field_size_limit() + 10) + "\tB .\tentailment"] + ls[3:])
    _data_case(capsys, base, rte, "dev.tsv", "line 3", "field limit")


def test_unreadable_train_file_as_root_too(capsys, base, rte, monkeypatch):
    """Root reads a chmod 000 file anyway, so permission denied is simulated where the file is opened."""
    path = os.path.join(rte[1], "train.tsv")
    real_open = open

    def guarded(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.abspath(file) == path:
            raise PermissionError(13, "Permission denied", path)
        return real_open(file, *args, **kwargs)
    monkeypatch.setattr(data, "open", guarded, raising=False)  # the reader's open(), not the test's
    _data_case(capsys, base, rte, path, "Permission denied")


def test_a_directory_where_the_dev_file_belongs(capsys, base, rte):
    path = os.path.join(rte[1], "dev.tsv")
    os.unlink(path)
    os.mkdir(path)
    _data_case(capsys, base, rte, path, "is a directory")


def test_bad_label_after_blank_lines_names_the_real_line(capsys, base, rte):
    _rewrite(os.path.join(rte[1], "train.tsv"),
             lambda ls: ls[:1] + ["", ""] + ls[1:3] + ["", ls[3].rsplit("\t", 1)[0] + "\tmaybe"] + ls[4:])
    _data_case(capsys, base, rte, "train.tsv", "line 7:", "'maybe'")


def test_bad_byte_is_reported_at_its_file_offset(capsys, base, rte):
    path = os.path.join(rte[1], "train.tsv")
    with open(path, "ab") as f:
        f.write(b"".join(b"%d\ta man is playing .\tsomeone plays .\tentailment\n" % i for i in range(100, 400)))
        size = f.tell()
        f.write(b"400\tCaf\xe9 .\ta drink .\tentailment\n")
    lines = open(path, "rb").read().count(b"\n")
    _data_case(capsys, base, rte, "train.tsv", f"byte {size + 7}", f"line {lines}")


# ------------------------------------------------------------------------------- model folders (item 4)

def _model_copy(tmp_path, tiny_model_dir, edit_config=None, drop=()):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    for name in drop:
        os.unlink(model / name)
    if edit_config:
        config = json.loads((model / "config.json").read_text())
        edit_config(config)
        (model / "config.json").write_text(json.dumps(config))
    return model


def test_model_folder_without_tokenizer_files(capsys, base, tmp_path, tiny_model_dir):
    """Once: a stub tokenizer of 5 special tokens, every word [UNK], and a run that trained on nothing."""
    out, argv = base
    model = _model_copy(tmp_path, tiny_model_dir, drop=("tokenizer.json", "tokenizer_config.json"))
    expect_error(capsys, _replace(argv, "-m", model), "--model-name", str(model), "no tokenizer files", "[UNK]",
                 untouched=[out, model])


def test_model_folder_whose_tokenizer_knows_only_special_tokens(capsys, base, tmp_path, tiny_model_dir):
    from transformers import BertTokenizer
    out, argv = base
    model = _model_copy(tmp_path, tiny_model_dir, drop=("tokenizer.json", "tokenizer_config.json"))
    BertTokenizer(vocab={t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])}).save_pretrained(model)
    expect_error(capsys, _replace(argv, "-m", model), "--model-name", "only special tokens", untouched=[out, model])


def test_tokenizer_larger_than_the_models_embeddings(capsys, base, tmp_path, tiny_model_dir):
    from transformers import BertTokenizer
    out, argv = base
    model = _model_copy(tmp_path, tiny_model_dir, drop=("tokenizer.json", "tokenizer_config.json"))
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"word{i}" for i in range(100)]
    BertTokenizer(vocab={t: i for i, t in enumerate(words)}).save_pretrained(model)
    expect_error(capsys, _replace(argv, "-m", model), "--model-name", "vocab_size", untouched=[out, model])


MISMATCHED_CONFIGS = [  # (id, edit of config.json, words of the message)
    ("more_layers_than_stored", lambda c: c.update(num_hidden_layers=4), ["not in the checkpoint", "layer.2"]),
    ("fewer_layers_than_stored", lambda c: c.update(num_hidden_layers=1), ["unused", "layer.1"]),
    ("another_model_type", lambda c: c.update(model_type="distilbert"), ["model_type 'distilbert'", "BertModel"]),
    ("model_type_only_edited", lambda c: c.update(model_type="roberta"), ["model_type 'roberta'", "BertModel"]),
]


@pytest.mark.parametrize("edit,words", [c[1:] for c in MISMATCHED_CONFIGS], ids=[c[0] for c in MISMATCHED_CONFIGS])
def test_config_that_does_not_match_its_weights(capsys, base, tmp_path, tiny_model_dir, edit, words):
    """Once: the missing tensors were drawn at random and trained, silently."""
    out, argv = base
    model = _model_copy(tmp_path, tiny_model_dir, edit_config=edit)
    expect_error(capsys, _replace(argv, "-m", model), "--model-name", "does not match the weights",
                 "--allow-weight-mismatch", *words, untouched=[out, model])


def test_weight_mismatch_loads_when_allowed_and_expected_differences_never_complain(tmp_path, tiny_model_dir):
    """The opt-in loads (the missing tensors become newly initialised, so a task pack carries them); a checkpoint
    with a pretraining head, or without a pooler, is normal and loads without it."""
    from transformers import BertConfig, BertForPreTraining, BertModel
    from bitfit_experiments.core.model import load_model
    rte = data.get_task("rte")
    model = _model_copy(tmp_path, tiny_model_dir, edit_config=lambda c: c.update(num_hidden_layers=3))
    with pytest.raises(UsageError, match="does not match the weights"):
        load_model(str(model), rte)
    loaded = load_model(str(model), rte, allow_weight_mismatch=True)
    assert "bert.encoder.layer.2.attention.self.query.bias" in loaded.newly_initialized
    config = BertConfig.from_pretrained(tiny_model_dir)
    for name, module in [("pretraining", BertForPreTraining(config)), ("no_pooler", BertModel(config, add_pooling_layer=False))]:
        module.save_pretrained(tmp_path / name)
        load_model(str(tmp_path / name), rte)  # no error


# ----------------------------------------------------------------- predict --export / --output (items 1 and 7)

def _export_case(capsys, pack_setup, pack_copy, target, *names, untouched=()):
    return expect_predict_error(capsys, ["--base", pack_setup[0], "--pack", pack_copy, "--export", target],
                                "--export", *names, untouched=[pack_copy, *untouched])


def test_export_into_a_non_empty_directory_deletes_nothing(capsys, pack_setup, pack_copy, tmp_path):
    target = tmp_path / "mine"
    (target / "sub").mkdir(parents=True)
    (target / "thesis.tex").write_text("two years of work\n")
    (target / "sub" / "data.bin").write_bytes(os.urandom(2048))
    _export_case(capsys, pack_setup, pack_copy, target, str(target), "not empty", untouched=[target])


def test_export_dot_deletes_nothing_in_the_current_directory(capsys, pack_setup, pack_copy, tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "notes.txt").write_text("keep\n")
    monkeypatch.chdir(cwd)
    _export_case(capsys, pack_setup, pack_copy, ".", "not empty", untouched=[tmp_path])


def test_export_into_a_run_directory_deletes_nothing(capsys, pack_setup, pack_copy, run_copy):
    _export_case(capsys, pack_setup, pack_copy, run_copy, run_copy, untouched=[run_copy])


def test_export_onto_a_file(capsys, pack_setup, pack_copy, tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"keep")
    _export_case(capsys, pack_setup, pack_copy, target, "is a file", untouched=[target])


def test_export_into_an_empty_directory_keeps_it(capsys, pack_setup, pack_copy, tmp_path):
    """The one directory that may be given: empty. It is filled, not replaced (same inode), and nothing else
    appears beside it."""
    from bitfit_experiments import predict
    target = tmp_path / "export"
    target.mkdir()
    inode = os.stat(target).st_ino
    predict.main(["--base", pack_setup[0], "--pack", pack_copy, "--export", str(target)])
    assert os.stat(target).st_ino == inode
    assert {"model.safetensors", "config.json", "evaluator.json"} <= set(os.listdir(target))
    assert sorted(os.listdir(tmp_path)) == ["export", "pack"]


def test_process_export_dot(pack_setup, pack_copy, tmp_path):
    """The issue's example end to end: `python -m bitfit_experiments.predict --export .` in a folder of files."""
    cwd = tmp_path / "work"
    cwd.mkdir()
    (cwd / "results.json").write_text('{"status": "complete"}\n')
    before = snapshot(cwd)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "bitfit_experiments.predict", "--base", pack_setup[0], "--pack",
                           pack_copy, "--export", "."], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    assert_one_line_error(proc.returncode, proc.stderr, "--export", "not empty")
    assert snapshot(cwd) == before


def test_output_that_is_the_input_file(capsys, pack_setup, pack_copy, tmp_path):
    tsv = tmp_path / "dev.tsv"
    tsv.write_text("index\tsentence1\tsentence2\tlabel\n0\tthe cat\ta dog\tentailment\n")
    expect_predict_error(capsys, ["--base", pack_setup[0], "--pack", pack_copy, "--input", tsv, "--output", tsv],
                         "--output", "--input", untouched=[tsv, pack_copy])


def test_output_inside_the_pack_folder(capsys, pack_setup, pack_copy):
    target = os.path.join(pack_copy, "manifest.json")
    expect_predict_error(capsys, ["--base", pack_setup[0], "--pack", pack_copy, "--sentences", "the cat ||| a dog",
                                  "--output", target], "--output", "--pack", untouched=[pack_copy])


def _edit_manifest(pack, edit):
    path = os.path.join(pack, "manifest.json")
    with open(path) as f:
        manifest = json.load(f)
    edit(manifest)
    with open(path, "w") as f:
        json.dump(manifest, f)


EDITED_MANIFESTS = [  # (id, edit, words of the message)
    ("wrong_max_seq_length", lambda m: m.update(max_seq_length=4096), ["max_seq_length 4096", "128 positions"]),
    ("max_seq_length_text", lambda m: m.update(max_seq_length="long"), ["max_seq_length 'long'"]),
    ("unknown_task", lambda m: m.update(task="rte2"), ["task 'rte2'"]),
    ("task_of_three_labels", lambda m: m.update(task="mnli"), ["num_labels 2", "mnli"]),
    ("num_labels", lambda m: m.update(num_labels=5), ["num_labels 5"]),
    ("label_names_swapped", lambda m: m.update(label_names=["not_entailment", "entailment"]), ["label_names"]),
    ("fixup_entries", lambda m: m["tensors"][next(n for n, e in m["tensors"].items() if e["kind"] == "delta")]
     .update(fixups=3), ["does not match its manifest"]),
    ("tensor_shape", lambda m: m["tensors"]["classifier.bias"].update(shape=[5]), ["classifier.bias", "[5]"]),
]


@pytest.mark.parametrize("edit,words", [c[1:] for c in EDITED_MANIFESTS], ids=[c[0] for c in EDITED_MANIFESTS])
def test_edited_pack_manifest(capsys, pack_setup, pack_copy, tmp_path, edit, words):
    _edit_manifest(pack_copy, edit)
    out = tmp_path / "preds.tsv"
    expect_predict_error(capsys, ["--base", pack_setup[0], "--pack", pack_copy, "--sentences", "the cat ||| a dog",
                                  "--output", out], *words, untouched=[pack_copy, out])


# ------------------------------------------------------------------ tables / claims / figures --out (item 5)

def _report_main(name):
    import importlib
    from bitfit_experiments.core.errors import exit_on_usage_error
    return exit_on_usage_error(importlib.import_module(f"bitfit_experiments.report.{name}").main)


@pytest.mark.parametrize("tool,kind", [("tables", "file"), ("figures", "file"), ("tables", "under_file"),
                                       ("figures", "under_file"), ("claims", "directory"), ("claims", "under_file")])
def test_report_out_that_cannot_be_written(capsys, tmp_path, tool, kind):
    runs = tmp_path / "runs"
    runs.mkdir()
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me\n")
    target = {"file": blocker, "under_file": blocker / "sub" / "out", "directory": runs}[kind]
    expect_error(capsys, [runs, "--out", target], "--out", untouched=[blocker, runs], main=_report_main(tool))


def test_process_tables_out_is_a_file(tmp_path):
    """Through `python -m bitfit_experiments.tables`, whose entry point turns the error into one line."""
    blocker = tmp_path / "table.md"
    blocker.write_text("keep me\n")
    proc = subprocess.run([sys.executable, "-m", "bitfit_experiments.tables", str(tmp_path), "--out", str(blocker)],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert_one_line_error(proc.returncode, proc.stderr, "--out", str(blocker))
    assert blocker.read_text() == "keep me\n"


@pytest.mark.parametrize("name", ["manifest.json", "pack.safetensors"])
def test_unreadable_pack_files(capsys, pack_setup, pack_copy, monkeypatch, name):
    """A directory where the file belongs, and permission denied (simulated where the pack is read: root reads
    chmod 000 files anyway)."""
    from bitfit_experiments.artifacts import packs
    path = os.path.join(pack_copy, name)
    argv = ["--base", pack_setup[0], "--pack", pack_copy, "--sentences", "the cat ||| a dog"]
    real_open = open

    def guarded(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.abspath(file) == path:
            raise PermissionError(13, "Permission denied", path)
        return real_open(file, *args, **kwargs)
    monkeypatch.setattr(packs, "open", guarded, raising=False)
    expect_predict_error(capsys, argv, path, "Permission denied", untouched=[pack_copy])
    monkeypatch.undo()
    os.replace(path, path + ".moved")
    os.mkdir(path)
    expect_predict_error(capsys, argv, path, "cannot read")


@pytest.mark.parametrize("script", ["run_glue.py", "run_bank.py", "run_instruct.py"])
def test_a_bad_thread_mode_is_one_line_in_every_entry_point(tmp_path, script):
    """BITFIT_THREADS is read before torch loads, outside argparse: still one line, exit 2, nothing created."""
    out, model = str(tmp_path / "run"), str(tmp_path / "model")
    argv = {"run_glue.py": ["-o", out, "-m", model, "-t", "rte", "-f", "bitfit"],
            "run_bank.py": ["--bank-dir", out + "_bank", "--", "-o", out, "-m", model, "-t", "rte", "-f", "bitfit"],
            "run_instruct.py": ["-o", out, "-m", model, "--data", str(tmp_path / "alpaca.json")]}[script]
    p = subprocess.run([sys.executable, os.path.join(REPO_ROOT, script), *argv], capture_output=True, text=True,
                       env={**os.environ, "BITFIT_THREADS": "1"}, timeout=120)
    line = assert_one_line_error(p.returncode, p.stderr, "BITFIT_THREADS", "'1'", "OMP_NUM_THREADS")
    assert "auto" in line and not os.path.exists(out) and not os.path.exists(out + "_bank")


@pytest.mark.parametrize("module", ["bitfit_experiments.bank", "bitfit_experiments.rerun", "bitfit_experiments.tables",
                                    "bitfit_experiments.claims", "bitfit_experiments.figures",
                                    "bitfit_experiments.repro_plan", "bitfit_experiments.report.repro_status",
                                    "bitfit_experiments.submission", "bitfit_experiments.benchmark",
                                    "bitfit_experiments.bench_inference", "bitfit_experiments.report.probe"])
def test_every_command_line_refuses_an_unknown_flag_in_one_line(module):
    p = subprocess.run([sys.executable, "-m", module, "--no-such-flag"], capture_output=True, text=True,
                       cwd=REPO_ROOT, timeout=120)
    assert_one_line_error(p.returncode, p.stderr)  # (a missing required argument may be named first)


def test_a_reader_that_stops_early_gets_no_traceback():
    """`python -m bitfit_experiments.repro_plan RUNS | head -1`: the command's next write finds the pipe closed;
    it ends quietly (exit 1, nothing on stderr), as `ls | head` does."""
    script = ("import sys\nfrom bitfit_experiments.core.errors import exit_on_usage_error\n"
              "def main():\n    while True:\n        print('run ' * 100)\n"
              "exit_on_usage_error(main)()\n")
    reader = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    reader.stdout.readline()
    reader.stdout.close()  # the reader stops: the writer's next flush raises BrokenPipeError
    _, err = reader.communicate(timeout=60)
    assert reader.returncode == 1 and err == b"", err.decode()[-500:]


def test_output_still_buffered_when_the_command_ends_meets_the_closed_pipe_quietly():
    """The command returns with output in its buffer after the reader has gone: the flush at exit must not print
    'Exception ignored ... BrokenPipeError' (exit 120)."""
    script = ("import sys, time\nfrom bitfit_experiments.core.errors import exit_on_usage_error\n"
              "def main():\n    print('first', flush=True)\n    time.sleep(1)\n"
              "    for _ in range(300):\n        print('run 0.001 seed 0')\n"
              "exit_on_usage_error(main)()\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    reader = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env)
    reader.stdout.readline()
    reader.stdout.close()  # gone before the command ends and flushes its buffer
    _, err = reader.communicate(timeout=60)
    assert reader.returncode == 1 and err == b"", (reader.returncode, err.decode()[-500:])
