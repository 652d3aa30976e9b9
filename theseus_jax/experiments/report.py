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

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Iterable

import ml_collections

from theseus_jax import atomic
from theseus_jax.experiments import pareto, plots, summary
from theseus_jax.experiments.stages import find, present, title
from theseus_jax.throughput import Throughput

PROTOCOLS = {
    "validation": "steps, early stopping and learning rates chosen on validation data; test evaluated at the chosen steps",
    "test": "steps chosen on the TEST set (the source study's protocol; optimistic)",
}
RATE_CHOICE = {  # config.rate_choice: how a stage's seeds got their learning rates
    "per_seed": "the learning rate of each seed is the one whose run is best on {on}",
    "first_seed": "the learning rate is the one whose run is best on {on} in seed {first}; the later seeds ran only "
                  "that rate (rate_choice=first_seed)",
}


def _rate_choice(cfg: ml_collections.ConfigDict, first: int) -> str:
    return RATE_CHOICE[cfg.get("rate_choice", "per_seed")].format(first=first, on=cfg.selection)


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
        "collapsed (most-predicted class's share) | peaked at the cap |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in result["per_seed"]:
        peaked = {True: "yes", False: "no"}.get(e.get(summary.PEAKED), "n/a")
        lines.append(
            f"| {e['seed']} | {e['learning_rate']:g} | {e['selected_step']} | {_fmt(e['validation'].get(metric))} | "
            f"{_fmt(e['test'].get(metric))} | {_interval(e.get('test_ci95'))} | {_collapse_cell(e)} | {peaked} |"
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
        "- peak resident memory of the process by the run's end: "
        + (f"{result['peak_rss_bytes'] / 1e9:.2f} GB" if result.get("peak_rss_bytes") else "not recorded"),
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
        "- " + _rate_choice(cfg, record["seeds"][0]),
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


def _labels(stages: Iterable[str]) -> dict[str, tuple[str, str]]:
    """(key suffix, model word) of each stage compared with the predecessor in report.json: the
    students (the first present's keys unsuffixed: `retained_performance`,
    `successor_minus_truncated`), then the truncated baselines (`retained_performance_cls_truncated`)."""
    students = present(stages, student=True)
    labels = {s.name: ("", "successor") if i == 0 else (f"_{s.name}", s.name) for i, s in enumerate(students)}
    return labels | {t.name: (f"_{t.name}", t.name[4:]) for t in present(stages, kind="cls_truncated")}


@dataclasses.dataclass
class Spread:
    """A statistic over seeds: mean and standard deviation (None where undefined), the per-seed
    values, the bootstrap interval."""

    mean: float | None
    std: float | None
    per_seed: list[dict[str, Any]]
    ci95: list[float] | None

    def to_json(self, stem: str, suffix: str) -> dict[str, Any]:
        return dict(zip(self.keys(stem, suffix), vars(self).values()))

    @classmethod
    def from_json(cls, data: dict[str, Any], stem: str, suffix: str) -> Spread | None:
        keys = cls.keys(stem, suffix)
        return cls(*(data.get(key) for key in keys)) if keys[0] in data else None

    @property
    def positive_seeds(self) -> int:
        return sum(1 for v in self.per_seed if v["value"] is not None and v["value"] > 0)

    @staticmethod
    def keys(stem: str, suffix: str) -> list[str]:  # `<stem><suffix>`, `<stem>_std<suffix>`, ...
        return [stem + ("" if part == "mean" else f"_{part}") + suffix for part in ("mean", "std", "per_seed", "ci95")]


@dataclasses.dataclass
class Versus:
    """A smaller model against the predecessor (CR, RP, fine-tuning speedup; None without it)
    and, a student, against the truncated model of its depth (paired difference, verdict)."""

    test: float | None
    validation: float | None
    compression_ratio: float | None = None
    finetuning_speedup: float | None = None
    retained: Spread | None = None
    minus_truncated: Spread | None = None
    vs_truncated: str | None = None

    def to_json(self, metric: str, suffix: str, model: str) -> dict[str, Any]:
        out = {f"compression_ratio{suffix}": self.compression_ratio, f"finetuning_speedup{suffix}": self.finetuning_speedup,
               f"{metric}_{model}": self.test, f"validation_{metric}_{model}": self.validation}
        if self.retained:
            out |= self.retained.to_json("retained_performance", suffix)
        if self.minus_truncated:
            out |= self.minus_truncated.to_json(f"{model}_minus_truncated", "") | {
                f"{model}_minus_truncated_positive_seeds": self.minus_truncated.positive_seeds,
                f"{model}_vs_truncated": self.vs_truncated}
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], metric: str, suffix: str, model: str) -> Versus:
        return cls(
            data.get(f"{metric}_{model}"), data.get(f"validation_{metric}_{model}"), data.get(f"compression_ratio{suffix}"),
            data.get(f"finetuning_speedup{suffix}"), Spread.from_json(data, "retained_performance", suffix),
            Spread.from_json(data, f"{model}_minus_truncated", ""), data.get(f"{model}_vs_truncated"),
        )


