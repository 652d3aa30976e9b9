"""Plots beside the reports: a run's metric, loss and replacement rate; a series' (or a
screening's) validation metric per training step; a series' test metric per seed; a depth
sweep's Pareto figure and learning curves per depth. Point extraction (`series_points`,
`seed_points`, `depth_curves`) is kept apart from drawing."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from theseus_jax import atomic
from theseus_jax.experiments.stages import find


def read_steps(workdir: Path) -> list[dict[str, float]]:
    path = Path(workdir) / "steps.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def plot_run(workdir: Path, result: dict[str, Any]) -> list[str]:
    """Metric per evaluation (validation at each, test where evaluated: at the selected step,
    or at each with `selection="test"`), loss per step, and (Theseus runs) replacement rate
    per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    history = result["history"]
    if history:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        metric = result["metric"]
        ax.plot([h["epoch"] + 1 for h in history], [h["validation"][metric] for h in history], marker="o", label="validation")
        tested = [h for h in history if "test" in h]
        label = "test (the selection split)" if result["selection"] == "test" else "test (at the selected step)"
        ax.plot([h["epoch"] + 1 for h in tested], [h["test"][metric] for h in tested], "s", label=label)
        ax.set(xlabel="epoch", ylabel=metric, title=f"{result['name']}: {metric} per evaluation")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        atomic.save_figure(fig, workdir / "metric.png", dpi=110)
        plt.close(fig)
        files.append("metric.png")
    logged = read_steps(workdir)
    if logged:
        has_rate = "replace_rate" in logged[0]
        fig, axes = plt.subplots(1, 2 if has_rate else 1, figsize=(9 if has_rate else 5, 3.2), squeeze=False)
        axes[0, 0].plot([s["step"] for s in logged], [s["loss"] for s in logged], lw=0.8)
        axes[0, 0].set(xlabel="step", ylabel="training loss", title="loss per step")
        if has_rate:
            axes[0, 1].plot([s["step"] for s in logged], [s["replace_rate"] for s in logged], label="p")
            axes[0, 1].plot(
                [s["step"] for s in logged], [s["modules_replaced"] for s in logged], ".", ms=2, alpha=0.4, label="modules replaced"
            )
            axes[0, 1].set(xlabel="step", title="replacement rate p per step")
            axes[0, 1].legend(fontsize=8)
        for ax in axes.ravel():
            ax.grid(alpha=0.3)
        fig.tight_layout()
        atomic.save_figure(fig, workdir / "steps.png", dpi=110)
        plt.close(fig)
        files.append("steps.png")
    return files


def series_points(results: dict[str, Any], metric: str) -> dict[str, dict[str, Any]]:
    """Per downstream stage (its first seed's run): the validation metric at each evaluated
    training step, and the selected step with its value; what the series plot draws."""
    points = {}
    for stage, r in results.items():
        if r["objective"] != "classification" or not r["history"]:
            continue
        history = r["history"]
        selected = next((h for h in history if r["best"] and h["step"] == r["best"]["step"]), None)
        points[stage] = {
            "steps": [h["step"] for h in history],
            "values": [h["validation"][metric] for h in history],
            "selected": None if selected is None else (selected["step"], selected["validation"][metric]),
        }
    return points


def plot_series(
    workdir: Path, points: dict[str, dict[str, Any]], metric: str, name: str = "series_metric.png",
    title: str = "downstream validation {metric} per step\n(first seed; star: selected step)",
) -> list[str]:
    """Each downstream model's validation metric over training steps, on one axis whatever its
    epochs, step counts or early stop, its selected step starred (the series' plot and the
    screening's)."""
    if not points:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for stage, p in points.items():
        (line,) = ax.plot(p["steps"], p["values"], marker="o", ms=3, label=stage)
        if p["selected"] is not None:
            ax.plot(*p["selected"], "*", ms=12, color=line.get_color(), markeredgecolor="black")
    ax.set(xlabel="training step", ylabel=f"validation {metric}")
    ax.set_title(title.format(metric=metric), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7 if len(points) > 6 else 8)
    fig.tight_layout()
    atomic.save_figure(fig, workdir / name, dpi=110)
    plt.close(fig)
    return [name]


def seed_points(results: dict[str, Any], metric: str) -> dict[str, dict[str, Any]]:
    """Per downstream stage: the test metric of every seed, which seeds collapsed, the mean and
    its interval: what the seeds plot draws."""
    return {
        stage: {
            "seeds": [e["seed"] for e in r["per_seed"]],
            "values": [e["test"][metric] for e in r["per_seed"]],
            "collapsed": [bool(e["collapsed"]) for e in r["per_seed"]],
            "mean": r["test"][metric],
            "ci95": r.get("test_ci95"),
        }
        for stage, r in results.items()
        if r["objective"] == "classification" and r["per_seed"] and metric in r["test"]
    }


