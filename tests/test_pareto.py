"""The depth sweep's Pareto table from hand-made per-seed records, checked against a hand
computation: means, standard deviations, RP, paired gains, verdicts and the sentence."""

import json
import math

import pytest

from theseus_jax.experiments import pareto, plots, report

SEEDS = (0, 1, 2)
TEACHER = {0: 0.80, 1: 0.70, 2: 0.75}


def _model(stage, method, depth, parameters, test, truncated=None, diff_ci=None, speedup=None, collapsed=(), peaked=None):
    return pareto.SweepModel(
        stage=stage, method=method, depth=depth, parameters=parameters, test=test, test_ci95=[min(test.values()), max(test.values())],
        retained={s: test[s] / TEACHER[s] for s in SEEDS}, retained_ci95=[0.9, 1.1],
        minus_truncated={} if truncated is None else {s: test[s] - truncated[s] for s in SEEDS},
        minus_truncated_ci95=diff_ci, truncated_collapsed=collapsed, speedup=speedup, peaked_at_cap=peaked,
    )


TRUNCATED = {6: {0: 0.77, 1: 0.68, 2: 0.73}, 4: {0: 0.70, 1: 0.50, 2: 0.70}, 3: {0: 0.60, 1: 0.61, 2: 0.62}}
MODELS = [
    _model("cls_compress_L3", "cls_compress", 3, 40, {0: 0.70, 1: 0.66, 2: 0.69}, TRUNCATED[3], [-0.01, 0.2], 3.8),
    _model("cls_truncated_L6", "cls_truncated", 6, 60, TRUNCATED[6], speedup=2.0),
    _model("cls_compress_L6", "cls_compress", 6, 60, {0: 0.79, 1: 0.72, 2: 0.74}, TRUNCATED[6], [0.005, 0.04], 1.9,
           peaked=(2, 3)),
    _model("cls_predecessor", "cls_predecessor", 12, 100, TEACHER, speedup=1.0),
    _model("cls_compress_L4", "cls_compress", 4, 50, {0: 0.78, 1: 0.69, 2: 0.74}, TRUNCATED[4], [0.01, 0.2], None, (1,)),
]


def test_rows_by_hand():
    table = pareto.rows(MODELS)
    assert [r.stage for r in table] == ["cls_predecessor", "cls_compress_L6", "cls_truncated_L6", "cls_compress_L4", "cls_compress_L3"]
    teacher, compress6, truncated6, compress4, compress3 = table
    assert teacher.retained.mean == 1.0 and teacher.minus_truncated is None and teacher.verdict is None
    # cls_compress at 6 layers: test mean (0.79 + 0.72 + 0.74) / 3; RP per seed 0.79/0.80, 0.72/0.70, 0.74/0.75.
    assert compress6.test.mean == pytest.approx(0.75)
    assert compress6.test.std == pytest.approx(math.sqrt(((0.04) ** 2 + 0.03**2 + 0.01**2) / 2))
    assert compress6.retained.mean == pytest.approx((0.9875 + 1.0285714286 + 0.9866666667) / 3)
    assert compress6.retained.per_seed[1] == pytest.approx(0.72 / 0.70)
    # Paired gains 0.02, 0.04, 0.01: mean 0.02333, std 0.015275; all positive and the interval above 0.
    assert compress6.minus_truncated.mean == pytest.approx(0.0233333333)
    assert compress6.minus_truncated.std == pytest.approx(0.0152752523)
    assert compress6.minus_truncated.ci95 == [0.005, 0.04]
    assert (compress6.positive_seeds, compress6.verdict) == (3, "better")
    assert (compress6.parameters, compress6.depth, compress6.speedup) == (60, 6, 1.9)
    assert truncated6.minus_truncated is None and truncated6.retained.mean == pytest.approx((0.9625 + 0.9714285714 + 0.9733333333) / 3)
    # 3 layers: gains 0.10, 0.05, 0.07 all positive, but the interval reaches below 0.
    assert compress3.minus_truncated.mean == pytest.approx(0.0733333333)
    assert (compress3.positive_seeds, compress3.verdict) == (3, "not separated")
    # 4 layers: its truncated model collapsed in seed 1, so no verdict whatever the gains.
    assert compress4.verdict == "not comparable: the baseline collapsed in seeds [1]" and compress4.speedup is None


def test_the_smallest_model_within_1_and_2_percent():
    table = pareto.rows(MODELS)
    # RP means: L6 1.0009, L4 (0.975 + 0.98571 + 0.98667) / 3 = 0.98246, truncated L6 0.96909, L3 0.91262.
    assert pareto.smallest_within(table, 0.01).stage == "cls_compress_L6"
    assert pareto.smallest_within(table, 0.02).stage == "cls_compress_L4"
    assert pareto.smallest_within(table, 0.1).stage == "cls_compress_L3"
    assert pareto.smallest_within(table[:1], 0.01) is None  # the teacher does not count
    assert pareto.sentence(table) == (
        "The smallest model within 1% of the teacher (RP >= 0.99) is `cls_compress_L6`: 6 layers, 60 parameters, "
        "RP 1.001, 1.90x the teacher's measured speed; the smallest model within 2% of the teacher (RP >= 0.98) is "
        "`cls_compress_L4`: 4 layers, 50 parameters, RP 0.982."
    )
    assert pareto.sentence([table[2]], (0.01,)) == "No model is within 1% of the teacher (RP >= 0.99)."


