"""Reports: `report.json` + `report.md` per run and per series, with PNG plots beside them.

The comparison numbers are computed here from the recorded ones, never typed in:
CR = params(predecessor model) / params(successor model), RP = metric(compressed) /
metric(baseline), fine-tuning speedup = time-until-best(baseline) / time-until-best(compressed).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import ml_collections

from theseus_jax import atomic

STAGE_TITLES = {
    "lm_baseline": "LM fine-tuning, predecessor",
    "lm_compress": "LM fine-tuning with Theseus Compression",
    "cls_predecessor": "downstream, predecessor",
    "cls_successor": "downstream, compressed successor",
    "cls_truncated": "downstream, truncated predecessor (bottom n layers)",
    "cls_compress": "downstream with Theseus Compression",
}


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, default=str, allow_nan=True)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def read_steps(workdir: Path) -> list[dict[str, float]]:
    path = Path(workdir) / "steps.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def plot_run(workdir: Path, result: dict[str, Any]) -> list[str]:
    """Metric per evaluation, loss per step, and (Theseus runs) replacement rate per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    history = result["history"]
    if history:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot([h["epoch"] + 1 for h in history], [h[result["metric"]] for h in history], marker="o")
        ax.set(xlabel="epoch", ylabel=result["metric"], title=f"{result['name']}: {result['metric']} per evaluation")
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


def write_run_report(workdir: Path, result: dict[str, Any], cfg: ml_collections.ConfigDict) -> None:
    workdir = Path(workdir)
    plots = plot_run(workdir, result)
    result = {**result, "plots": plots, "config": cfg.to_dict()}
    atomic.write_text(workdir / "report.json", _json(result))
    best = result["best"] or {}
    lines = [
        f"# {result['name']}: {STAGE_TITLES.get(result['name'], result['pipeline'])}",
        "",
        f"- best {result['metric']}: **{_fmt(best.get(result['metric']))}** at epoch {best.get('epoch', -1) + 1}, "
        f"step {best.get('step')}, after {_fmt(result['time_until_best_s'], 1)} s (total {_fmt(result['total_time_s'], 1)} s)",
        f"- parameters: {result['parameters']['exported_model']:,} in the exported model "
        f"({result['parameters']['exported_layers']} layers); best model in `{result['best_model_dir']}`",
        "",
        "| epoch | step | time s | loss | " + " | ".join(_metric_columns(result)) + " |",
        "|---|---|---|---|" + "---|" * len(_metric_columns(result)),
    ]
    for h in result["history"]:
        cells = [str(h["epoch"] + 1), str(h["step"]), _fmt(h["elapsed_s"], 1), _fmt(h["loss"])]
        lines.append("| " + " | ".join(cells + [_fmt(h.get(c)) for c in _metric_columns(result)]) + " |")
    if result["data"]:
        lines += ["", "## Data", "", "```", _json(result["data"]), "```"]
    lines += [""] + [f"![{p}]({p})" for p in plots]
    atomic.write_text(workdir / "report.md", "\n".join(lines) + "\n")


def _metric_columns(result: dict[str, Any]) -> list[str]:
    if result["objective"] == "mlm":
        return ["perplexity", "mlm_accuracy"]
    return ["macro_f1", "roc_auc", "accuracy"]


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def compare(results: dict[str, Any], cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """CR, RP and speedups from the stages' recorded numbers.

    The compressed model is `cls_successor` (compressed during MLM) and/or `cls_compress`
    (compressed during downstream training); the unsuffixed keys describe the first present.
    """
    metric = cfg.cls.metric
    best = lambda stage: results[stage]["best"][metric] if stage in results and results[stage]["best"] else None
    time_to_best = lambda stage: results[stage]["time_until_best_s"] if stage in results else None
    params = lambda stage: results[stage]["parameters"]["exported_model"] if stage in results else None
    baseline = "cls_predecessor"
    out: dict[str, Any] = {"metric": metric, f"{metric}_predecessor": best(baseline)}
    compressed = [s for s in ("cls_successor", "cls_compress") if s in results]
    for i, stage in enumerate(compressed):
        suffix = "" if i == 0 else f"_{stage}"
        out[f"compression_ratio{suffix}"] = _ratio(params(baseline), params(stage))
        out[f"retained_performance{suffix}"] = _ratio(best(stage), best(baseline))
        out[f"finetuning_speedup{suffix}"] = _ratio(time_to_best(baseline), time_to_best(stage))
        out[f"{metric}_{'successor' if i == 0 else stage}"] = best(stage)
        if "cls_truncated" in results and best(stage) is not None:
            out[f"{'successor' if i == 0 else stage}_beats_truncated"] = best(stage) > best("cls_truncated")
    if "cls_truncated" in results:
        out[f"{metric}_truncated"] = best("cls_truncated")
    for stage in ("lm_baseline", "lm_compress"):
        if stage in results and results[stage]["best"]:
            out[f"perplexity_{stage}"] = results[stage]["best"]["perplexity"]
            out[f"time_until_best_s_{stage}"] = time_to_best(stage)
    if "lm_baseline" in results and "lm_compress" in results:
        out["lm_finetuning_speedup"] = _ratio(time_to_best("lm_baseline"), time_to_best("lm_compress"))
    return out


def plot_series(workdir: Path, results: dict[str, Any], metric: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cls_stages = [s for s in results if results[s]["objective"] == "classification" and results[s]["history"]]
    if not cls_stages:
        return []
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for stage in cls_stages:
        history = results[stage]["history"]
        ax.plot([h["epoch"] + 1 for h in history], [h[metric] for h in history], marker="o", label=stage)
    ax.set(xlabel="epoch", ylabel=metric, title=f"downstream {metric} per epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic.save_figure(fig, workdir / "series_metric.png", dpi=110)
    plt.close(fig)
    return ["series_metric.png"]


def write_series_report(
    workdir: Path, results: dict[str, Any], comparison: dict[str, Any], cfg: ml_collections.ConfigDict
) -> None:
    workdir = Path(workdir)
    plots = plot_series(workdir, results, comparison["metric"])
    atomic.write_text(
        workdir / "report.json",
        _json({"comparison": comparison, "stages": results, "plots": plots, "config": cfg.to_dict()}),
    )
    metric = comparison["metric"]
    lines = [
        "# Theseus Compression series",
        "",
        "| stage | what | best | metric | time until best s | total s | parameters | layers |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for stage, r in results.items():
        best = r["best"] or {}
        lines.append(
            f"| [{stage}]({stage}/report.md) | {STAGE_TITLES.get(stage, stage)} | {_fmt(best.get(r['metric']))} | {r['metric']} | "
            f"{_fmt(r['time_until_best_s'], 1)} | {_fmt(r['total_time_s'], 1)} | {r['parameters']['exported_model']:,} | "
            f"{r['parameters']['exported_layers']} |"
        )
    lines += ["", "## Comparison", "", "| quantity | value |", "|---|---|"]
    lines += [f"| {key} | {_fmt(value)} |" for key, value in comparison.items()]
    lines += [
        "",
        f"CR = params(predecessor) / params(successor); RP = {metric}(successor) / {metric}(predecessor); "
        "fine-tuning speedup = time until best (predecessor) / time until best (successor).",
        "",
    ]
    lines += [f"![{p}]({p})" for p in plots]
    atomic.write_text(workdir / "report.md", "\n".join(lines) + "\n")
