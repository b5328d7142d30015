"""The converged reproduction's planner (bitfit_experiments/report/repro_plan.py): the learning-rate pilot that grows
past the edge of what it has run, and the convergence rule (a run whose best epoch is one of its last two is trained
longer, 2 epochs at a time, up to 20) -- on fake run records, no training."""
import json
import os

import pytest

from bitfit_experiments.report import repro_plan as rp


def put(runs, method, task, lr, seed=0, score=0.5, best_epoch=5, epochs=10, size=2000, status="complete", curve=None):
    """A run record as run_glue.py writes it (only the fields the planner reads); `curve`: the dev score per epoch
    (default: `score` at best_epoch, a little lower elsewhere)."""
    d = rp.run_dir(str(runs), method, task, size, lr, seed)
    os.makedirs(d, exist_ok=True)
    metric = rp.HEADLINE[task]
    curve = curve or [score if i == best_epoch else score - 0.01 for i in range(1, epochs + 1)]
    with open(os.path.join(d, "results.json"), "w") as f:
        json.dump({"status": status, "eval_splits": ["dev"], "headline_metric": metric, "best_epoch": best_epoch,
                   "last_epoch": epochs, "best": {"dev": {metric: score}}, "last": {"dev": {metric: curve[-1]}},
                   "epochs": [{"epoch": i + 1, "train_loss": 0.5, "metrics": {"dev": {metric: v}}}
                              for i, v in enumerate(curve)]}, f)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({"args": {"epochs": epochs}}, f)
    return d


def plan(runs, tasks=("rte",), **kw):
    lines, best = rp.plan(str(runs), list(tasks), 2000, [0, 1, 2], [], **kw)
    return lines, best


def test_the_pilot_starts_at_two_points_of_each_grid(tmp_path):
    lines, best = plan(tmp_path)
    assert [(m, lr, e) for m, _, _, lr, _, e in lines["pilot"]] == [
        ("bitfit", 4e-4, 10), ("bitfit", 1e-3, 10), ("full_ft", 2e-5, 10), ("full_ft", 5e-5, 10)]
    assert not best and not lines["seeds"] and not lines["others"]


def test_a_best_rate_on_an_edge_grows_the_pilot_one_point_at_a_time(tmp_path):
    put(tmp_path, "bitfit", "rte", 4e-4, score=0.56)
    put(tmp_path, "bitfit", "rte", 1e-3, score=0.59)  # best at the top of the grid: one step past it
    put(tmp_path, "full_ft", "rte", 2e-5, score=0.61)  # best at the bottom of what ran: the grid's next point down
    put(tmp_path, "full_ft", "rte", 5e-5, score=0.58)
    lines, best = plan(tmp_path)
    assert sorted((m, lr) for m, _, _, lr, _, _ in lines["pilot"]) == [("bitfit", 1.3e-3), ("full_ft", 1e-5)]
    put(tmp_path, "bitfit", "rte", 1.3e-3, score=0.55)  # lower: 1e-3 is bracketed
    put(tmp_path, "full_ft", "rte", 1e-5, score=0.62)  # still the edge: one step past the grid (5e-6), no further
    lines, best = plan(tmp_path)
    assert best == {("bitfit", "rte"): 1e-3}
    assert [(m, lr) for m, _, _, lr, _, _ in lines["pilot"]] == [("full_ft", 5e-6)]
    assert [(m, lr, s) for m, _, _, lr, s, _ in lines["seeds"]] == [("bitfit", 1e-3, 1), ("bitfit", 1e-3, 2)]
    assert {m for m, *_ in lines["others"]} == set(rp.OTHER_METHODS)
    assert all(lr == 1e-3 and s == 0 for _, _, _, lr, s, _ in lines["others"])
    put(tmp_path, "full_ft", "rte", 5e-6, score=0.63)  # best past the grid's edge: reported, not chased further
    lines, best = plan(tmp_path)
    assert best[("full_ft", "rte")] == 5e-6 and not lines["pilot"]