def plot_seeds(workdir: Path, points: dict[str, dict[str, Any]], metric: str) -> list[str]:
    """Each stage's test metric per seed (collapsed seeds in red) beside its mean and interval:
    one look shows whether a gap is the models or one bad seed."""
    if not any(len(p["values"]) > 1 for p in points.values()):
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 0.6 * len(points) + 1.6))
    for row, (stage, p) in enumerate(points.items()):
        colours = ["tab:red" if c else "tab:blue" for c in p["collapsed"]]
        ax.scatter(p["values"], [row] * len(p["values"]), c=colours, s=28, zorder=3)
        for value, seed in zip(p["values"], p["seeds"]):
            ax.annotate(str(seed), (value, row), xytext=(0, 5), textcoords="offset points", fontsize=7, ha="center")
        low, high = p["ci95"] or (p["mean"], p["mean"])
        ax.errorbar(p["mean"], row - 0.25, xerr=[[p["mean"] - low], [high - p["mean"]]], fmt="D", color="black", ms=4, capsize=3)
    ax.set_yticks(range(len(points)), list(points))
    ax.invert_yaxis()
    ax.set_xlabel(f"test {metric}")
    ax.set_title("dots: seeds (red: collapsed); diamond: mean, 95% interval", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    atomic.save_figure(fig, workdir / "series_seeds.png", dpi=110)
    plt.close(fig)
    return ["series_seeds.png"]



def plot_pareto(workdir: Path, points: dict[str, dict[str, list]], metric: str, teacher: str = "cls_predecessor") -> list[str]:
    """A depth sweep's test metric (seed mean, 95% interval) against measured inference
    speed-up over the teacher: one line per method through its depths, the teacher a point."""
    if not any(method != teacher for method in points):
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, p in points.items():
        errors = [[m - low for m, (low, _) in zip(p["mean"], p["ci95"])], [high - m for m, (_, high) in zip(p["mean"], p["ci95"])]]
        style = dict(fmt="*", ms=14, color="black") if method == teacher else dict(fmt="-o", ms=4)
        label = f"teacher ({method})" if method == teacher else method
        ax.errorbar(p["speedup"], p["mean"], yerr=errors, capsize=3, label=label, **style)
        for x, y, depth in zip(p["speedup"], p["mean"], p["depth"]):
            ax.annotate(f"{depth}L", (x, y), xytext=(4, 4), textcoords="offset points", fontsize=7)
    ax.set(xlabel="measured inference speed-up over the teacher (raw text to probabilities)", ylabel=f"test {metric}")
    ax.set_title("depth sweep: seed mean and 95% interval per depth", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic.save_figure(fig, workdir / "series_pareto.png", dpi=110)
    plt.close(fig)
    return ["series_pareto.png"]


@dataclasses.dataclass(frozen=True)
class Curve:
    """One seed's chosen run: its validation metric per evaluation, the selected one, and for a
    Theseus run the first step at which every module runs its successor (p = 1)."""

    seed: int
    steps: list[int]
    values: list[float]
    selected: tuple[int, float] | None
    successor_alone_from: int | None = None


def depth_curves(results: dict[str, Any], metric: str) -> dict[int, dict[str, list[Curve]]]:
    """A depth sweep's learning curves, deepest first: per depth and method (stage kind), each
    seed's chosen run read from its report.json (and steps.jsonl for p). Whether the gain over
    truncation shrinks with depth shows here: a student still rising at the cap, or one that
    fell when the successor took over."""
    curves: dict[int, dict[str, list[Curve]]] = {}
    for name, r in results.items():
        stage = find(name)
        if not (stage and stage.depth) or r["objective"] != "classification":
            continue
        for entry in r["per_seed"]:
            report = Path(entry["run_dir"]) / "report.json"
            if not report.exists():
                continue
            history = json.loads(report.read_text())["history"]
            values = {h["step"]: h["validation"][metric] for h in history}
            step = entry["selected_step"]
            alone = None  # the first step with p = 1 (Theseus runs log p per step)
            if stage.compresses:
                alone = next((s["step"] for s in read_steps(entry["run_dir"]) if s.get("replace_rate", 0.0) >= 1.0), None)
            curves.setdefault(stage.depth, {}).setdefault(stage.kind, []).append(Curve(
                seed=entry["seed"], steps=list(values), values=list(values.values()),
                selected=(step, values[step]) if step in values else None,
                successor_alone_from=alone,
            ))
    return dict(sorted(curves.items(), reverse=True))


def plot_depths(workdir: Path, curves: dict[int, dict[str, list[Curve]]], metric: str) -> list[str]:
    """A panel per depth: every seed's validation curve per method, its selected step starred,
    and where the Theseus runs' successor starts to train alone (dotted)."""
    if not curves:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = dict.fromkeys(method for by_method in curves.values() for method in by_method)
    colours = dict(zip(methods, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    fig, axes = plt.subplots(1, len(curves), figsize=(3.4 * len(curves) + 0.6, 3.4), sharey=True, squeeze=False)
    for ax, (depth, by_method) in zip(axes[0], curves.items()):
        for method, runs in by_method.items():
            for i, c in enumerate(runs):
                ax.plot(c.steps, c.values, ".-", ms=3, lw=1, alpha=0.8, color=colours[method], label=method if i == 0 else None)
                if c.selected is not None:
                    ax.plot(*c.selected, "*", ms=9, color=colours[method], markeredgecolor="black")
            alone = sorted({c.successor_alone_from for c in runs if c.successor_alone_from is not None})
            for j, step in enumerate(alone):
                ax.axvline(step, ls=":", color=colours[method], label=f"{method}: p = 1" if j == 0 else None)
        ax.set_title(f"{depth} layers", fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel(f"validation {metric}")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("depth sweep: validation per evaluation, every seed's chosen run (star: selected)", fontsize=10)
    fig.tight_layout()
    atomic.save_figure(fig, workdir / "series_depths.png", dpi=110)
    plt.close(fig)
    return ["series_depths.png"]
