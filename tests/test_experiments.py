"""launch.py end to end on a tiny random BERT and generated GermEval-format data."""

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import ModelCard

REPO = Path(__file__).resolve().parents[1]


def _command(workdir, data, *overrides):
    return [
        sys.executable, str(REPO / "launch.py"), f"--config={REPO / 'tests' / 'tiny_config.py'}", f"--workdir={workdir}",
        f"--config.cls.data.train_path={data}", f"--config.lm.data.train_path={data}", *overrides,
    ]


def _launch(workdir, data, *overrides):
    return subprocess.run(_command(workdir, data, *overrides), cwd=REPO, capture_output=True, text=True, timeout=600)


def _ok(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_series_end_to_end_report(tmp_path, germeval_tsv):
    workdir = tmp_path / "series"
    _ok(_launch(workdir, germeval_tsv))
    report = json.loads((workdir / "report.json").read_text())
    stages = report["stages"]
    assert list(stages) == ["lm_baseline", "lm_compress", "cls_predecessor", "cls_successor", "cls_truncated"]
    for name, stage in stages.items():
        stage_report = json.loads((workdir / name / "report.json").read_text())
        assert len(stage_report["history"]) == 2  # one evaluation per epoch
        # Selected on validation; test recorded at the selected step (single seed: per_seed has one entry).
        assert stage["selection"] == "validation"
        assert stage["selected_step"] == stage["best"]["step"] == stage["per_seed"][0]["selected_step"]
        assert stage["test"][stage["metric"]] == stage["best"]["test"][stage["metric"]]
        assert stage["validation"][stage["metric"]] == stage["best"]["validation"][stage["metric"]]
        data = stage["data"]
        assert data["train"]["count"] + data["validation"]["count"] + data["test"]["count"] == 120
        assert "validation" in data["sources"]
        assert (workdir / name / "best" / "model.safetensors").exists()
        card = ModelCard.load(workdir / name / "best" / "README.md")  # the run's numbers, final
        (evaluation,) = card.data.eval_results
        assert (evaluation.metric_type, evaluation.metric_value) == (stage["metric"], stage["test"][stage["metric"]])
        assert (workdir / name / "report.md").exists() and (workdir / name / "steps.png").exists()
        # The process's peak memory at the run's end: at most the launch process's peak.
        assert 0 < stage["peak_rss_bytes"] <= resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        assert f"peak resident memory of the process by the run's end: {stage['peak_rss_bytes'] / 1e9:.2f} GB" in (
            workdir / name / "report.md").read_text()
    # Layers: 4-layer predecessor, 2-layer successor and truncated model.
    assert stages["cls_predecessor"]["parameters"]["exported_layers"] == 4
    assert stages["cls_successor"]["parameters"]["exported_layers"] == 2
    assert stages["cls_truncated"]["parameters"]["exported_layers"] == 2
    # The comparison is computed from the recorded numbers.
    comparison = report["comparison"]
    pred, succ = stages["cls_predecessor"], stages["cls_successor"]
    assert comparison["compression_ratio"] == pytest.approx(
        pred["parameters"]["exported_model"] / succ["parameters"]["exported_model"]
    )
    assert comparison["retained_performance"] == pytest.approx(succ["test"]["macro_f1"] / pred["test"]["macro_f1"])
    low, high = comparison["retained_performance_ci95"]
    assert low <= comparison["retained_performance"] <= high
    assert comparison["finetuning_speedup"] == pytest.approx(pred["time_until_best_s"] / succ["time_until_best_s"])
    assert comparison["perplexity_lm_compress"] == stages["lm_compress"]["best"]["test"]["perplexity"]
    assert comparison["selection"] == "validation" and "Selection protocol: **validation**" in (workdir / "report.md").read_text()
    # The comparison: a table row per downstream model, the verdict beside the difference.
    markdown = (workdir / "report.md").read_text().split("## Comparison")[1]
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and "[`cls_" in line]
    assert [row.split("[`")[1].split("`")[0] for row in rows] == ["cls_predecessor", "cls_successor", "cls_truncated"]
    assert f": **{comparison['successor_vs_truncated']}**" in rows[1]
    truncated = rows[2].split(" | ")  # its RP and speedup against the predecessor, like the students'
    assert truncated[4].startswith(f"{comparison['retained_performance_cls_truncated']:.4f} [")
    assert truncated[6] == f"{comparison['finetuning_speedup_cls_truncated']:.2f}"
    # Its one run peaked at the cap if it selected its last (second) evaluation: never stopped early in 2 epochs.
    run = stages["cls_truncated"]
    assert truncated[7] == f"{int(run['best']['step'] == run['history'][-1]['step'])} of 1 |"
    # Classes are stratified over the splits: validation holds both.
    cls_data = stages["cls_predecessor"]["data"]
    assert cls_data["validation"]["positives"] > 0 and cls_data["validation"]["negatives"] > 0
    # The replacement rate is logged every step and follows the curriculum (b = 0.1 at step 1).
    logged = [json.loads(line) for line in (workdir / "lm_compress" / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in logged] == list(range(1, len(logged) + 1))
    assert logged[0]["replace_rate"] == pytest.approx(0.1)
    assert logged[-1]["replace_rate"] == 1.0
    # Predictions for error analysis: one row per test example.
    predictions = (workdir / "cls_successor" / "predictions.csv").read_text().splitlines()
    assert len(predictions) - 1 == stages["cls_successor"]["data"]["test"]["count"]
    # The exported successor is a plain 2-layer BERT that transformers loads.
    transformers = pytest.importorskip("transformers")
    model = transformers.BertForSequenceClassification.from_pretrained(workdir / "cls_successor" / "best")
    assert model.config.num_hidden_layers == 2
    # Runs finished before model cards existed get theirs when the series is rerun and reuses them.
    for name in ("lm_compress", "cls_truncated"):
        (workdir / name / "best" / "README.md").unlink()
    rerun = _ok(_launch(workdir, germeval_tsv))
    assert "already finished" in rerun.stderr
    for name in ("lm_compress", "cls_truncated"):
        (evaluation,) = ModelCard.load(workdir / name / "best" / "README.md").data.eval_results
        assert (evaluation.metric_type, evaluation.metric_value) == (stages[name]["metric"], stages[name]["test"][stages[name]["metric"]])
    reused = json.loads((workdir / "report.json").read_text())["stages"]
    assert all(reused[name]["history"] == stage["history"] for name, stage in stages.items())  # nothing trained again


def _history(workdir):
    report = json.loads((workdir / "report.json").read_text())
    return [{k: v for k, v in h.items() if k != "elapsed_s"} for h in report["history"]]


RESUMED_RUN = ("--config.pipeline=cls_compress", "--config.cls.epochs=3", "--config.checkpoint_every_steps=4")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, germeval_tsv):
    """The uninterrupted run that killed and stopped runs must reproduce."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    _ok(_launch(workdir, germeval_tsv, *RESUMED_RUN))
    return workdir


def _steps(workdir):
    return [json.loads(line) for line in (workdir / "steps.jsonl").read_text().splitlines()]


def test_killed_run_resumes_to_the_same_result(tmp_path, germeval_tsv, reference):
    killed = tmp_path / "killed"
    command = _command(killed, germeval_tsv, *RESUMED_RUN)
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    checkpoints = killed / "checkpoints"
    # Kill once a mid-run checkpoint exists (11 steps per epoch, so step 8 is in epoch 1).
    while time.time() < deadline and not (checkpoints.exists() and any(p.name.isdigit() and int(p.name) >= 8 for p in checkpoints.iterdir())):
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "report.json").exists()
    resumed = _ok(subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600))
    assert "resuming" in resumed.stderr
    assert _history(killed) == _history(reference)
    report = json.loads((reference / "report.json").read_text())
    # Trained = shared parts + 4 predecessor + 2 successor layers; exported = shared + 2 layers,
    # so one layer is (trained - exported) / 4 and the predecessor is exported + 2 layers.
    trained, exported = report["parameters"]["trained_model"], report["parameters"]["exported_model"]
    predecessor = exported + 2 * (trained - exported) // 4
    assert report["compression_ratio"] == pytest.approx(predecessor / exported)
    assert report["compression_ratio"] > 1


@pytest.mark.slow  # 30-90 s; the default suite stays under 15 minutes on 2 cores
def test_a_run_killed_after_its_first_best_resumes_to_the_same_test_result(tmp_path, germeval_tsv, reference):
    """SIGKILL after step 14: past epoch 1's evaluation (the first best, whose test evaluation
    waits for the run's end) and the step-11 and step-12 checkpoints. The killed run has
    evaluated nothing on test; the rerun restores the kept parameters with its checkpoint and
    ends with the uninterrupted run's history, test at the selected step included."""
    workdir = tmp_path / "killed"
    command = _command(workdir, germeval_tsv, *RESUMED_RUN)
    killed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, THESEUS_KILL_AT="train_step:14"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (workdir / "report.json").exists() and not (workdir / "test_predictions.npz").exists()
    resumed = _ok(subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600))
    assert "resuming at step 1" in resumed.stderr
    assert _history(workdir) == _history(reference)
    selected = json.loads((reference / "report.json").read_text())["selected_step"]
    assert [h["step"] for h in _history(workdir) if "test" in h] == [selected]
    with np.load(workdir / "test_predictions.npz") as got, np.load(reference / "test_predictions.npz") as expected:
        assert all(np.array_equal(got[k], expected[k]) for k in expected.files)