def test_a_run_still_rising_is_trained_longer_before_anything_depends_on_it(tmp_path):
    put(tmp_path, "bitfit", "rte", 4e-4, score=0.56)
    put(tmp_path, "bitfit", "rte", 1e-3, score=0.59, best_epoch=10, epochs=10)  # best in its last epoch
    lines, best = plan(tmp_path)
    bitfit = [(lr, e) for m, _, _, lr, _, e in lines["pilot"] if m == "bitfit"]
    assert bitfit == [(1e-3, 12)]  # 2 more epochs, and no step past the edge on a score still rising
    assert ("bitfit", "rte") not in best and not lines["seeds"]
    put(tmp_path, "bitfit", "rte", 1e-3, score=0.60, best_epoch=11, epochs=12)  # the last two epochs again
    assert [(lr, e) for m, _, _, lr, _, e in plan(tmp_path)[0]["pilot"] if m == "bitfit"] == [(1e-3, 14)]
    put(tmp_path, "bitfit", "rte", 1e-3, score=0.60, best_epoch=11, epochs=14)  # flat for 3 epochs: converged
    assert [(lr, e) for m, _, _, lr, _, e in plan(tmp_path)[0]["pilot"] if m == "bitfit"] == [(1.3e-3, 10)]


def test_training_longer_stops_at_20_epochs(tmp_path):
    put(tmp_path, "bitfit", "rte", 4e-4, score=0.56, best_epoch=19, epochs=19)
    assert [(lr, e) for m, _, _, lr, _, e in plan(tmp_path)[0]["pilot"] if m == "bitfit"] == [(4e-4, 20), (1e-3, 10)]
    put(tmp_path, "bitfit", "rte", 4e-4, score=0.56, best_epoch=20, epochs=20)  # still rising, but the cap
    assert [(lr, e) for m, _, _, lr, _, e in plan(tmp_path)[0]["pilot"] if m == "bitfit"] == [(1e-3, 10)]


def test_a_run_that_never_moved_is_trained_to_the_cap(tmp_path):
    # CoLA BitFit at 1e-4: MCC 0.0 in each of its 10 epochs. Its best epoch is the first (ties: the first), which
    # the last-two-epochs test alone would read as converged long ago.
    put(tmp_path, "bitfit", "cola", 1e-4, score=0.0, best_epoch=1, curve=[0.0] * 10)
    put(tmp_path, "bitfit", "cola", 4e-4, score=0.22, best_epoch=17, epochs=20)
    put(tmp_path, "bitfit", "cola", 1e-3, score=0.13, best_epoch=10, epochs=12)
    lines, best = plan(tmp_path, tasks=("cola",))
    assert [(lr, e) for m, _, _, lr, _, e in lines["pilot"] if m == "bitfit"] == [(1e-4, 20)]
    assert ("bitfit", "cola") not in best  # nothing is decided on it meanwhile
    put(tmp_path, "bitfit", "cola", 1e-4, score=0.0, best_epoch=1, epochs=20, curve=[0.0] * 20)  # flat at the cap
    lines, best = plan(tmp_path, tasks=("cola",))
    assert best[("bitfit", "cola")] == 4e-4 and not [1 for m, *_ in lines["pilot"] if m == "bitfit"]
    # a run that moved at all, even below its first epoch, is judged by the last-two-epochs test as before
    put(tmp_path, "bitfit", "cola", 1e-4, score=0.05, best_epoch=1, curve=[0.05] + [0.0] * 9)
    assert not [1 for m, *_ in plan(tmp_path, tasks=("cola",))[0]["pilot"] if m == "bitfit"]


