"""Reports: `report.json` + `report.md` per run and per series, with PNG plots beside them
(drawn by `theseus_jax.experiments.plots`).

The comparison numbers are computed here from the recorded ones, never typed in:
CR = params(predecessor model) / params(successor model), RP = test metric(compressed) /
test metric(baseline) at the selected steps (per seed, then mean), fine-tuning speedup =
time-until-best(baseline) / time-until-best(compressed). Every report names the selection
protocol: "validation" (steps and learning rates chosen on validation data) or "test" (the
source study's protocol, which flatters every model).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import ml_collections

from theseus_jax import atomic
from theseus_jax.experiments import pareto, plots, summary
from theseus_jax.experiments.stages import find, present, title
from theseus_jax.throughput import Throughput

PROTOCOLS = {
    "validation": "steps, early stopping and learning rates chosen on validation data; test evaluated at the chosen steps",
    "test": "steps chosen on the TEST set (the source study's protocol; optimistic)",
}
COLLAPSED = f"its selected model gives one class at least {summary.COLLAPSE_SHARE:.0%} of its predictions"


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, default=str, allow_nan=True)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _pm(mean: float | None, std: float | None, digits: int = 4) -> str:
    return _fmt(mean, digits) + ("" if std is None else f" ± {std:.{digits}f}")


def _interval(ci: list[float] | None) -> str:
    return "n/a" if not ci else f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _selection_lines(result: dict[str, Any]) -> list[str]:
    """Protocol, the selected step's validation and test metric with its interval, collapse warning."""
    metric = result["metric"]
    lines = [f"- selection protocol: **{result['selection']}** ({PROTOCOLS[result['selection']]})"]
    std = result.get("test_std", {}).get(metric)
    lines.append(
        f"- {metric} at the selected step: validation {_pm(result['validation'].get(metric), result.get('validation_std', {}).get(metric))}, "
        f"test **{_pm(result['test'].get(metric), std)}**, test 95% bootstrap interval {_interval(result.get('test_ci95'))}"
    )
    if result.get("collapsed"):
        lines.append(f"- **WARNING: collapsed**: {COLLAPSED} (seeds {summary.collapsed_seeds(result)})")
    return lines


def _collapse_cell(entry: dict[str, Any]) -> str:
    shares = (entry.get("largest_class_share") or {}).values()
    return ("**yes**" if entry["collapsed"] else "no") + (f" ({max(shares):.1%})" if shares else "")


