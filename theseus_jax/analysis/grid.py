"""Hyperparameter grid over learning rate x starting rate x ratio of replacement changes x
init offset, each point a `launch.py` run in its own workdir.

Points already finished (their `report.json` exists) are skipped, and an interrupted
point resumes from its checkpoints, so rerunning the same command completes the grid.
`--index/--count` split the points across devices or hosts (point k runs where
k % count == index). The summary (CSV + Markdown) and the study's figures are made from
the points' recorded reports. Points are ranked by the validation metric (`value`); the test
metric at the validation-selected step (`test`) is shown beside it, never used to rank.

    python -m theseus_jax.analysis.grid --config=configs/germeval.py --root=runs/grid \
        --learning-rates=1e-5,2e-5 --starting-rates=0.1,0.3,0.7,0.9 --rrcs=0.05,0.45,0.85,1.0
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from theseus_jax import atomic
from theseus_jax.errors import ArgumentParser, UserError, run_cli
from theseus_jax.experiments.report import Comparison, Versus

LAUNCH = Path(__file__).resolve().parents[2] / "launch.py"


@dataclasses.dataclass(frozen=True)
class GridPoint:
    learning_rate: float
    starting_rate: float
    ratio_replacement_changes: float
    init_offset: str

    @property
    def name(self) -> str:
        return (
            f"lr{self.learning_rate:g}_b{self.starting_rate:g}_rrc{self.ratio_replacement_changes:g}"
            f"_off{self.init_offset}"
        )

    def overrides(self) -> list[str]:
        return [
            f"--config.lm.learning_rate={self.learning_rate}",
            f"--config.cls.learning_rate={self.learning_rate}",
            f"--config.compression.starting_rate={self.starting_rate}",
            f"--config.compression.ratio_replacement_changes={self.ratio_replacement_changes}",
            f"--config.compression.init_offset={self.init_offset}",
        ]


def grid_points(
    learning_rates: Sequence[float], starting_rates: Sequence[float], rrcs: Sequence[float], init_offsets: Sequence[str]
) -> list[GridPoint]:
    return [GridPoint(*values) for values in itertools.product(learning_rates, starting_rates, rrcs, init_offsets)]


def my_points(points: list[GridPoint], index: int, count: int) -> list[GridPoint]:
    if not 0 <= index < count:
        raise UserError(f"--index must be in [0, --count), got {index} of {count}")
    return [p for k, p in enumerate(points) if k % count == index]


def launch_point(config: str, workdir: Path, overrides: list[str]) -> None:
    """Runs one point as its own process (a crash or kill loses nothing: rerun resumes).

    Ctrl-C reaches launch.py too (one process group): the grid (or screen) waits while it saves the
    step in flight, where `subprocess.run` would kill it a quarter second later.
    """
    process = subprocess.Popen([sys.executable, str(LAUNCH), f"--config={config}", f"--workdir={workdir}", *overrides])
    while True:
        try:
            status = process.wait()
            break
        except KeyboardInterrupt:
            continue  # launch.py got the same Ctrl-C; a second one stops it at once
    if status in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        raise UserError(f"{workdir}: launch.py stopped on a signal after saving its checkpoint; rerun the same command to resume")
    if status < 0:
        raise UserError(f"{workdir}: launch.py was killed by {signal.Signals(-status).name}; rerun the same command to resume")
    if status:
        raise UserError(f"{workdir}: launch.py ended with status {status} (its error is above); fix it and rerun to continue the grid")


def run_grid(
    config: str,
    root: Path,
    points: list[GridPoint],
    extra_overrides: Sequence[str] = (),
    launcher: Callable[[str, Path, list[str]], None] = launch_point,
) -> list[GridPoint]:
    """Runs the points not finished yet; returns those it ran."""
    ran = []
    for point in points:
        workdir = Path(root) / point.name
        if (workdir / "report.json").exists():
            continue
        launcher(config, workdir, point.overrides() + list(extra_overrides))
        ran.append(point)
    return ran


def _point_result(point: GridPoint, report: dict[str, Any]) -> dict[str, Any]:
    """One summary row from a point's report (a series or a single compression run)."""
    row: dict[str, Any] = dataclasses.asdict(point) | {"name": point.name}
    if "comparison" in report:
        comparison = Comparison.from_json(report["comparison"], report["stages"])
        successor = comparison.successor() or Versus(None, None)
        row.update(
            metric=comparison.metric,
            selection=comparison.selection,
            value=successor.validation,
            test=successor.test,
            baseline=comparison.predecessor.test,
            compression_ratio=successor.compression_ratio,
            retained_performance=successor.retained.mean if successor.retained else None,
            finetuning_speedup=successor.finetuning_speedup,
            time_s=sum(s.get("total_time_s") or 0 for s in report["stages"].values()),
        )
    else:
        row.update(
            metric=report["metric"],
            selection=report.get("selection", "test"),
            value=report.get("validation", {}).get(report["metric"]),
            test=report.get("test", {}).get(report["metric"]),
            compression_ratio=report.get("compression_ratio"),
            time_s=report.get("total_time_s"),
        )
    return row