def test_the_rule_holds_for_every_phase_and_a_run_being_extended_keeps_its_length(tmp_path):
    for lr, score in ((4e-4, 0.56), (7e-4, 0.57), (1e-3, 0.59), (1.3e-3, 0.55)):
        put(tmp_path, "bitfit", "rte", lr, score=score)
    put(tmp_path, "bitfit", "rte", 1e-3, seed=1, best_epoch=9)  # a seed run peaking in its last two epochs
    put(tmp_path, "frozen", "rte", 1e-3, best_epoch=3)  # converged
    put(tmp_path, "bm2", "rte", 1e-3, epochs=12, status="running")  # being trained to 12 right now
    lines, _ = plan(tmp_path)
    assert [(s, e) for m, _, _, _, s, e in lines["seeds"] if m == "bitfit"] == [(1, 12), (2, 10)]
    others = {m: e for m, _, _, _, _, e in lines["others"]}
    assert "frozen" not in others and others["bm2"] == 12 and others["bq"] == 10


def test_the_other_methods_run_method_by_method_over_every_task(tmp_path):
    for task in ("rte", "mrpc"):
        for lr, score in ((4e-4, 0.56), (1e-3, 0.59), (1.3e-3, 0.55)):
            put(tmp_path, "bitfit", task, lr, score=score)
    lines, _ = plan(tmp_path, tasks=("rte", "mrpc"))
    assert [(m, t) for m, t, *_ in lines["others"]] == [(m, t) for m in rp.OTHER_METHODS for t in ("rte", "mrpc")]
    assert rp.OTHER_METHODS[:3] == ("lora", "ia3", "bitfit_lora")  # the PEFT rows first (issue 12 waits on them)


def test_a_later_seed_trains_at_least_as_long_as_the_first_seed_did(tmp_path):
    # CoLA BitFit 4e-4: the pilot (seed 0) needed 20 epochs; seed 1 peaked once at epoch 8 of 10, at the majority
    # baseline otherwise -- the last-two-epochs test alone would stop it there.
    put(tmp_path, "bitfit", "cola", 1e-4, score=0.0, best_epoch=1, epochs=20, curve=[0.0] * 20)
    put(tmp_path, "bitfit", "cola", 4e-4, score=0.22, best_epoch=17, epochs=20)
    put(tmp_path, "bitfit", "cola", 1e-3, score=0.13, best_epoch=10, epochs=12)
    put(tmp_path, "bitfit", "cola", 4e-4, seed=1, score=0.066, best_epoch=8, epochs=10)
    put(tmp_path, "bitfit", "cola", 4e-4, seed=2, score=0.18, best_epoch=18, epochs=20)
    lines, best = plan(tmp_path, tasks=("cola",))
    assert best[("bitfit", "cola")] == 4e-4
    assert [(s, e) for m, _, _, _, s, e in lines["seeds"] if m == "bitfit"] == [(1, 20)]
    # the same for the curve: seed 1 at 250 examples trains at least as long as seed 0 there
    for method, rates in (("bitfit", ((4e-4, 0.80), (1e-3, 0.81), (1.3e-3, 0.80))),
                          ("full_ft", ((2e-5, 0.81), (5e-5, 0.83), (7e-5, 0.82)))):
        for lr, score in rates:
            put(tmp_path, method, "sst2", lr, score=score)
    curve = lambda: [(s, e) for m, _, _, _, s, e in rp.plan(str(tmp_path), ["sst2"], 2000, [0, 1], [250],
                                                               others=())[0]["curve"] if m == "bitfit"]
    assert curve() == [(0, 10)]  # seed 1 waits for seed 0
    put(tmp_path, "bitfit", "sst2", 1e-3, score=0.7, best_epoch=20, epochs=26, size=250)
    assert curve() == [(0, 42)]  # still rising (its best in the last 16 epochs): seed 1 still waits
    put(tmp_path, "bitfit", "sst2", 1e-3, score=0.7, best_epoch=20, epochs=42, size=250)
    assert curve() == [(1, 42)]


