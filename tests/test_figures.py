"""Figures written from small synthetic run directories."""
import json
import os

from bitfit_experiments.report import figures
from test_tables import make_run

FAMILIES = ["query", "key", "value", "attention_output", "attention_layernorm", "intermediate", "output",
            "output_layernorm"]


def changes(scale):
    return {"layers": 3, "families": {f: [scale * (i + 1) * (0.0 if f == "key" else 1.0) for i in range(3)]
                                      for f in FAMILIES},
            "notation": {"query": "b_q", "key": "b_k", "intermediate": "b_m2"}}


def is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_all_three_figures(tmp_path):
    r = str(tmp_path / "runs")
    for seed in (0, 1):
        make_run(r, f"b/{seed}", "rte", "bitfit", 1e-3, seed, [0.6, 0.7], train=[0.7, 0.75],
                 bias_changes=changes(1.0 + seed))
        make_run(r, f"f/{seed}", "rte", "full_ft", 2e-5, seed, [0.65, 0.66], train=[0.9, 1.0])
        for size in (100, 300):
            # BitFit: 3 epochs, best the first; Full-FT: 1 epoch
            make_run(r, f"n{size}/b{seed}", "rte", "bitfit", 1e-3, seed, [0.5 + size / 1e4, 0.40, 0.42],
                     train_size=size)
            make_run(r, f"n{size}/f{seed}", "rte", "full_ft", 2e-5, seed, [0.45 + size / 1e4], train_size=size)
    # a BitFit run at a losing learning rate: its bias changes must not enter the average
    make_run(r, "b/lose", "rte", "bitfit", 1e-4, 0, [0.1], bias_changes=changes(100.0))
    out = str(tmp_path / "fig")
    written = figures.make_figures(r, out)
    names = sorted(os.path.basename(p) for p in written)
    assert names == ["bias_change_bert-base-cased_rte.png", "dev_curve_bert-base-cased_rte.png",
                     "generalization_gap_bert-base-cased_rte.png", "train_size_bert-base-cased_rte.png"]
    assert all(is_png(p) for p in written)
    with open(os.path.join(out, "bias_change_bert-base-cased_rte.json")) as f:
        avg = json.load(f)
    assert avg["seeds"] == 2 and avg["learning_rate"] == 1e-3
    assert avg["families"]["query"] == [1.5, 3.0, 4.5]  # mean of scales 1 and 2, the 1e-4 run left out
    table = open(os.path.join(out, "train_size_bert-base-cased_rte.md")).read()
    # best epochs: +5.0; last epochs: 42 - 46 = -4.0; 1 and 3 epochs (dev scores chosen among)
    assert "| 100 | 46.0 ± 0.0 (2 seeds, lr 2e-5) | 51.0 ± 0.0 (2 seeds, lr 1e-3) | +5.0 | -4.0 | 1.0 / 3.0 |" in table


def test_nothing_to_draw_is_not_an_error(tmp_path, capsys):
    r = str(tmp_path / "runs")
    make_run(r, "a", "mrpc", "frozen", 1e-3, 0, [0.8])
    figures.main([r, "--out", str(tmp_path / "fig")])
    assert "no figure applies" in capsys.readouterr().out


def test_subset_trained_task_still_gets_its_heatmap(tmp_path):
    # the CPU preset trains SST-2 on a fixed subset only: that cell is the table's, so it is drawn
    r = str(tmp_path / "runs")
    make_run(r, "s", "sst2", "bitfit", 1e-3, 0, [0.8], train_size=2000, bias_changes=changes(1.0))
    written = figures.make_figures(r, str(tmp_path / "fig"))
    assert [os.path.basename(p) for p in written] == ["bias_change_bert-base-cased_sst2.png",
                                                      "dev_curve_bert-base-cased_sst2.png"]


def test_dev_curve_is_the_mean_and_std_over_seeds_per_epoch(tmp_path):
    from bitfit_experiments.report import tables
    r = str(tmp_path / "runs")
    for seed, dev in ((0, [0.50, 0.60, 0.70]), (1, [0.54, 0.62, 0.70]), (2, [0.52, 0.64, 0.70])):
        make_run(r, f"b/{seed}", "rte", "bitfit", 1e-3, seed, dev)
    runs, _ = tables.load_runs(r)
    records = [x["results"] for x in runs]
    assert [round(v, 6) for v in figures._curve(records, "dev")] == [52.0, 62.0, 70.0]
    assert [round(v, 6) for v in figures._curve_std(records, "dev")] == [2.0, 2.0, 0.0]
    mean, std, count = figures._curve_ragged(records, "dev")
    assert [round(v, 6) for v in mean] == [52.0, 62.0, 70.0] and [round(v, 6) for v in std] == [2.0, 2.0, 0.0]


def test_dev_curve_goes_on_where_a_seed_was_trained_longer(tmp_path):
    """The convergence rule trains some runs longer: the curve keeps their later epochs (over the runs that have
    them) instead of cutting every seed at the shortest."""
    from bitfit_experiments.report import tables
    r = str(tmp_path / "runs")
    make_run(r, "b/0", "rte", "bitfit", 1e-3, 0, [0.50, 0.60, 0.70, 0.72, 0.71])
    make_run(r, "b/1", "rte", "bitfit", 1e-3, 1, [0.54, 0.62, 0.66])
    runs, _ = tables.load_runs(r)
    records = sorted((x["results"] for x in runs), key=lambda x: x.seed)
    mean, std, count = figures._curve_ragged(records, "dev")
    assert [round(v, 6) for v in mean] == [52.0, 61.0, 68.0, 72.0, 71.0] and count == [2, 2, 2, 1, 1]
    assert std[3:] == [0.0, 0.0]
    written = figures.make_figures(r, str(tmp_path / "fig"))
    assert any(p.endswith("dev_curve_bert-base-cased_rte.png") for p in written)