def _per_seed_table(result: dict[str, Any]) -> list[str]:
    metric = result["metric"]
    lines = [
        f"| seed | learning rate | selected step | validation {metric} | test {metric} | test 95% interval | "
        "collapsed (most-predicted class's share) |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in result["per_seed"]:
        lines.append(
            f"| {e['seed']} | {e['learning_rate']:g} | {e['selected_step']} | {_fmt(e['validation'].get(metric))} | "
            f"{_fmt(e['test'].get(metric))} | {_interval(e.get('test_ci95'))} | {_collapse_cell(e)} |"
        )
    return lines


def write_run_report(workdir: Path, result: dict[str, Any], cfg: ml_collections.ConfigDict) -> None:
    workdir = Path(workdir)
    figures = plots.plot_run(workdir, result)
    result = {**result, "plots": figures, "config": cfg.to_dict()}
    atomic.write_text(workdir / "report.json", _json(result))
    best = result["best"] or {}
    columns = _metric_columns(result)
    lines = [
        f"# {result['name']}: {title(result['name'])}",
        "",
        *_selection_lines(result),
        f"- selected: epoch {best.get('epoch', -1) + 1}, step {best.get('step')}, seed {result['seed']}, "
        f"learning rate {result['learning_rate']:g}, after {_fmt(result['time_until_best_s'], 1)} s "
        f"(total {_fmt(result['total_time_s'], 1)} s)",
        f"- parameters: {result['parameters']['exported_model']:,} in the exported model "
        f"({result['parameters']['exported_layers']} layers); best model in `{result['best_model_dir']}`",
        "",
        "| epoch | step | time s | validation loss | " + " | ".join(f"validation {c}" for c in columns)
        + f" | test {result['metric']} |",
        "|---|---|---|---|" + "---|" * (len(columns) + 1),
    ]
    for h in result["history"]:
        cells = [str(h["epoch"] + 1), str(h["step"]), _fmt(h["elapsed_s"], 1), _fmt(h["validation"]["loss"])]
        cells += [_fmt(h["validation"].get(c)) for c in columns]
        cells.append(_fmt(h["test"].get(result["metric"])) if "test" in h else "")
        lines.append("| " + " | ".join(cells) + " |")
    if result["data"]:
        lines += ["", "## Data", "", "```", _json(result["data"]), "```"]
    lines += [""] + [f"![{p}]({p})" for p in figures]
    atomic.write_text(workdir / "report.md", "\n".join(lines) + "\n")


def write_stage_report(workdir: Path, record: dict[str, Any], cfg: ml_collections.ConfigDict) -> None:
    """A stage over several seeds and/or learning rates: per-seed table, means, interval."""
    workdir = Path(workdir)
    atomic.write_text(workdir / "report.json", _json({**record, "config": cfg.to_dict()}))
    lines = [
        f"# {record['name']}: {title(record['name'])}, "
        f"{len(record['per_seed'])} seed(s), learning rates {', '.join(f'{r:g}' for r in record['learning_rates'])}",
        "",
        *_selection_lines(record),
        f"- the learning rate of each seed is the one whose run is best on {record['selection']}",
        f"- time until best {_fmt(record['time_until_best_s'], 1)} s, total {_fmt(record['total_time_s'], 1)} s "
        f"(means over seeds); every run of the stage: {_fmt(record['tuning_time_s'], 1)} s",
        "",
        *_per_seed_table(record),
        "",
    ]
    atomic.write_text(workdir / "report.md", "\n".join(lines) + "\n")


def _metric_columns(result: dict[str, Any]) -> list[str]:
    if result["objective"] == "mlm":
        return ["perplexity", "mlm_accuracy"]
    return ["macro_f1", "roc_auc", "accuracy"]


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def _labels(results: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """(key suffix, model word) of each stage compared with the predecessor: the students (the
    first present's keys unsuffixed: `retained_performance`, `successor_minus_truncated`), then
    the truncated baselines (`retained_performance_cls_truncated`), so its row is as complete."""
    students = present(results, student=True)
    labels = {s.name: ("", "successor") if i == 0 else (f"_{s.name}", s.name) for i, s in enumerate(students)}
    return labels | {t.name: (f"_{t.name}", t.name[4:]) for t in present(results, kind="cls_truncated")}


def _versus_predecessor(
    results: dict[str, Any], stage: str, suffix: str, cfg: ml_collections.ConfigDict
) -> dict[str, Any]:
    """CR, RP (per seed, mean, std, interval) and fine-tuning speedup of `stage` against
    `cls_predecessor`, its keys ending in `suffix`: the same numbers for every smaller model."""
    metric = cfg.cls.metric
    model, predecessor = results[stage], results.get("cls_predecessor")
    if predecessor is None:
        return {f"compression_ratio{suffix}": None, f"finetuning_speedup{suffix}": None}
    rp = summary.describe(summary.paired_by_seed(model, predecessor, metric, lambda a, b: _ratio(a, b)))
    return {
        f"compression_ratio{suffix}": _ratio(predecessor["parameters"]["exported_model"], model["parameters"]["exported_model"]),
        f"retained_performance{suffix}": rp["mean"],
        f"retained_performance_std{suffix}": rp["std"],
        f"retained_performance_per_seed{suffix}": rp["per_seed"],
        f"retained_performance_ci95{suffix}": summary.seed_interval(
            metric, [model, predecessor], lambda a, b: (a / b).mean(0), cfg
        ),
        f"finetuning_speedup{suffix}": _ratio(predecessor["time_until_best_s"], model["time_until_best_s"]),
    }


def compare(results: dict[str, Any], cfg: ml_collections.ConfigDict, seeds: list[int] | None = None) -> dict[str, Any]:
    """CR, RP and speedups from the stages' recorded numbers (test metric at the selected
    steps, means over seeds), with per-seed values, standard deviations and bootstrap intervals.

    The students are `cls_successor` (compressed during MLM), `cls_compress` (compressed during
    downstream training), their distilled variants and the distilled truncated model
    (the registry's students); the unsuffixed keys describe the first present. The truncated
    baseline's CR, RP and speedup end in `_cls_truncated`, so its row is as complete as the students'.
    RP is computed per seed and averaged; its interval resamples the test examples once for
    numerator and denominator. `<model>_minus_truncated` pairs the seeds of both stages.
    `seeds`: those the results cover (the configured ones by default; fewer while a
    seed-major series is under way).
    """
    metric = cfg.cls.metric
    test = lambda stage: results[stage]["test"].get(metric) if stage in results else None
    validation = lambda stage: results[stage]["validation"].get(metric) if stage in results else None
    time_to_best = lambda stage: results[stage]["time_until_best_s"] if stage in results else None
    out: dict[str, Any] = {
        "metric": metric,
        "selection": cfg.selection,
        "seeds": seeds or summary.parse_seeds(cfg.seeds),
        f"{metric}_predecessor": test("cls_predecessor"),
        f"validation_{metric}_predecessor": validation("cls_predecessor"),
    }
    for stage, (suffix, model) in _labels(results).items():
        versus = _versus_predecessor(results, stage, suffix, cfg)
        numbers = {f"{metric}_{model}": test(stage), f"validation_{metric}_{model}": validation(stage)}
        out.update({**versus, **numbers} if find(stage).student else {**numbers, **versus})
        truncated = find(stage).truncated
        if find(stage).student and truncated in results:
            diff = summary.describe(summary.paired_by_seed(results[stage], results[truncated], metric, lambda a, b: a - b))
            out[f"{model}_minus_truncated"] = diff["mean"]
            out[f"{model}_minus_truncated_std"] = diff["std"]
            out[f"{model}_minus_truncated_per_seed"] = diff["per_seed"]
            out[f"{model}_minus_truncated_positive_seeds"] = sum(1 for v in diff["per_seed"] if v["value"] > 0)
            interval = summary.seed_interval(
                metric, [results[stage], results[truncated]], lambda a, b: (a - b).mean(0), cfg
            )
            out[f"{model}_minus_truncated_ci95"] = interval
            out[f"{model}_vs_truncated"] = summary.verdict(
                diff["per_seed"], interval, summary.collapsed_seeds(results[truncated])
            )
    collapsed = [s for s in results if results[s].get("collapsed")]
    if collapsed:
        out["collapsed_stages"] = collapsed
    for stage in ("lm_baseline", "lm_compress"):
        if stage in results and results[stage]["best"]:
            out[f"perplexity_{stage}"] = results[stage]["test"]["perplexity"]
            out[f"validation_perplexity_{stage}"] = results[stage]["validation"]["perplexity"]
            out[f"time_until_best_s_{stage}"] = time_to_best(stage)
    if "lm_baseline" in results and "lm_compress" in results:
        out["lm_finetuning_speedup"] = _ratio(time_to_best("lm_baseline"), time_to_best("lm_compress"))
    return out


def comparison_table(results: dict[str, Any], comparison: dict[str, Any]) -> list[str]:
    """One row per downstream model, what a reader compares at a glance; every raw value
    (per seed, std, counts) stays in report.json's `comparison`."""
    metric = comparison["metric"]
    rows = [
        f"| model | layers | parameters (CR) | test {metric} mean ± std [95% interval] | retained (RP) [interval] | "
        "minus truncated [interval]: verdict | fine-tuning speedup |",
        "|---|---|---|---|---|---|---|",
    ]
    labels = _labels(results)
    for row in [s for s in present(results) if s.row]:
        stage, r = row.name, results[row.name]
        suffix, model = labels.get(stage, (None, None))
        flag = " **collapsed** in seeds " + str(summary.collapsed_seeds(r)) if r.get("collapsed") else ""
        cr = comparison.get(f"compression_ratio{suffix}") if suffix is not None else None
        test = f"{_pm(r['test'].get(metric), r.get('test_std', {}).get(metric))} {_interval(r.get('test_ci95'))}"
        rp = diff = speedup = ""
        if stage == "cls_predecessor":
            rp = speedup = "1"
        if suffix is not None:
            rp = _with_interval(comparison, f"retained_performance{suffix}", f"retained_performance_std{suffix}",
                                f"retained_performance_ci95{suffix}")
            speedup = _fmt(comparison.get(f"finetuning_speedup{suffix}"), 2)
            if row.kind == "cls_truncated":
                diff = "(the baseline)"
            elif f"{model}_minus_truncated" in comparison:
                positive = comparison[f"{model}_minus_truncated_positive_seeds"]
                seeds = len(comparison[f"{model}_minus_truncated_per_seed"])
                diff = (
                    _with_interval(comparison, f"{model}_minus_truncated", f"{model}_minus_truncated_std",
                                   f"{model}_minus_truncated_ci95", signed=True)
                    + f": **{comparison[f'{model}_vs_truncated']}** ({positive} of {seeds} seeds positive)"
                )
        rows.append(
            f"| {row.row} ([`{stage}`]({stage}/report.md)){flag} | {r['parameters']['exported_layers']} | "
            f"{r['parameters']['exported_model']:,}{'' if cr is None else f' ({cr:.2f})'} | {test} | {rp} | {diff} | {speedup} |"
        )
    lm = [f"{stage} {_fmt(comparison[f'perplexity_{stage}'], 2)}" for stage in ("lm_baseline", "lm_compress")
          if f"perplexity_{stage}" in comparison]
    notes = [
        "",
        f"CR = parameters(predecessor) / parameters(model); RP = test {metric}(model) / test {metric}(predecessor), per "
        "seed then averaged; minus truncated = test metric difference to the truncated predecessor, paired by seed, "
        "called better / worse only when every seed and the interval agree (never better than a collapsed baseline); "
        "fine-tuning speedup = time until the selected step, predecessor / model. Inference speed is not measured by a "
        "series: `python -m benchmarks.bench_inference --predecessor P --successor S`. Per-seed values: `report.json`.",
    ]
    if lm:
        speedup = comparison.get("lm_finetuning_speedup")
        notes.append(f"LM stages, test perplexity: {', '.join(lm)}"
                     + ("" if speedup is None else f"; LM fine-tuning speedup {_fmt(speedup, 2)}") + ".")
    return rows + notes


def per_seed_table(results: dict[str, Any], comparison: dict[str, Any]) -> list[str]:
    """Each downstream model's test metric in every seed (collapsed seeds marked), with its
    paired difference to the truncated predecessor in that seed: what the comparison's
    mean ± std sums up."""
    metric, seeds = comparison["metric"], comparison["seeds"]
    labels = _labels(results)
    rows = [f"| model | {' | '.join(f'seed {s}' for s in seeds)} |", "|---|" + "---|" * len(seeds)]
    for stage in [s.name for s in present(results) if s.row]:
        by_seed = {e["seed"]: e for e in results[stage]["per_seed"]}
        paired = comparison.get(f"{labels[stage][1]}_minus_truncated_per_seed", []) if stage in labels else []
        diffs = {d["seed"]: d["value"] for d in paired}
        cells = [
            "" if s not in by_seed else _fmt(by_seed[s]["test"].get(metric))
            + (f" ({diffs[s]:+.4f})" if s in diffs else "") + (" **collapsed**" if by_seed[s]["collapsed"] else "")
            for s in seeds
        ]
        rows.append(f"| `{stage}` | {' | '.join(cells)} |")
    return rows


def _with_interval(comparison: dict[str, Any], mean: str, std: str, ci95: str, signed: bool = False) -> str:
    """`mean ± std [low, high]` of comparison keys (`+` shown on differences)."""
    value = comparison.get(mean)
    text = _pm(value, comparison.get(std))
    if signed and value is not None and value > 0:
        text = "+" + text
    return f"{text} {_interval(comparison.get(ci95))}"


def write_series_report(
    workdir: Path, results: dict[str, Any], comparison: dict[str, Any], cfg: ml_collections.ConfigDict,
    speeds: dict[str, Throughput] | None = None,
) -> None:
    """`speeds` (a depth sweep's measured speeds, {} before they are measured) adds the sweep's
    Pareto table, figure and sentence."""
    workdir = Path(workdir)
    metric = comparison["metric"]
    figures = plots.plot_series(workdir, plots.series_points(results, metric), metric)
    figures += plots.plot_seeds(workdir, plots.seed_points(results, metric), metric)
    sweep = None if speeds is None else pareto.rows(sweep_models(results, comparison, speeds))
    if sweep is not None:
        figures += plots.plot_pareto(workdir, pareto.points(sweep), metric)
    extra = {} if sweep is None else {"sweep": {"rows": [r.to_json() for r in sweep],
                                                "throughput": {name: t.to_json() for name, t in speeds.items()}}}
    atomic.write_text(
        workdir / "report.json",
        _json({"comparison": comparison, "stages": results, **extra, "plots": figures, "config": cfg.to_dict()}),
    )
    seeds = comparison["seeds"]
    lines = [
        "# Theseus Compression series",
        "",
        f"Selection protocol: **{cfg.selection}** ({PROTOCOLS[cfg.selection]}). Seeds: {', '.join(map(str, seeds))}; "
        f"values are means ± standard deviation over seeds (n - 1), intervals are 95% bootstrap intervals "
        f"({cfg.bootstrap.resamples} resamples of the test examples, seed {cfg.bootstrap.seed}).",
        "",
        "| stage | what | metric | validation | test | test 95% interval | learning rate | selected step | "
        "time until best s | total s | parameters | layers |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for stage, r in results.items():
        m = r["metric"]
        flag = " **COLLAPSED**" if r.get("collapsed") else ""
        lines.append(
            f"| [{stage}]({stage}/report.md){flag} | {title(stage)} | {m} | "
            f"{_pm(r['validation'].get(m), r.get('validation_std', {}).get(m))} | {_pm(r['test'].get(m), r.get('test_std', {}).get(m))} | "
            f"{_interval(r.get('test_ci95'))} | {', '.join(format(e['learning_rate'], 'g') for e in r['per_seed'])} | "
            f"{', '.join(str(e['selected_step']) for e in r['per_seed'])} | {_fmt(r['time_until_best_s'], 1)} | "
            f"{_fmt(r['total_time_s'], 1)} | {r['parameters']['exported_model']:,} | {r['parameters']['exported_layers']} |"
        )
    for stage in [s for s in results if results[s].get("collapsed")]:
        lines += ["", f"**WARNING**: `{stage}` collapsed: {COLLAPSED} "
                  f"(seeds {summary.collapsed_seeds(results[stage])})."]
    lines += ["", "## Comparison", "", *comparison_table(results, comparison), ""]
    if len(seeds) > 1:
        lines += [f"Test {metric} per seed (in brackets: minus the truncated predecessor's in that seed):", "",
                  *per_seed_table(results, comparison), ""]
    if sweep is not None:
        lines += ["## Depth sweep", "", *pareto_table(sweep, metric), "", *throughput_table(speeds), ""]
    lines += [f"![{p}]({p})" for p in figures]
    atomic.write_text(workdir / "report.md", "\n".join(lines) + "\n")


def sweep_models(results: dict[str, Any], comparison: dict[str, Any], speeds: dict[str, Throughput]) -> list[pareto.SweepModel]:
    """The teacher and every depth variant of a depth sweep as per-seed records: test metric from
    the stage records, RP and the paired difference to the truncated model of its depth from the
    comparison, the measured speed-up."""
    metric, labels, models = comparison["metric"], _labels(results), []
    per_seed = lambda key: {v["seed"]: v["value"] for v in comparison.get(key) or []}
    for name, r in results.items():
        stage = find(name)
        if name != pareto.TEACHER and not (stage and stage.depth):
            continue
        suffix, model = labels.get(name, ("", ""))
        test = {e["seed"]: e["test"][metric] for e in r["per_seed"]}
        teacher = name == pareto.TEACHER
        diff = per_seed(f"{model}_minus_truncated_per_seed") if stage.student else {}
        truncated = results.get(stage.truncated) if stage.student else None
        models.append(pareto.SweepModel(
            stage=name, method=stage.kind, depth=r["parameters"]["exported_layers"], parameters=r["parameters"]["exported_model"],
            test=test, test_ci95=r.get("test_ci95"),
            retained={seed: 1.0 for seed in test} if teacher else per_seed(f"retained_performance_per_seed{suffix}"),
            retained_ci95=[1.0, 1.0] if teacher else comparison.get(f"retained_performance_ci95{suffix}"),
            minus_truncated=diff, minus_truncated_ci95=comparison.get(f"{model}_minus_truncated_ci95") if diff else None,
            truncated_collapsed=tuple(summary.collapsed_seeds(truncated)) if truncated else (),
            speedup=speeds[name].speedup if name in speeds else None,
        ))
    return models


def throughput_table(speeds: dict[str, Throughput]) -> list[str]:
    """The measured speeds behind the speed-up column (or why there are none yet)."""
    if not speeds:
        return ["Speed-ups: measured once the series is done (the first seed's exported models on the test texts)."]
    first = next(iter(speeds.values()))
    lines = [
        f"Measured inference speed, raw text to probabilities (`theseus_jax.throughput`): the first seed's exported "
        f"models on the {first.texts} test texts, batch size {first.batch_size}, {first.threads} threads, all in one "
        f"process, median of {first.rounds} passes each; speed-up = the teacher's time / the model's.",
        "",
        "| model | layers | texts/s | ms per batch | speed-up | peak memory GiB (process) |",
        "|---|---|---|---|---|---|",
    ]
    return lines + [f"| `{t.name}` | {t.layers} | {t.texts_per_second:.1f} | {t.ms_per_batch:.2f} | {_fmt(t.speedup, 2)} | "
                    f"{t.peak_rss_bytes / 2**30:.2f} |" for t in speeds.values()]


def pareto_table(table: list[pareto.ParetoRow], metric: str) -> list[str]:
    """A depth sweep's rows (`pareto.rows`), then the sentence a user wants."""
    lines = [
        f"| depth | model | parameters | measured speed-up | test {metric} mean ± std [95% interval] | "
        "RP [interval] | minus truncated at that depth [interval]: verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in table:
        diff = "" if r.minus_truncated is None else (
            ("+" if (r.minus_truncated.mean or 0) > 0 else "") + _pm(r.minus_truncated.mean, r.minus_truncated.std)
            + f" {_interval(r.minus_truncated.ci95)}: **{r.verdict}** ({r.positive_seeds} of "
            f"{len(r.minus_truncated.per_seed)} seeds positive)"
        )
        lines.append(
            f"| {r.depth} | [`{r.stage}`]({r.stage}/report.md) | {r.parameters:,} | "
            f"{'not measured' if r.speedup is None else f'{r.speedup:.2f}x'} | "
            f"{_pm(r.test.mean, r.test.std)} {_interval(r.test.ci95)} | "
            f"{_pm(r.retained.mean, r.retained.std, 3)} {_interval(r.retained.ci95)} | {diff} |"
        )
    return lines + ["", pareto.sentence(table)]