def test_a_smaller_training_set_is_judged_over_the_same_number_of_steps(tmp_path):
    for method, rates in (("bitfit", ((4e-4, 0.80), (1e-3, 0.81), (1.3e-3, 0.80))),
                          ("full_ft", ((2e-5, 0.81), (5e-5, 0.83), (7e-5, 0.82)))):
        for lr, score in rates:
            put(tmp_path, method, "sst2", lr, score=score)

    def curve():
        lines, _ = rp.plan(str(tmp_path), ["sst2"], 2000, [0], [250, 4000], others=())
        return {(m, n): e for m, _, n, _, _, e in lines["curve"]}

    assert curve() == {("bitfit", 250): 10, ("full_ft", 250): 10, ("bitfit", 4000): 10, ("full_ft", 4000): 10}
    # 250 examples: an epoch is 16 steps, 1/8 of the protocol's. Best at epoch 3 of 10 is one of the last 16 epochs
    # (the protocol's last two, 250 steps): still rising -> 16 more epochs.
    put(tmp_path, "bitfit", "sst2", 1e-3, score=0.7, best_epoch=3, epochs=10, size=250)
    put(tmp_path, "bitfit", "sst2", 1e-3, score=0.8, best_epoch=9, epochs=10, size=4000)  # 4,000: the rule as is
    assert curve()[("bitfit", 250)] == 26 and curve()[("bitfit", 4000)] == 12
    put(tmp_path, "bitfit", "sst2", 1e-3, score=0.7, best_epoch=10, epochs=26, size=250)  # 16 epochs past its best
    put(tmp_path, "bitfit", "sst2", 1e-3, score=0.8, best_epoch=10, epochs=12, size=4000)
    assert ("bitfit", 250) not in curve() and ("bitfit", 4000) not in curve()
    # the cap: 20 protocol epochs = 160 epochs of 250 examples, not 20 (320 steps)
    put(tmp_path, "full_ft", "sst2", 5e-5, score=0.7, best_epoch=19, epochs=20, size=250)
    assert curve()[("full_ft", 250)] == 36
    put(tmp_path, "full_ft", "sst2", 5e-5, score=0.7, best_epoch=159, epochs=160, size=250)
    assert ("full_ft", 250) not in curve()
    # a flat run goes to that cap too
    put(tmp_path, "full_ft", "sst2", 5e-5, score=0.5, best_epoch=1, epochs=26, size=250, curve=[0.5] * 26)
    assert curve()[("full_ft", 250)] == 160


def test_the_command_line_prints_one_run_per_line_with_its_epochs(tmp_path, capsys):
    put(tmp_path, "bitfit", "rte", 1e-3, best_epoch=10)
    rp.main([str(tmp_path), "--tasks", "rte", "--phases", "pilot"])
    out = capsys.readouterr().out.splitlines()
    assert out == ["bitfit rte 2000 4e-4 0 10", "bitfit rte 2000 1e-3 0 12",
                   "full_ft rte 2000 2e-5 0 10", "full_ft rte 2000 5e-5 0 10"]


def test_the_status_table_is_made_from_the_records(tmp_path, capsys):
    from bitfit_experiments.report import repro_status
    d = put(tmp_path, "bitfit", "rte", 1e-3, score=0.59, best_epoch=2, epochs=3)
    with open(os.path.join(d, "results.json")) as f:
        r = json.load(f)
    r["epochs"] = [{"epoch": i + 1, "train_loss": 0.7 - 0.01 * i, "metrics": {"dev": {"accuracy": v}}}
                   for i, v in enumerate((0.50, 0.59, 0.55))]
    r["total_train_time_sec"] = 1800
    with open(os.path.join(d, "results.json"), "w") as f:
        json.dump(r, f)
    put(tmp_path, "full_ft", "rte", 2e-5, status="running", epochs=10)
    repro_status.main([str(tmp_path), "--tasks", "rte"])
    out = capsys.readouterr().out
    assert "| RTE BitFit lr 1e-3 seed 0 | acc 50.0 **59.0** 55.0 | 0.700 -> 0.680 | 59.0 (epoch 2 of 3) | - | 0.50 |" in out
    assert "RTE Full-FT lr 2e-5 seed 0" in out and "running" in out
    assert "1 complete of 2 started" in out