LM_STAGES, LM_NUMBERS = ("lm_baseline", "lm_compress"), ("perplexity", "validation_perplexity", "time_until_best_s")


@dataclasses.dataclass
class Comparison:
    """A series' comparison (report.json's `comparison`, whose keys `to_json` and `from_json` keep)."""

    metric: str
    selection: str
    seeds: list[int]
    predecessor: Versus = dataclasses.field(default_factory=lambda: Versus(None, None))  # its test, validation metric
    models: dict[str, Versus] = dataclasses.field(default_factory=dict)  # by stage: students, then truncated
    collapsed_stages: list[str] = dataclasses.field(default_factory=list)
    lm: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)  # by LM stage: LM_NUMBERS
    lm_finetuning_speedup: float | None = None

    def to_json(self) -> dict[str, Any]:
        metric = self.metric
        out = {"metric": metric, "selection": self.selection, "seeds": self.seeds, f"{metric}_predecessor": self.predecessor.test,
               f"validation_{metric}_predecessor": self.predecessor.validation}
        for stage, (suffix, model) in _labels(self.models).items():
            out |= self.models[stage].to_json(metric, suffix, model)
        out |= {"collapsed_stages": self.collapsed_stages} if self.collapsed_stages else {}
        out |= {f"{key}_{stage}": value for stage, numbers in self.lm.items() for key, value in numbers.items()}
        return out | ({} if self.lm_finetuning_speedup is None else {"lm_finetuning_speedup": self.lm_finetuning_speedup})

    def successor(self) -> Versus | None:
        """The first student's comparison (report.json's unsuffixed keys); None in a series without one."""
        return next((self.models[stage.name] for stage in present(self.models, student=True)), None)

    @classmethod
    def from_json(cls, data: dict[str, Any], stages: Iterable[str]) -> Comparison:
        """`stages`: the series' stage names (report.json's `stages`), which the keys' words stand for."""
        metric = data["metric"]
        return cls(
            metric, data["selection"], data["seeds"],
            Versus(data.get(f"{metric}_predecessor"), data.get(f"validation_{metric}_predecessor")),
            {stage: Versus.from_json(data, metric, *label) for stage, label in _labels(stages).items()},
            data.get("collapsed_stages", []),
            {s: {key: data[f"{key}_{s}"] for key in LM_NUMBERS} for s in LM_STAGES if f"perplexity_{s}" in data},
            data.get("lm_finetuning_speedup"),
        )