@pytest.mark.parametrize("signame, status", [("TERM", 143), pytest.param("INT", 130, marks=pytest.mark.slow)])
def test_a_signal_saves_the_step_in_flight_and_the_rerun_resumes_to_the_same_result(
    tmp_path, germeval_tsv, reference, signame, status
):
    """SIGTERM (a preemption notice) or Ctrl-C after step 7, which is no periodic checkpoint
    (every 4 steps) and mid-epoch (11 steps an epoch): the run saves step 7 and exits."""
    workdir = tmp_path / "stopped"
    env = dict(os.environ, THESEUS_KILL_AT=f"train_step:7:{signame}")
    stopped = subprocess.run(_command(workdir, germeval_tsv, *RESUMED_RUN), cwd=REPO, capture_output=True, text=True,
                             timeout=600, env=env)
    assert stopped.returncode == status, stopped.stderr[-3000:]
    last = stopped.stderr.strip().splitlines()[-1]
    assert last == (f"launch.py: cls_compress: stopped by SIG{signame} at step 7 of {len(_steps(reference))}, checkpoint saved in "
                    f"{workdir / 'checkpoints'}; rerun the same command to resume")
    assert "Traceback" not in stopped.stderr and not (workdir / "report.json").exists()
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [4, 7]
    assert _steps(workdir) == _steps(reference)[:7]
    resumed = _ok(subprocess.run(_command(workdir, germeval_tsv, *RESUMED_RUN), cwd=REPO, capture_output=True, text=True,
                                 timeout=600))
    assert "resuming at step 7" in resumed.stderr
    assert _history(workdir) == _history(reference)
    assert _steps(workdir) == _steps(reference)
    best = lambda w: (w / "best" / "model.safetensors").read_bytes()
    assert best(workdir) == best(reference)