def test_the_estimate_counts_only_the_epochs_left_at_the_measured_rate():
    from bitfit_experiments.report import repro_status
    rec = lambda status, n_epochs, secs, evals=20.0: {"status": status, "num_train_examples": 100, "epochs": [
        {"epoch": i + 1, "epoch_time_sec": secs, "eval_time_sec": evals} for i in range(n_epochs)]}
    runs = [("bitfit", "rte", 100, 1e-3, 0, "p", rec("complete", 2, 100.0)),   # 1 s per example, 20 s of dev
            ("full_ft", "rte", 100, 2e-5, 0, "p", rec("complete", 2, 300.0, 30.0)),  # 3 s, 30 s of dev
            ("bitfit", "rte", 2000, 4e-4, 0, "p", rec("running", 4, 100.0))]
    plan = {"pilot": [("bitfit", "rte", 2000, 4e-4, 0, 10)],            # 6 epochs left x (2,000 x 1 s + 20 s)
            "others": [("rand_uniform", "rte", 100, 1e-3, 0, 10),       # costs what Full-FT does: 10 x (100 x 3 + 30)
                       ("bitfit", "cola", 100, 1e-3, 0, 10)],           # nothing measured on CoLA
            "curve": [("bitfit", "rte", 10, 1e-3, 0, 10)]}              # the dev set stays whole: 10 x (10 x 1 + 20)
    hours, unknown = repro_status.estimate_hours(runs, plan)
    assert hours == pytest.approx((6 * 2020 + 10 * 330 + 10 * 30) / 3600) and unknown == 1


def test_the_comparison_so_far_uses_each_methods_pilot_rate_and_its_complete_seeds():
    from bitfit_experiments.report import repro_status
    rec = lambda acc, status="complete": {"status": status, "eval_splits": ["dev"], "headline_metric": "accuracy",
                                          "best": {"dev": {"accuracy": acc}}, "last": {"dev": {"accuracy": acc - 0.01}}}
    runs = [("bitfit", "rte", 2000, 1e-3, 0, "p", rec(0.60)), ("bitfit", "rte", 2000, 1e-3, 1, "p", rec(0.62)),
            ("bitfit", "rte", 2000, 4e-4, 0, "p", rec(0.70)),              # not the pilot's rate
            ("bitfit", "rte", 2000, 1e-3, 2, "p", rec(0.10, "running")),   # not complete
            ("bitfit", "rte", 500, 1e-3, 0, "p", rec(0.10)),               # another training size
            ("full_ft", "rte", 2000, 2e-5, 0, "p", rec(0.58)),
            ("bitfit", "mrpc", 2000, 1e-3, 0, "p", rec(0.80))]             # Full-FT's pilot not decided: no row
    best = {("bitfit", "rte"): 1e-3, ("full_ft", "rte"): 2e-5, ("bitfit", "mrpc"): 1e-3}
    lines = repro_status.comparison(runs, best, 2000)
    assert lines[-1] == "| RTE | 1e-3: 60.0 62.0 | 2e-5: 58.0 | +3.0 | - | +3.0 | 2 / 1 |"  # no Full-FT seed 1+ yet
    assert not any(line.startswith("| MRPC") for line in lines)
    # the seeds that did not choose the rate, on their own: BitFit seed 1 (62) against Full-FT seeds 1-2 (56, 57)
    runs += [("full_ft", "rte", 2000, 2e-5, 1, "p", rec(0.56)), ("full_ft", "rte", 2000, 2e-5, 2, "p", rec(0.57))]
    assert repro_status.comparison(runs, best, 2000)[-1] == \
        "| RTE | 1e-3: 60.0 62.0 | 2e-5: 58.0 56.0 57.0 | +4.0 | +5.5 | +4.0 | 2 / 3 |"
    # the last epochs' scores, no epoch chosen: Full-FT seed 2 fell to 50 by its last epoch
    runs[-1][-1]["last"]["dev"]["accuracy"] = 0.50
    assert repro_status.comparison(runs, best, 2000)[-1] == \
        "| RTE | 1e-3: 60.0 62.0 | 2e-5: 58.0 56.0 57.0 | +4.0 | +5.5 | +6.0 | 2 / 3 |"