def _versus(results: dict[str, Any], name: str, cfg: ml_collections.ConfigDict) -> Versus:
    """CR, RP (per seed, mean, std, interval) and fine-tuning speedup of a stage against
    `cls_predecessor` and, a student, its paired difference to the truncated model of its depth."""
    metric, stage = cfg.cls.metric, find(name)
    model, predecessor, truncated = results[name], results.get("cls_predecessor"), results.get(stage.truncated)
    versus = Versus(model["test"].get(metric), model["validation"].get(metric))
    if predecessor is not None:
        versus.compression_ratio = _ratio(predecessor["parameters"]["exported_model"], model["parameters"]["exported_model"])
        versus.finetuning_speedup = _ratio(predecessor["time_until_best_s"], model["time_until_best_s"])
        rp = summary.describe(summary.paired_by_seed(model, predecessor, metric, _ratio))
        versus.retained = Spread(**rp, ci95=None if rp["mean"] is None else summary.seed_interval(
            metric, [model, predecessor], lambda a, b: (a / b).mean(0), cfg))
    if stage.student and truncated is not None:
        diff = summary.describe(summary.paired_by_seed(model, truncated, metric, lambda a, b: a - b))
        versus.minus_truncated = Spread(**diff, ci95=summary.seed_interval(
            metric, [model, truncated], lambda a, b: (a - b).mean(0), cfg))
        versus.vs_truncated = summary.verdict(diff["per_seed"], versus.minus_truncated.ci95, summary.collapsed_seeds(truncated))
    return versus


def compare(results: dict[str, Any], cfg: ml_collections.ConfigDict, seeds: list[int] | None = None) -> Comparison:
    """CR, RP and speedups from the stages' recorded numbers (test metric at the selected
    steps, means over seeds), with per-seed values, standard deviations and bootstrap intervals.

    Every student of the registry present (`cls_successor`, `cls_compress`, their distilled
    variants, the distilled truncated model) and every truncated baseline is compared with the
    predecessor; each student also with the truncated model of its depth, paired by seed. RP is
    computed per seed and averaged (undefined when a seed's predecessor scores 0); its interval
    resamples the test examples once for numerator and denominator. `seeds`: those the results
    cover (the configured ones by default; fewer while a seed-major series is under way).
    """
    metric, predecessor = cfg.cls.metric, results.get("cls_predecessor", {"test": {}, "validation": {}})
    comparison = Comparison(
        metric, cfg.selection, seeds or summary.parse_seeds(cfg.seeds),
        Versus(predecessor["test"].get(metric), predecessor["validation"].get(metric)),
        {stage: _versus(results, stage, cfg) for stage in _labels(results)},
        [s for s in results if results[s].get("collapsed")],
        {s: dict(zip(LM_NUMBERS, (results[s]["test"]["perplexity"], results[s]["validation"]["perplexity"],
                                  results[s]["time_until_best_s"]))) for s in LM_STAGES if s in results and results[s]["best"]},
    )
    if all(s in results for s in LM_STAGES):
        comparison.lm_finetuning_speedup = _ratio(*(results[s]["time_until_best_s"] for s in LM_STAGES))
    return comparison