def test_a_stopped_run_leaves_the_stop_out_of_its_times(tmp_path, germeval_tsv, reference):
    """SIGSTOP at step 15 (as `kill -STOP` or SLURM's suspend), SIGCONT 12 s later: epoch 2
    (steps 12-22), where the stop fell, takes about as long by the run's clock as epoch 3,
    where a wall clock would add the 12 s (tests/test_run_clock.py times the clock itself)."""
    workdir, stop_s = tmp_path / "stopped", 12.0
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:
        process = subprocess.Popen(_command(workdir, germeval_tsv, *RESUMED_RUN), cwd=REPO, stdout=subprocess.DEVNULL,
                                   stderr=stderr, env=dict(os.environ, THESEUS_KILL_AT="train_step:15:STOP"))
    try:
        deadline = time.time() + 300
        while Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
            assert process.poll() is None and time.time() < deadline, "the run did not stop itself at step 15"
            time.sleep(0.1)
        time.sleep(stop_s)
    finally:
        os.kill(process.pid, signal.SIGCONT)
    assert process.wait(timeout=600) == 0, log.read_text()[-3000:]
    elapsed = {h["step"]: h["elapsed_s"] for h in json.loads((workdir / "report.json").read_text())["history"]}
    assert sorted(elapsed) == [11, 22, 33]
    assert (elapsed[22] - elapsed[11]) - (elapsed[33] - elapsed[22]) < stop_s / 2
    assert _history(workdir) == _history(reference)


