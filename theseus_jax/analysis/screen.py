"""A study's screening: named recipe candidates, each a `launch.py` run, ranked on validation.

A study config may define `SCREEN = {name: [override, ...]}` beside `get_config()`. Each
candidate runs once in `<root>/<name>` (finished ones are reused, an interrupted one
resumes); `{teacher}` in an override stands for the selected model of the candidate named
`teacher`, which runs first (the fine-tuned predecessor that students are compressed from
or distilled from). `screen.md` / `screen.csv` rank the candidates by the validation metric;
the test metric at the validation-selected step is shown beside it, never used to rank;
`screen_metric.png` draws every candidate's validation metric per training step.

    python -m theseus_jax.analysis.screen --config=configs/germeval_e5_recipe.py --root=runs/e5_screen
"""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from theseus_jax import atomic
from theseus_jax.analysis.grid import launch_point
from theseus_jax.errors import ArgumentParser, UserError, run_cli
from theseus_jax.experiments import plots

TEACHER = "teacher"


def load_candidates(config: str) -> dict[str, list[str]]:
    """The `SCREEN` table of a config file."""
    spec = importlib.util.spec_from_file_location("screened_config", config)
    if spec is None or not Path(config).is_file():
        raise UserError(f"--config={config}: no such config file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    screen = getattr(module, "SCREEN", None)
    if not isinstance(screen, dict) or not screen:
        raise UserError(f"--config={config}: defines no SCREEN = {{name: [overrides]}} table of candidates")
    return {name: list(overrides) for name, overrides in screen.items()}


def _record(report: dict[str, Any]) -> dict[str, Any]:
    """The trained stage's record: the report itself, or a one-stage series' stage."""
    if "stages" in report:
        if len(report["stages"]) != 1:
            raise UserError(f"a screening candidate trains one stage; {sorted(report['stages'])} found")
        return next(iter(report["stages"].values()))
    return report


def selected_model(root: Path, name: str) -> str:
    report = Path(root) / name / "report.json"
    if not report.exists():
        raise UserError(f"{report}: candidate {name!r} has not finished; rerun the screen")
    return _record(json.loads(report.read_text()))["best_model_dir"]


def run_screen(
    config: str, root: Path, candidates: dict[str, list[str]],
    launcher: Callable[[str, Path, list[str]], None] = launch_point,
) -> list[str]:
    """Runs the candidates not finished yet, the teacher first; returns those it ran."""
    order = sorted(candidates, key=lambda name: name != TEACHER)
    ran = []
    for name in order:
        workdir = Path(root) / name
        if (workdir / "report.json").exists():
            continue
        overrides = candidates[name]
        if any("{teacher}" in o for o in overrides):
            if TEACHER not in candidates:
                raise UserError(f"candidate {name!r} names {{teacher}}, but SCREEN has no {TEACHER!r} candidate")
            teacher = selected_model(root, TEACHER)
            overrides = [o.replace("{teacher}", teacher) for o in overrides]
        launcher(config, workdir, overrides)
        ran.append(name)
    return ran


def row(name: str, r: dict[str, Any]) -> dict[str, Any]:
    """One candidate's line of the ranking, from its trained stage's record (`_record`)."""
    metric = r["metric"]
    distillation = r.get("distillation") or {}
    return {
        "name": name,
        "stage": r["name"],
        "metric": metric,
        "validation": r["validation"].get(metric),
        "test": r["test"].get(metric),
        "learning_rate": r["learning_rate"],
        "selected_step": r.get("selected_step", (r.get("best") or {}).get("step")),
        "collapsed": r.get("collapsed"),
        "alpha": distillation.get("alpha", 0.0),
        "time_until_best_s": r.get("time_until_best_s"),
        "tuning_time_s": r.get("tuning_time_s", r.get("total_time_s")),
    }


def summarise(root: Path, candidates: Sequence[str]) -> list[dict[str, Any]]:
    """`screen.csv` and `screen.md` over the finished candidates, best validation first."""
    root = Path(root)
    records = {n: _record(json.loads((root / n / "report.json").read_text())) for n in candidates if (root / n / "report.json").exists()}
    rows = [row(n, record) for n, record in records.items()]
    if not rows:
        return rows
    higher_better = rows[0]["metric"] != "perplexity"
    rows.sort(key=lambda r: r["validation"] if r["validation"] is not None else float("-inf"), reverse=higher_better)
    columns = list(rows[0])
    with atomic.open_atomic(root / "screen.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in columns) + " |" for r in rows]
    missing = [n for n in candidates if n not in records]
    ranked = {r["name"]: records[r["name"]] for r in rows}
    figure = plots.plot_series(
        root, plots.series_points(ranked, rows[0]["metric"]), rows[0]["metric"], name="screen_metric.png",
        title="screening: validation {metric} per step\n(star: selected step)",
    )
    atomic.write_text(
        root / "screen.md",
        f"# Screening: {len(rows)} of {len(candidates)} candidates finished, best validation {rows[0]['metric']} first\n\n"
        "validation: the metric at the selected step (what ranks); test: at that step, shown, never used to choose.\n\n"
        + "\n".join(lines) + "\n" + "".join(f"\n![{f}]({f})\n" for f in figure)
        + (f"\nNot finished (not run or interrupted): {', '.join(missing)}.\n" if missing else ""),
    )
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="a config file defining get_config() and SCREEN")
    parser.add_argument("--root", required=True, type=Path, help="one workdir per candidate under it")
    parser.add_argument("--only", default="", help="comma-separated candidate names (default: all)")
    parser.add_argument("--summary-only", action="store_true")
    args = parser.parse_args(argv)
    candidates = load_candidates(args.config)
    chosen = [n.strip() for n in args.only.split(",") if n.strip()] or list(candidates)
    unknown = sorted(set(chosen) - set(candidates))
    if unknown:
        raise UserError(f"--only: unknown candidates {unknown}; SCREEN has {list(candidates)}")
    if not args.summary_only:
        run_screen(args.config, args.root, {n: candidates[n] for n in chosen} | (
            {TEACHER: candidates[TEACHER]} if TEACHER in candidates else {}))
    rows = summarise(args.root, list(candidates))
    print(f"{len(rows)} of {len(candidates)} candidates finished; ranking in {args.root / 'screen.md'}")


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m theseus_jax.analysis.screen"))