def comparison_table(results: dict[str, Any], comparison: Comparison, speeds_below: bool = False) -> list[str]:
    """One row per downstream model, what a reader compares at a glance; every raw value
    (per seed, std, counts) stays in report.json's `comparison`. `speeds_below`: the report's
    depth sweep section gives the measured inference speeds."""
    metric, compared = comparison.metric, [s for s in present(results) if s.row]
    peaks = {s.name: summary.peaked_at_cap(results[s.name]) for s in compared}
    shown = any(p is not None for p in peaks.values())  # reports written before the flag lack the column
    rows = [
        f"| model | layers | parameters (CR) | test {metric} mean ± std [95% interval] | retained (RP) [interval] | "
        "minus truncated [interval]: verdict | fine-tuning speedup |" + (" peaked at the cap |" if shown else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if shown else ""),
    ]
    for row in compared:
        stage, r, versus = row.name, results[row.name], comparison.models.get(row.name)
        flag = " **collapsed** in seeds " + str(summary.collapsed_seeds(r)) if r.get("collapsed") else ""
        cr = versus.compression_ratio if versus else None
        test = f"{_pm(r['test'].get(metric), r.get('test_std', {}).get(metric))} {_interval(r.get('test_ci95'))}"
        rp = diff = speedup = ""
        if stage == "cls_predecessor":
            rp = speedup = "1"
        if versus:
            rp, speedup = _spread(versus.retained), _fmt(versus.finetuning_speedup, 2)
            if row.kind == "cls_truncated":
                diff = "(the baseline)"
            elif versus.minus_truncated:
                minus = versus.minus_truncated
                diff = (_spread(minus, signed=True) + f": **{versus.vs_truncated}** "
                        f"({minus.positive_seeds} of {len(minus.per_seed)} seeds positive)")
        rows.append(
            f"| {row.row} ([`{stage}`]({stage}/report.md)){flag} | {r['parameters']['exported_layers']} | "
            f"{r['parameters']['exported_model']:,}{'' if cr is None else f' ({cr:.2f})'} | {test} | {rp} | {diff} | {speedup} |"
            + (f" {_peaks(peaks[stage])} |" if shown else "")
        )
    lm = [f"{stage} {_fmt(numbers['perplexity'], 2)}" for stage, numbers in comparison.lm.items()]
    notes = [
        "",
        f"CR = parameters(predecessor) / parameters(model); RP = test {metric}(model) / test {metric}(predecessor), per "
        "seed then averaged; minus truncated = test metric difference to the truncated predecessor, paired by seed, "
        "called better / worse only when every seed and the interval agree (never better than a collapsed baseline); "
        "fine-tuning speedup = time until the selected step, predecessor / model. "
        + ("Measured inference speed: the depth sweep below. " if speeds_below else
           "Inference speed is not measured by a series: `python -m benchmarks.bench_inference --predecessor P "
           "--successor S`. ")
        + "Per-seed values: `report.json`.",
    ]
    if shown:
        notes.append(PEAKED_NOTE)
    if lm:
        speedup = comparison.lm_finetuning_speedup
        notes.append(f"LM stages, test perplexity: {', '.join(lm)}"
                     + ("" if speedup is None else f"; LM fine-tuning speedup {_fmt(speedup, 2)}") + ".")
    return rows + notes


def per_seed_table(results: dict[str, Any], comparison: Comparison) -> list[str]:
    """Each downstream model's test metric in every seed (collapsed seeds marked), with its
    paired difference to the truncated predecessor in that seed: what the comparison's
    mean ± std sums up."""
    metric, seeds = comparison.metric, comparison.seeds
    rows = [f"| model | {' | '.join(f'seed {s}' for s in seeds)} |", "|---|" + "---|" * len(seeds)]
    for stage in [s.name for s in present(results) if s.row]:
        by_seed = {e["seed"]: e for e in results[stage]["per_seed"]}
        versus = comparison.models.get(stage)
        paired = versus.minus_truncated.per_seed if versus and versus.minus_truncated else []
        diffs = {d["seed"]: d["value"] for d in paired}
        cells = [
            "" if s not in by_seed else _fmt(by_seed[s]["test"].get(metric))
            + (f" ({diffs[s]:+.4f})" if s in diffs else "") + (" **collapsed**" if by_seed[s]["collapsed"] else "")
            for s in seeds
        ]
        rows.append(f"| `{stage}` | {' | '.join(cells)} |")
    return rows


PEAKED_NOTE = (
    "Peaked at the cap: of the model's chosen runs (per seed, the run of the learning rate chosen for that seed), how "
    "many had their selected step at their last evaluation and trained to the cap (`epochs`, `max_steps`), not stopped "
    "early: the budget, not early stopping, ended them while still at their best, so they may have stopped while still "
    "improving."
)


def _peaks(peaked: tuple[int, int] | None) -> str:
    return "n/a" if peaked is None else f"{peaked[0]} of {peaked[1]}"


def _spread(spread: Spread | None, signed: bool = False) -> str:
    """`mean ± std [low, high]` (`+` shown on differences)."""
    value = spread.mean if spread else None
    text = _pm(value, spread.std if spread else None)
    return f"{'+' if signed and value is not None and value > 0 else ''}{text} {_interval(spread.ci95 if spread else None)}"