def test_a_memory_cap_no_step_fits_stops_before_training_and_a_rerun_without_it_runs_whole(tmp_path, germeval_tsv,
                                                                                          reference):
    """max_memory_gb below any process's size: once the first step is compiled, the resident
    size plus its XLA temporaries pass the cap, so the run stops before step 1 with exit 2 and
    one line naming the batch shape, both sizes, the cap and the knobs, leaving no checkpoint
    and no report; a rerun without the cap gives the uninterrupted run's result."""
    workdir = tmp_path / "capped"
    stopped = subprocess.run(_command(workdir, germeval_tsv, *RESUMED_RUN, "--config.max_memory_gb=0.01"), cwd=REPO,
                             capture_output=True, text=True, timeout=600)
    assert stopped.returncode == 2, stopped.stderr[-3000:]
    errors = [line for line in stopped.stderr.splitlines() if line.startswith("launch.py:")]
    assert errors == [stopped.stderr.strip().splitlines()[-1]] and "Traceback" not in stopped.stderr
    match = re.fullmatch(
        rf"launch.py: error: cls_compress: a training step of batch shape \d+ x \d+ needs about (\d+\.\d\d) GB "
        rf"\((\d+\.\d\d) GB resident \+ (\d+\.\d\d) GB of XLA temporaries\), over max_memory_gb=0.01, at step 0 of "
        rf"{len(_steps(reference))}; lower batch_size or max_length, raise accumulation_steps, set model.remat=True, or "
        "raise max_memory_gb, then rerun the same command to resume",
        errors[0],
    )
    assert match, errors[0]
    need, resident, temporaries = map(float, match.groups())
    assert need > 0.01 and resident > 0.1 and abs(resident + temporaries - need) <= 0.011
    assert not (workdir / "checkpoints").exists() or not [p for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    assert not (workdir / "report.json").exists() and not (workdir / "steps.jsonl").read_text()
    _ok(subprocess.run(_command(workdir, germeval_tsv, *RESUMED_RUN), cwd=REPO, capture_output=True, text=True, timeout=600))
    assert _history(workdir) == _history(reference)
    assert _steps(workdir) == _steps(reference)


@pytest.mark.slow  # 30-90 s; the default suite stays under 15 minutes on 2 cores
def test_workdir_of_another_config_is_refused(tmp_path, germeval_tsv):
    workdir = tmp_path / "run"
    _ok(_launch(workdir, germeval_tsv, "--config.pipeline=cls_baseline", "--config.cls.epochs=1"))
    refused = _launch(workdir, germeval_tsv, "--config.pipeline=cls_baseline", "--config.cls.epochs=2")
    assert refused.returncode != 0 and "different config" in refused.stderr and "cls.epochs" in refused.stderr


def test_max_steps_caps_the_run_and_its_learning_rate_schedule(tmp_path, germeval_tsv):
    """`cls.max_steps=5` with 2 epochs of 11 batches: 5 steps, evaluated and tested at step 5,
    with the learning rate decaying linearly from 1e-3 to 0 over exactly those steps (issue 33:
    all 22 steps ran, the rate below 0 from step 6 on, as the schedule ended at step 5)."""
    _ok(_launch(tmp_path, germeval_tsv, "--config.pipeline=cls_baseline", "--config.cls.max_steps=5"))
    logged = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in logged] == [1, 2, 3, 4, 5]
    assert [entry["learning_rate"] for entry in logged] == pytest.approx([1e-3 * (5 - s) / 5 for s in range(5)])
    report = json.loads((tmp_path / "report.json").read_text())
    assert [h["step"] for h in report["history"]] == [5] and report["selected_step"] == 5 and "test" in report["best"]


def test_non_finite_loss_stops_with_the_step(tmp_path, germeval_tsv):
    result = _launch(
        tmp_path / "nan", germeval_tsv, "--config.pipeline=cls_baseline", "--config.cls.learning_rate=1e30",
        "--config.cls.max_grad_norm=0",
    )
    assert result.returncode != 0
    assert "non-finite loss" in result.stderr and "at step" in result.stderr


def _run_history(folder):
    report = json.loads((folder / "report.json").read_text())
    return [{k: v for k, v in h.items() if k != "elapsed_s"} for h in report["history"]]