def summarise(root: Path, points: list[GridPoint]) -> list[dict[str, Any]]:
    """Rows of the finished points, written to `summary.csv` and `summary.md`, plus figures."""
    root = Path(root)
    rows = [
        _point_result(p, json.loads((root / p.name / "report.json").read_text()))
        for p in points
        if (root / p.name / "report.json").exists()
    ]
    if not rows:
        return rows
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with atomic.open_atomic(root / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    higher_better = rows[0]["metric"] != "perplexity"
    best = sorted(rows, key=lambda r: r["value"] if r["value"] is not None else float("-inf" if higher_better else "inf"),
                  reverse=higher_better)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in best]
    figures = plot_grid(root, rows)
    atomic.write_text(
        root / "summary.md",
        f"# Grid over {len(points)} points ({len(rows)} finished), best validation {rows[0]['metric']} first "
        f"(value: validation, test: at the validation-selected step)\n\n" + "\n".join(lines) + "\n\n"
        + "\n".join(f"![{f}]({f})" for f in figures) + "\n"
    )
    return rows


def plot_grid(root: Path, rows: list[dict[str, Any]], rrc_fixed: float = 0.85, b_fixed: float = 0.1) -> list[str]:
    """The study's figures: metric vs starting rate (rrc fixed) and vs rrc (b fixed), a line per lr."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for x_key, fixed_key, fixed, filename in (
        ("starting_rate", "ratio_replacement_changes", rrc_fixed, "grid_starting_rate.png"),
        ("ratio_replacement_changes", "starting_rate", b_fixed, "grid_rrc.png"),
    ):
        chosen = [r for r in rows if abs(r[fixed_key] - fixed) < 1e-9 and r["value"] is not None]
        if not chosen:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.4))
        for lr in sorted({r["learning_rate"] for r in chosen}):
            line = sorted((r[x_key], r["value"]) for r in chosen if r["learning_rate"] == lr)
            ax.plot([x for x, _ in line], [y for _, y in line], marker="o", label=f"lr {lr:g}")
        ax.set(xlabel=x_key, ylabel=f"validation {chosen[0]['metric']}", title=f"{fixed_key} = {fixed:g}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        atomic.save_figure(fig, root / filename, dpi=110)
        plt.close(fig)
        files.append(filename)
    return files


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main(argv: Sequence[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--learning-rates", default="1e-5,2e-5")
    parser.add_argument("--starting-rates", default="0.1,0.3,0.7,0.9")
    parser.add_argument("--rrcs", default="0.05,0.45,0.85,1.0")
    parser.add_argument("--init-offsets", default="0")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--summary-only", action="store_true")
    args, extra = parser.parse_known_args(argv)
    points = grid_points(
        _floats(args.learning_rates), _floats(args.starting_rates), _floats(args.rrcs),
        [x.strip() for x in args.init_offsets.split(",") if x.strip()],
    )
    if not args.summary_only:
        run_grid(args.config, args.root, my_points(points, args.index, args.count), extra)
    rows = summarise(args.root, points)
    print(f"{len(rows)} of {len(points)} points finished; summary in {args.root / 'summary.md'}")


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m theseus_jax.analysis.grid"))