def test_a_seed_without_rp_is_left_out():
    model = pareto.SweepModel("s", "cls_compress", 2, 5, {0: 0.5, 1: 0.6}, None, {0: None, 1: 0.8}, None, {}, None)
    assert pareto.row(model).retained.mean == 0.8 and pareto.row(model).retained.std is None


def test_markdown_and_figure(tmp_path):
    table = pareto.rows(MODELS)
    lines = report.pareto_table(table, "macro_f1")
    cells = lines[3].split(" | ")  # cls_compress_L6
    assert cells[0] == "| 6" and "`cls_compress_L6`" in cells[1] and cells[2] == "60" and cells[3] == "1.90x"
    assert cells[4] == "0.7500 ± 0.0361 [0.7200, 0.7900]"
    assert cells[6] == "+0.0233 ± 0.0153 [0.0050, 0.0400]: **better** (3 of 3 seeds positive)"
    assert cells[7] == "2 of 3 |" and lines[2].endswith("| n/a |")  # the teacher's count unknown here
    assert "not measured" in lines[5] and lines[-1] == pareto.sentence(table)
    points = pareto.points(table)
    assert list(points) == ["cls_predecessor", "cls_compress", "cls_truncated"]  # L4 not measured: left out
    assert points["cls_compress"]["depth"] == [6, 3] and points["cls_compress"]["speedup"] == [1.9, 3.8]
    assert plots.plot_pareto(tmp_path, points, "macro_f1") == ["series_pareto.png"]
    assert (tmp_path / "series_pareto.png").stat().st_size > 0
    assert plots.plot_pareto(tmp_path, {"cls_predecessor": points["cls_predecessor"]}, "macro_f1") == []


def _run_dir(root, name, seed, history, rates=None):
    """A finished run's folder as the trainer leaves it: report.json's history (step, value) and,
    for a Theseus run, steps.jsonl's replacement rate per step."""
    folder = root / name / f"seed_{seed}"
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(json.dumps(
        {"history": [{"epoch": i, "step": step, "validation": {"macro_f1": value}} for i, (step, value) in enumerate(history)]}))
    if rates is not None:
        (folder / "steps.jsonl").write_text("".join(json.dumps({"step": i + 1, "loss": 0.5, "replace_rate": p}) + "\n"
                                                    for i, p in enumerate(rates)))
    return str(folder)


def test_learning_curves_per_depth_from_each_seeds_chosen_run(tmp_path):
    """Two depths, truncated and Theseus, two seeds: each seed's chosen run's validation values
    per evaluation, its selected step, and the first step where p reaches 1 (Theseus only);
    deepest first, the teacher left out; the figure has a panel per depth."""
    truncated_3 = [(10, 0.50), (20, 0.60), (30, 0.55)]
    compress_3 = [(10, 0.40), (20, 0.70)]
    rates = [0.1, 0.4, 0.7, 1.0, 1.0]  # p = 1 from step 4
    stage = lambda seeds: {"objective": "classification", "per_seed": seeds}
    entry = lambda seed, step, run_dir: {"seed": seed, "selected_step": step, "run_dir": run_dir}
    results = {
        "cls_predecessor": stage([entry(0, 10, _run_dir(tmp_path, "teacher", 0, [(10, 0.8)]))]),
        "cls_truncated_L2": stage([entry(0, 20, _run_dir(tmp_path, "t2", 0, [(10, 0.3)])),
                                   entry(1, 10, _run_dir(tmp_path, "t2", 1, [(10, 0.35)]))]),
        "cls_truncated_L3": stage([entry(0, 20, _run_dir(tmp_path, "t3", 0, truncated_3))]),
        "cls_compress_L3": stage([entry(0, 20, _run_dir(tmp_path, "c3", 0, compress_3, rates)),
                                  entry(1, 99, _run_dir(tmp_path, "c3", 1, compress_3, [0.1, 0.5]))]),
    }
    curves = plots.depth_curves(results, "macro_f1")
    assert list(curves) == [3, 2] and list(curves[3]) == ["cls_truncated", "cls_compress"]
    assert curves[3]["cls_truncated"] == [plots.Curve(0, [10, 20, 30], [0.50, 0.60, 0.55], (20, 0.60), None)]
    assert curves[3]["cls_compress"] == [
        plots.Curve(0, [10, 20], [0.40, 0.70], (20, 0.70), 4),
        plots.Curve(1, [10, 20], [0.40, 0.70], None, None),  # step 99 not evaluated; p never reached 1
    ]
    assert [c.seed for c in curves[2]["cls_truncated"]] == [0, 1] and curves[2]["cls_truncated"][0].selected is None
    assert plots.plot_depths(tmp_path, curves, "macro_f1") == ["series_depths.png"]
    assert (tmp_path / "series_depths.png").stat().st_size > 0
    assert plots.plot_depths(tmp_path, {}, "macro_f1") == []