@pytest.mark.slow  # five training runs: about 5 minutes on 2 shared cores
def test_seeds_and_learning_rates_each_run_and_are_chosen_on_validation(tmp_path, germeval_tsv):
    """Two seeds x two learning rates: four runs in their folders; per seed the learning rate
    whose run is best on validation; seeds differ; a seed rerun alone reproduces its run."""
    workdir = tmp_path / "sweep"
    common = ("--config.pipeline=cls_baseline", "--config.cls.epochs=1")
    _ok(_launch(workdir, germeval_tsv, *common, "--config.seeds=0,1", "--config.cls.learning_rates=1e-4,3e-3"))
    record = json.loads((workdir / "report.json").read_text())
    assert record["seeds"] == [0, 1] and record["learning_rates"] == [1e-4, 3e-3]
    assert [e["seed"] for e in record["per_seed"]] == [0, 1]
    for entry in record["per_seed"]:
        runs = {lr: json.loads((workdir / f"seed_{entry['seed']}" / f"lr_{lr:g}" / "report.json").read_text()) for lr in (1e-4, 3e-3)}
        assert all(r["seed"] == entry["seed"] and r["learning_rate"] == lr for lr, r in runs.items())
        validation = {lr: r["best"]["validation"]["macro_f1"] for lr, r in runs.items()}
        expected = 3e-3 if validation[3e-3] > validation[1e-4] else 1e-4  # first of a tie
        assert entry["learning_rate"] == expected
        assert entry["test"] == runs[expected]["test"] and entry["validation"] == runs[expected]["validation"]
        assert [c["learning_rate"] for c in entry["learning_rate_candidates"]] == [1e-4, 3e-3]
    # The stage's numbers are the means over seeds of the chosen runs.
    assert record["test"]["macro_f1"] == pytest.approx(np.mean([e["test"]["macro_f1"] for e in record["per_seed"]]))
    assert "| seed | learning rate |" in (workdir / "report.md").read_text()
    # Seeds are distinct runs...
    assert _run_history(workdir / "seed_0" / "lr_0.003") != _run_history(workdir / "seed_1" / "lr_0.003")
    # ...each reproducible on its own (one seed, one learning rate: the run is the stage folder).
    alone = tmp_path / "alone"
    _ok(_launch(alone, germeval_tsv, *common, "--config.seeds=1", "--config.cls.learning_rate=3e-3",
                "--config.keep_final_checkpoints=true"))
    assert _run_history(alone) == _run_history(workdir / "seed_1" / "lr_0.003")
    # Finished runs drop their checkpoints (best/ holds the model) unless told to keep them.
    assert not list(workdir.rglob("checkpoints")) and all((workdir / f"seed_{s}" / "lr_0.003" / "best").is_dir() for s in (0, 1))
    assert any(p.name.isdigit() for p in (alone / "checkpoints").iterdir())


@pytest.mark.parametrize("env, expected", [
    ({}, ("{home}/.cache/theseus-jax/xla", 4 << 30)),
    ({"JAX_COMPILATION_CACHE_DIR": "{home}/mine", "JAX_COMPILATION_CACHE_MAX_SIZE": "0"}, ("{home}/mine", 0)),
])
def test_launch_keeps_compiled_steps_on_disk_unless_told_otherwise(tmp_path, env, expected):
    """Reruns, seeds and grid points reuse XLA's executables (BENCHMARKS: compilation cache)."""
    code = "import jax, launch; launch._cache_compilations(); " \
           "print(jax.config.jax_compilation_cache_dir, jax.config.jax_compilation_cache_max_size)"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    variables = clean | {"HOME": str(tmp_path), "PYTHONPATH": str(REPO)} | {k: v.format(home=tmp_path) for k, v in env.items()}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=variables,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    directory, size = expected
    assert result.stdout.split() == [directory.format(home=tmp_path), str(size)]


def test_the_malloc_policy_follows_theseus_keep_freed_memory():
    """The policy launch.py sets: "phases" unless THESEUS_KEEP_FREED_MEMORY names another ("1"
    means the default). One fresh process (mallopt changes the process it runs in) tries each."""
    script = (
        "import os; from theseus_jax import memory\n"
        "for value in (None, '1', 'keep', '0'):\n"
        "    os.environ.pop(memory.MALLOC_POLICY, None) if value is None else os.environ.update({memory.MALLOC_POLICY: value})\n"
        "    print(memory.configure_memory())\n"
    )
    variables = {k: v for k, v in os.environ.items() if k != "THESEUS_KEEP_FREED_MEMORY"} | {"PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, env=variables, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["phases", "phases", "keep", "0"]
