"""Analysis: CKA against the kernel (HSIC) formula, layer comparison on known cases."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from theseus_jax.analysis.layers import compare_layers
from theseus_jax.analysis.similarity import linear_cka, mean_cosine
from theseus_jax.compression import theseus
from theseus_jax.models.bert import BertConfig, BertForMaskedLM


def _hsic_cka(x, y):
    """CKA through Gram matrices and the centring matrix H: tr(KHLH) / sqrt(tr(KHKH) tr(LHLH))."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h)
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def test_cka_matches_the_kernel_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8))
    y = x @ rng.normal(size=(8, 5)) + 0.5 * rng.normal(size=(50, 5))
    assert linear_cka(x, y) == pytest.approx(_hsic_cka(x, y), rel=1e-10)
    assert 0 < linear_cka(x, y) < 1


def test_cka_of_itself_is_one_and_invariant_to_rotation_and_scale():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 6))
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3.7 * x @ q) == pytest.approx(1.0)
    y = rng.normal(size=(40, 4))
    assert linear_cka(x @ q, y) == pytest.approx(linear_cka(x, y))
    with pytest.raises(ValueError, match="same N"):
        linear_cka(x, y[:10])


def test_mean_cosine():
    x = np.array([[1.0, 0.0], [0.0, 2.0]])
    y = np.array([[1.0, 1.0], [0.0, -1.0]])
    assert mean_cosine(x, y) == pytest.approx((1 / np.sqrt(2) - 1) / 2)


