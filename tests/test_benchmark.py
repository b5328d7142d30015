"""The benchmark: its whole-epoch comparison (run_glue.py, official data path vs defaults), the HF Trainer peer and the
whole-process side-by-side table, on a tiny model."""
import json
import pathlib

import pytest

from bitfit_experiments.bench import benchmark


def test_full_epoch_case_runs_both_pipelines(tmp_path, tiny_model_dir, tiny_glue_dir):
    out = benchmark.full_epoch_case("rte", "bitfit", model=pathlib.Path(tiny_model_dir), data_dir=tiny_glue_dir, epochs=1,
                                    train_size=None, out_dir=str(tmp_path))
    assert set(out) == {"official", "ours"}
    for pipeline, r in out.items():
        assert r["epoch_sec"] > 0 and 0.0 <= r["dev"] <= 1.0 and r["dev_metric_name"] == "accuracy"
        config = json.loads((tmp_path / f"rte_bitfit_{pipeline}" / "config.json").read_text())["args"]
        official = pipeline == "official"
        assert config["pad_to_max_length"] is official and config["eval_train"] is official
        assert config["group_by_length"] is not official and config["eval_batch_size"] == (8 if official else 64)
        assert config["batch_size"] == 8 and config["seed"] == 0
    md = benchmark.full_epoch_markdown({("rte", "bitfit"): out}, 1, None)
    assert "| rte | bitfit |" in md and "--pad-to-max-length" in md


# ------------------------------------------------------------------------ the HF Trainer peer and whole processes

def test_the_hf_trainer_peer_trains_what_our_bitfit_trains(tiny_model_dir):
    """Biases + head, the usual way, against this project's own BitFit selection (run_glue.py -f bitfit
    --list-params counts the same): same count and the very same parameter names."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from bitfit_experiments.bench import hf_trainer_peer
    from bitfit_experiments.core import data, selection
    from bitfit_experiments.core.model import load_model

    peer = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    count = hf_trainer_peer.bitfit_the_usual_way(peer)
    ours = load_model(tiny_model_dir, data.get_task("rte"))
    selection.apply(ours, selection.select(ours, "bitfit", ["all"], None, 0))
    trained = lambda m: {n for n, p in m.named_parameters() if p.requires_grad}
    assert trained(peer) == trained(ours)
    assert count == sum(p.numel() for p in ours.parameters() if p.requires_grad)
    assert "classifier.weight" in trained(peer) and not any(n.endswith("weight") and "LayerNorm" in n
                                                            for n in trained(peer))
    assert torch.is_tensor(dict(peer.named_parameters())["classifier.bias"])


def test_whole_process_option_writes_the_side_by_side_table(tmp_path, tiny_model_dir, tiny_glue_dir, monkeypatch):
    """--whole-process on the tiny RTE set (48 training examples): ours, the HF Trainer peer and the official
    pipeline each in its own process, then the table with the speed-ups and the ideal training time."""
    monkeypatch.setattr(benchmark, "matmul_peak_gflops", lambda device, dtype_name="fp32": 10.0)  # keep it short
    out = tmp_path / "bench"
    benchmark.main(["--model", tiny_model_dir, "--data-dir", tiny_glue_dir, "--tasks", "--whole-process", "rte:48",
                    "--whole-process-official", "rte", "--out", str(out)])
    result = json.loads((out / "benchmark.json").read_text())["whole_process"]
    assert len(result) == 1 and result[0]["train_size"] == 48
    cases = result[0]["cases"]
    assert set(cases) == {"ours", "hf_trainer", "official"}
    for kind, r in cases.items():
        assert r["whole_sec"] > r["train_sec"] > 0, kind
        assert r["train_examples"] == 48 and 0.0 <= r["dev"] <= 1.0 and r["dev_metric_name"] == "accuracy"
    assert cases["hf_trainer"]["trainable_params"] == cases["ours"]["trainable_params"]
    assert "--pad-to-max-length" in cases["official"]["command"] and "hf_trainer_peer" in cases["hf_trainer"]["command"]
    ideal = result[0]["ideal"]
    assert ideal["ideal_train_sec"] == pytest.approx(ideal["real_train_tokens"] * ideal["flops_per_token"] / 10e9)
    md = (out / "benchmark.md").read_text()
    row = [l for l in md.splitlines() if l.startswith("| rte | 48 |")]
    assert len(row) == 1 and "(>= 1.2x: " in row[0] and "(<= 1.5x: " in row[0]


def test_whole_process_markdown_ratios_and_targets():
    case = lambda whole, train: {"whole_sec": whole, "train_sec": train, "dev": 0.5, "dev_metric_name": "m"}
    rows = [{"task": "cola", "train_size": 100, "cases": {"ours": case(10.0, 6.0), "hf_trainer": case(14.0, 9.0),
                                                           "official": case(90.0, 50.0)},
             "ideal": {"ideal_train_sec": 5.0, "matmul_peak_gflops": 100.0}}]
    line = [l for l in benchmark.whole_process_markdown(rows).splitlines() if l.startswith("| cola |")][0]
    cells = [c.strip() for c in line.split("|")[1:-1]]
    assert cells[5] == "1.40x (>= 1.5x: NO)" and cells[6] == "1.50x"
    assert cells[7] == "9.00x (>= 8x: yes)" and cells[8] == "8.33x"
    assert cells[10] == "1.20x (<= 1.5x: yes)"
