"""report.json files written by the code before the typed records (be8ea06) load into
`summary.RunRecord` and `report.Comparison` and write back the same keys and values, and the
comparison renders the table that code wrote: old workdirs still load, resume and compare.

tests/data/report_be8ea06/ holds, from `python launch.py --config=tests/tiny_config.py
--config.pipeline=series --config.series.stages=lm_compress,cls_predecessor,cls_successor,cls_compress,cls_truncated,cls_truncated_kd
--config.distillation.alpha=0.5 --config.seeds=0,1 --config.cls.epochs=1 --config.lm.epochs=1` at be8ea06 on conftest's
120 generated GermEval lines: the series' report.json and report.md and two runs' report.json (JSON re-serialised
without indentation, values unchanged).
"""

import json
from pathlib import Path

import pytest

from theseus_jax.experiments import report, summary

DATA = Path(__file__).parent / "data" / "report_be8ea06"


def _same(a, b):
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN-safe equality


@pytest.mark.parametrize("name", ["cls_truncated_kd_seed_0_report.json", "lm_compress_seed_0_report.json"])
def test_a_run_report_of_the_previous_code_loads_and_writes_back_its_keys(name):
    stored = json.loads((DATA / name).read_text())
    written = summary.RunRecord.from_json(stored).to_json()
    # plots and config are the report file's, not the record's; the peak memory is new, and so is
    # the cap flag, derived from the stored history: one evaluation (epoch 1, step 11), selected,
    # and the run not stopped early, so the budget ended it at its best.
    assert [h["step"] for h in stored["history"]] == [11] and stored["best"]["step"] == 11 and not stored["stopped_early"]
    expected = {k: v for k, v in stored.items() if k not in ("plots", "config")} | {"peak_rss_bytes": None, "peaked_at_cap": True}
    expected["per_seed"] = [e | {"peaked_at_cap": True} for e in stored["per_seed"]]
    _same(written, expected)


def test_a_series_comparison_of_the_previous_code_loads_writes_back_and_renders_the_same_table():
    stored = json.loads((DATA / "series_report.json").read_text())
    comparison = report.Comparison.from_json(stored["comparison"], stored["stages"])
    assert list(comparison.models) == ["cls_successor", "cls_compress", "cls_truncated_kd", "cls_truncated"]
    assert comparison.models["cls_compress"].retained.mean == stored["comparison"]["retained_performance_cls_compress"]
    _same(comparison.to_json(), stored["comparison"])
    markdown = (DATA / "series_report.md").read_text()
    table = report.comparison_table(stored["stages"], comparison)
    assert "\n".join(table) in markdown and "peaked at the cap" not in table[0]  # its records predate the flag
    assert "\n".join(report.per_seed_table(stored["stages"], comparison)) in markdown
