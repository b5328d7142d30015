"""The benchmark's whole-epoch comparison (run_glue.py, official data path vs defaults) on a tiny model."""
import json
import pathlib

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