def test_a_successor_that_is_its_predecessor_compares_perfectly():
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=24, max_position_embeddings=16)
    params = BertForMaskedLM(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    rng = np.random.default_rng(0)
    batch = {
        "input_ids": rng.integers(1, 50, (4, 10)).astype(np.int32),
        "attention_mask": np.ones((4, 10), np.int32),
        "token_type_ids": np.zeros((4, 10), np.int32),
    }
    batch["attention_mask"][0, 6:] = 0
    same = compare_layers((cfg, params), (cfg, params), [batch])
    assert np.diag(same["cka"]) == pytest.approx(1.0)
    assert same["cosine"] == pytest.approx([1.0] * 4)
    assert same["mlm_agreement"] == 1.0
    assert same["tokens"] == 4 * 10 - 4

    # 4 -> 2 with successor i = predecessor layer 2i+1 (the module's upper layer) fed the
    # module's own input would match; run end to end, module 0's output differs.
    theseus_params = theseus.init_theseus_params(params, cfg, 2, init_offset=1)
    succ = theseus.extract_successor(cfg, theseus_params)
    result = compare_layers((cfg, params), succ, [batch])
    assert np.asarray(result["cka"]).shape == (2, 2)
    assert result["module_size"] == 2
    assert all(0 <= c <= 1 + 1e-9 for row in result["cka"] for c in row)


def test_error_analysis_counts_agree_with_confusion_matrices(tmp_path):
    from sklearn.metrics import confusion_matrix

    from theseus_jax.analysis import errors

    rng = np.random.default_rng(3)
    n = 500
    labels = rng.integers(0, 2, n)
    prob_a = np.clip(labels * 0.6 + rng.normal(0.2, 0.25, n), 0, 1)
    prob_b = np.clip(labels * 0.5 + rng.normal(0.25, 0.25, n), 0, 1)
    texts = [f"text {i}" for i in range(n)]
    rows, summary = errors.error_analysis(texts, labels, prob_a, prob_b, per_type=30, seed=0)
    for model, probs in (("predecessor", prob_a), ("successor", prob_b)):
        (tn, fp), (fn, tp) = confusion_matrix(labels, (probs > 0.5).astype(int))
        assert summary[f"FP_{model}"] == fp and summary[f"FN_{model}"] == fn
        assert summary[f"errors_{model}"] == fp + fn
        for kind, total in (("FP", fp), ("FN", fn)):
            sampled = [r for r in rows if r["model"] == model and r["error_type"] == kind]
            assert len(sampled) == min(30, total)
            assert all((r["label"] == 0) == (kind == "FP") for r in sampled)
    wrong_a = set(np.nonzero((prob_a > 0.5) != labels)[0])
    wrong_b = set(np.nonzero((prob_b > 0.5) != labels)[0])
    assert summary["shared"] == len(wrong_a & wrong_b)
    assert summary["new"] == len(wrong_b - wrong_a) and summary["fixed"] == len(wrong_a - wrong_b)
    # Seeded: the same sample again.
    assert errors.error_analysis(texts, labels, prob_a, prob_b, per_type=30, seed=0)[0] == rows

    path = tmp_path / "errors.csv"
    for i, row in enumerate(rows):
        row["error_class"] = "irony" if i % 3 == 0 else ""
    errors.write_rows(rows, path)
    tally = errors.tally_error_classes(path)
    assert sum(sum(c.values()) for c in tally.values()) == len(rows)
    assert tally["predecessor"]["irony"] == sum(1 for i, r in enumerate(rows) if r["model"] == "predecessor" and i % 3 == 0)


def test_grid_runs_every_point_once_and_resumes(tmp_path):
    import json

    from theseus_jax.analysis import grid

    points = grid.grid_points([1e-5, 2e-5], [0.1, 0.3], [0.85, 1.0], ["0"])
    assert len({p.name for p in points}) == 8
    shards = [grid.my_points(points, i, 3) for i in range(3)]
    assert sorted(p.name for shard in shards for p in shard) == sorted(p.name for p in points)

    calls = []

    def fake_launch(config, workdir, overrides):
        calls.append(workdir.name)
        if len(calls) == 3:
            raise KeyboardInterrupt  # interrupted mid-grid, before this point wrote its report
        workdir.mkdir(parents=True)
        lr = float(overrides[0].split("=")[1])
        b = float(overrides[2].split("=")[1])
        value = lr * 1e4 + b  # validation; test disagrees (inverted order) and must not rank
        (workdir / "report.json").write_text(json.dumps({
            "metric": "macro_f1", "selection": "validation", "validation": {"macro_f1": value}, "test": {"macro_f1": -value},
            "total_time_s": 1.0,
        }))

    with pytest.raises(KeyboardInterrupt):
        grid.run_grid("cfg.py", tmp_path, points, launcher=fake_launch)
    ran = grid.run_grid("cfg.py", tmp_path, points, launcher=fake_launch)
    assert len(calls) == 3 + 6 and len(ran) == 6
    assert sorted(set(calls)) == sorted(p.name for p in points)  # each point finished once
    assert grid.run_grid("cfg.py", tmp_path, points, launcher=fake_launch) == []

    rows = grid.summarise(tmp_path, points)
    assert len(rows) == 8
    by_name = {r["name"]: r for r in rows}
    assert by_name[points[0].name]["value"] == pytest.approx(points[0].learning_rate * 1e4 + points[0].starting_rate)
    assert by_name[points[0].name]["test"] == pytest.approx(-by_name[points[0].name]["value"])
    # Ranked on validation: the first table row is the point with the best validation metric.
    best = max(points, key=lambda p: p.learning_rate * 1e4 + p.starting_rate)
    table = (tmp_path / "summary.md").read_text().splitlines()
    assert table[2].startswith("| ") and best.name in table[4]
    assert (tmp_path / "summary.csv").read_text().count("\n") == 9
    assert (tmp_path / "grid_starting_rate.png").exists()


def test_grid_reads_a_series_point_through_its_comparison_record(tmp_path):
    """A point that ran a series (teacher, Theseus student, truncated): the row holds the first
    student's numbers, the predecessor's test metric and the stages' summed time."""
    from theseus_jax.analysis import grid
    from theseus_jax.experiments import report

    point = grid.grid_points([2e-5], [0.3], [0.85], ["0"])[0]
    student = report.Versus(0.69, 0.78, compression_ratio=1.9, finetuning_speedup=1.5,
                            retained=report.Spread(0.985, None, [], None))
    comparison = report.Comparison("macro_f1", "validation", [0], predecessor=report.Versus(0.70, 0.80),
                                   models={"cls_compress": student, "cls_truncated": report.Versus(0.66, 0.75)})
    stages = {"cls_predecessor": {"total_time_s": 10.0}, "cls_compress": {"total_time_s": 6.0}, "cls_truncated": {"total_time_s": 4.0}}
    (tmp_path / point.name).mkdir()
    (tmp_path / point.name / "report.json").write_text(json.dumps({"comparison": comparison.to_json(), "stages": stages}))
    [row] = grid.summarise(tmp_path, [point])
    assert (row["metric"], row["selection"], row["value"], row["test"], row["baseline"]) == ("macro_f1", "validation", 0.78, 0.69, 0.70)
    assert (row["compression_ratio"], row["retained_performance"], row["finetuning_speedup"], row["time_s"]) == (1.9, 0.985, 1.5, 20.0)


def test_screen_runs_the_teacher_first_substitutes_it_and_ranks_on_validation(tmp_path):
    from theseus_jax.analysis import screen

    config = tmp_path / "study.py"
    config.write_text(
        "def get_config():\n    return None\n\n"
        "SCREEN = {'student_a': ['--x={teacher}'], 'teacher': ['--t'], 'student_b': ['--config.distillation.teacher={teacher}']}\n"
    )
    candidates = screen.load_candidates(str(config))
    # validation and test per candidate: b is best on validation though a is best on test.
    scores = {"teacher": (0.80, 0.79), "student_a": (0.70, 0.75), "student_b": (0.72, 0.71)}
    calls = []

    def fake_launch(cfg, workdir, overrides):
        calls.append((workdir.name, overrides))
        workdir.mkdir(parents=True)
        validation, test = scores[workdir.name]
        record = {"name": "cls_compress", "metric": "macro_f1", "validation": {"macro_f1": validation},
                  "test": {"macro_f1": test}, "learning_rate": 1e-4, "selected_step": 10, "collapsed": False,
                  "best_model_dir": str(workdir / "best"), "time_until_best_s": 1.0, "total_time_s": 2.0,
                  "objective": "classification", "best": {"step": 10},
                  "history": [{"step": 5, "validation": {"macro_f1": validation - 0.1}},
                              {"step": 10, "validation": {"macro_f1": validation}}]}
        report = {"stages": {"cls_predecessor": record}} if workdir.name == "teacher" else record
        (workdir / "report.json").write_text(json.dumps(report))

    assert screen.run_screen(str(config), tmp_path, candidates, launcher=fake_launch) == ["teacher", "student_a", "student_b"]
    teacher_best = str(tmp_path / "teacher" / "best")
    assert calls == [("teacher", ["--t"]), ("student_a", [f"--x={teacher_best}"]),
                     ("student_b", [f"--config.distillation.teacher={teacher_best}"])]
    assert screen.run_screen(str(config), tmp_path, candidates, launcher=fake_launch) == []  # finished: reused
    rows = screen.summarise(tmp_path, list(candidates))
    assert [r["name"] for r in rows] == ["teacher", "student_b", "student_a"]  # validation order, not test
    assert "| student_b | cls_compress | macro_f1 | 0.72 | 0.71 |" in (tmp_path / "screen.md").read_text()
    # Every candidate's validation curve in one figure, linked from screen.md.
    assert (tmp_path / "screen_metric.png").stat().st_size > 0
    assert "![screen_metric.png](screen_metric.png)" in (tmp_path / "screen.md").read_text()
    assert "Not finished" not in (tmp_path / "screen.md").read_text()
    screen.summarise(tmp_path, [*candidates, "student_c"])  # in SCREEN, never run
    assert "Not finished (not run or interrupted): student_c." in (tmp_path / "screen.md").read_text()