def write_series_report(
    workdir: Path, results: dict[str, Any], comparison: Comparison, cfg: ml_collections.ConfigDict,
    speeds: dict[str, Throughput] | None = None,
) -> None:
    """`speeds` (a depth sweep's measured speeds, {} before they are measured) adds the sweep's
    Pareto table, figure and sentence."""
    workdir = Path(workdir)
    metric = comparison.metric
    figures = plots.plot_series(workdir, plots.series_points(results, metric), metric)
    figures += plots.plot_seeds(workdir, plots.seed_points(results, metric), metric)
    sweep = None if speeds is None else pareto.rows(sweep_models(results, comparison, speeds))
    if sweep is not None:
        figures += plots.plot_pareto(workdir, pareto.points(sweep), metric)
        figures += plots.plot_depths(workdir, plots.depth_curves(results, metric), metric)
    extra = {} if sweep is None else {"sweep": {"rows": [r.to_json() for r in sweep],
                                                "throughput": {name: t.to_json() for name, t in speeds.items()}}}
    atomic.write_text(
        workdir / "report.json",
        _json({"comparison": comparison.to_json(), "stages": results, **extra, "plots": figures, "config": cfg.to_dict()}),
    )
    seeds = comparison.seeds
    lines = [
        "# Theseus Compression series",
        "",
        f"Selection protocol: **{cfg.selection}** ({PROTOCOLS[cfg.selection]}). Seeds: {', '.join(map(str, seeds))}; "
        f"values are means ± standard deviation over seeds (n - 1), intervals are 95% bootstrap intervals "
        f"({cfg.bootstrap.resamples} resamples of the test examples, seed {cfg.bootstrap.seed}). With several learning "
        f"rates, per stage {_rate_choice(cfg, seeds[0])}.",
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
    lines += ["", "## Comparison", "", *comparison_table(results, comparison, speeds_below=sweep is not None), ""]
    if len(seeds) > 1:
        lines += [f"Test {metric} per seed (in brackets: minus the truncated predecessor's in that seed):", "",
                  *per_seed_table(results, comparison), ""]
    if sweep is not None:
        lines += ["## Depth sweep", "", *pareto_table(sweep, metric), "", *throughput_table(speeds), ""]
    lines += [f"![{p}]({p})" for p in figures]
    atomic.write_text(workdir / "report.md", "\n".join(lines) + "\n")


def sweep_models(results: dict[str, Any], comparison: Comparison, speeds: dict[str, Throughput]) -> list[pareto.SweepModel]:
    """The teacher and every depth variant of a depth sweep as per-seed records: test metric from
    the stage records, RP and the paired difference to the truncated model of its depth from the
    comparison, the measured speed-up."""
    metric, models = comparison.metric, []
    by_seed = lambda spread: {v["seed"]: v["value"] for v in spread.per_seed} if spread else {}
    for name, r in results.items():
        stage = find(name)
        if name != pareto.TEACHER and not (stage and stage.depth):
            continue
        test = {e["seed"]: e["test"][metric] for e in r["per_seed"]}
        teacher, versus = name == pareto.TEACHER, comparison.models.get(name, Versus(None, None))
        diff = by_seed(versus.minus_truncated) if stage.student else {}
        truncated = results.get(stage.truncated) if stage.student else None
        models.append(pareto.SweepModel(
            stage=name, method=stage.kind, depth=r["parameters"]["exported_layers"], parameters=r["parameters"]["exported_model"],
            test=test, test_ci95=r.get("test_ci95"),
            retained={seed: 1.0 for seed in test} if teacher else by_seed(versus.retained),
            retained_ci95=[1.0, 1.0] if teacher else versus.retained and versus.retained.ci95,
            minus_truncated=diff, minus_truncated_ci95=versus.minus_truncated.ci95 if diff else None,
            truncated_collapsed=tuple(summary.collapsed_seeds(truncated)) if truncated else (),
            speedup=speeds[name].speedup if name in speeds else None, peaked_at_cap=summary.peaked_at_cap(r),
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
        "RP [interval] | minus truncated at that depth [interval]: verdict | peaked at the cap |",
        "|---|---|---|---|---|---|---|---|",
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
            f"{_pm(r.retained.mean, r.retained.std, 3)} {_interval(r.retained.ci95)} | {diff} | {_peaks(r.peaked_at_cap)} |"
        )
    return lines + ["", pareto.sentence(table)]
