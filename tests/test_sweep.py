"""The depth sweep end to end (launch.py, a tiny random 4-layer BERT at depths 2 and 1): its
stages are named per depth, the teacher runs once, the report carries the Pareto table, the
figures and measured speeds, the log numbers the runs, and a rerun reuses every finished run
and the measurement under the same numbers."""

import json
import re

from test_experiments import _launch, _ok

from theseus_jax.experiments import stages

SWEEP = ("--config.series.stages=cls_predecessor,cls_truncated,cls_compress", "--config.compression.depths=2,1",
         "--config.cls.epochs=1", "--config.cls.data.max_examples=60")
STAGES = ["cls_predecessor", "cls_truncated_L2", "cls_compress_L2", "cls_truncated_L1", "cls_compress_L1"]


def test_depth_sweep_names_its_stages_and_reuses_them_on_rerun(tmp_path, germeval_tsv):
    workdir = tmp_path / "sweep"
    first = _ok(_launch(workdir, germeval_tsv, *SWEEP))
    numbered = [re.search(rf"{s}: seed 0, learning rate \S+ \(run (\d) of 5\)", first.stderr) for s in STAGES]
    assert [m and m.group(1) for m in numbered] == ["1", "2", "3", "4", "5"]  # one seed, one rate: a run per stage
    report = json.loads((workdir / "report.json").read_text())
    stages = report["stages"]
    assert list(stages) == STAGES
    assert [stages[s]["parameters"]["exported_layers"] for s in STAGES] == [4, 2, 2, 1, 1]
    assert sorted(p.name for p in workdir.iterdir() if p.is_dir()) == sorted(STAGES)  # one teacher
    # Measured at the end on the test texts, the first seed's exported models against the teacher's.
    speeds = json.loads((workdir / "throughput.json").read_text())
    assert sorted(speeds) == sorted(STAGES)
    assert speeds["cls_predecessor"]["speedup"] == 1.0
    assert {s: speeds[s]["layers"] for s in STAGES} == dict(zip(STAGES, [4, 2, 2, 1, 1]))
    assert all(t["texts"] == stages["cls_predecessor"]["data"]["test"]["count"] and t["texts_per_second"] > 0
               for t in speeds.values())
    assert {s: speeds[s]["model_dir"] for s in STAGES} == {s: stages[s]["best_model_dir"] for s in STAGES}
    markdown = (workdir / "report.md").read_text()
    assert "Measured inference speed: the depth sweep below." in markdown.split("## Depth sweep")[0]
    assert "Inference speed is not measured" not in markdown
    section = markdown.split("## Depth sweep")[1]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "[`cls_" in line]
    assert [r.split("[`")[1].split("`")[0] for r in rows] == STAGES
    assert all(f"{speeds[s]['speedup']:.2f}x" in r for s, r in zip(STAGES, rows))
    # One epoch, one evaluation: every run selected its last evaluation and trained to the cap.
    assert all(r.endswith("| 1 of 1 |") for r in rows)
    assert "of the teacher (RP >= 0.99)" in section and "![series_pareto.png](series_pareto.png)" in markdown
    assert (workdir / "series_pareto.png").stat().st_size > 0
    assert "![series_depths.png](series_depths.png)" in markdown and (workdir / "series_depths.png").stat().st_size > 0
    assert "series_depths.png" in report["plots"]

    finished = {p: p.stat().st_mtime_ns for p in [*workdir.glob("*/report.json"), workdir / "throughput.json"]}
    rerun = _ok(_launch(workdir, germeval_tsv, *SWEEP))
    assert all(re.search(rf"{s}: already finished, reusing \S+ \(run {i} of 5\)", rerun.stderr) for i, s in enumerate(STAGES, 1))
    assert not re.search(r"step \d+ of \d+, loss", rerun.stderr)  # nothing trained
    assert {p: p.stat().st_mtime_ns for p in finished} == finished
    again = json.loads((workdir / "report.json").read_text())
    assert {s: again["stages"][s]["test"] for s in STAGES} == {s: stages[s]["test"] for s in STAGES}
    assert again["sweep"] == report["sweep"]


def test_the_sweep_adds_one_variant_per_depth_and_stage():
    """The recipe's stages at depths 6, 4, 3: the teacher once, then each depth's truncated
    model, vanilla KD, Theseus and Theseus with KD, each needing only the teacher before it."""
    names = ["cls_predecessor", "cls_truncated", "cls_truncated_kd", "cls_compress", "cls_compress_kd"]
    chosen = stages.series(names, [6, 4, 3])
    assert [s.name for s in chosen] == ["cls_predecessor"] + [
        f"{kind}_L{d}" for d in (6, 4, 3) for kind in names[1:]
    ]
    assert [s.depth for s in chosen[1:5]] == [6] * 4 and {s.truncated for s in chosen[1:5]} == {"cls_truncated_L6"}
    assert all(need == "cls_predecessor" for s in chosen for need in s.needs)
    assert stages.series(names, []) == [stages.find(n) for n in names]  # no depths: the series as listed
    assert stages.parse_depths(" 6, 4,3 ") == [6, 4, 3] and stages.parse_depths("") == []
