"""From runs to a stage's numbers: the learning rate chosen per seed on the selection split,
means and standard deviations over seeds, bootstrap intervals, collapse flags.

A run (one seed, one learning rate) records its selected step's validation and test
metrics; a stage gathers its runs. With one seed and one learning rate the stage's record
is the run's own. Everything here reads recorded numbers and saved test predictions; it
never trains or evaluates.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from pathlib import Path
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

from theseus_jax.evaluation.bootstrap import metric_interval, paired_interval
from theseus_jax.evaluation.metrics import largest_prediction_share, predicted_classes
from theseus_jax.experiments.trainer import better

log = logging.getLogger("theseus_jax")
PREDICTIONS = "test_predictions.npz"
# A model that gives one class at least this share of its predictions is stuck on it: naming
# the minority class for 3 of 501 tweets is no better than never naming it.
COLLAPSE_SHARE = 0.99


def parse_seeds(text: str) -> list[int]:
    seeds = [int(x) for x in str(text).split(",") if x.strip()]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"config.seeds={text!r}: give distinct integers, e.g. '0,1,2'")
    return seeds


def learning_rates(stage: ml_collections.ConfigDict) -> list[float]:
    """The stage's learning-rate set; empty means just `learning_rate`."""
    rates = [float(x) for x in str(stage.learning_rates).split(",") if x.strip()]
    return rates or [float(stage.learning_rate)]


def scalars(metrics: dict[str, Any] | None) -> dict[str, float]:
    """The single-number metrics of an evaluation (drops per-class lists, confusion matrix)."""
    return {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def load_predictions(run_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(Path(run_dir) / PREDICTIONS) as saved:
        return saved["labels"], saved["probabilities"]


def collapse(best: dict[str, Any]) -> dict[str, Any]:
    """How many classes the selected model predicts on validation and test, and the share of
    the most-predicted one; collapsed if that share reaches COLLAPSE_SHARE on either split."""
    matrices = {split: best[split]["confusion_matrix"] for split in ("validation", "test") if split in best}
    shares = {split: largest_prediction_share(m) for split, m in matrices.items()}
    return {
        "predicted_classes": {split: predicted_classes(m) for split, m in matrices.items()},
        "largest_class_share": shares,
        "collapsed": any(share >= COLLAPSE_SHARE for share in shares.values()),
    }


def collapsed_seeds(record: dict[str, Any]) -> list[int]:
    """The seeds whose selected model collapsed, in a stage's (or a run's) record."""
    return [e["seed"] for e in record["per_seed"] if e["collapsed"]]


def with_current_collapse(run: dict[str, Any]) -> dict[str, Any]:
    """A finished run's report with its collapse flag under today's rule, so that runs reused
    from reports written before the rule changed are judged like new ones."""
    if run["objective"] == "classification" and run.get("best"):
        flags = collapse(run["best"])
        run.update(flags)
        run["per_seed"] = [{**e, **flags} for e in run.get("per_seed", [])]
    return run


def run_record(best: dict[str, Any] | None, objective: str, metric: str, run_dir: Path, cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """What a run adds to its report: the selected step's validation/test metrics, the test
    metric's bootstrap interval, the collapse flag."""
    best = best or {}
    record: dict[str, Any] = {
        "selected_step": best.get("step"),
        "validation": scalars(best.get("validation")),
        "test": scalars(best.get("test")),
        "test_ci95": None,
        "collapsed": False,
    }
    if objective == "classification" and best:
        record.update(collapse(best))
        labels, probabilities = load_predictions(run_dir)
        record["test_ci95"] = metric_interval(metric, labels, probabilities, cfg.bootstrap.resamples, cfg.bootstrap.seed)
    return record


PEAKED = "peaked_at_cap"
PER_SEED_KEYS = (
    "seed", "learning_rate", "selected_step", PEAKED, "validation", "test", "test_ci95", "collapsed", "predicted_classes",
    "largest_class_share", "best_model_dir", "run_dir",
)


@dataclasses.dataclass
class RunRecord:
    """One run (a seed, a learning rate) as its report.json holds it; `run_record` adds the
    selected step's numbers. Fields added later have defaults, so older reports load."""

    name: str  # the stage's
    objective: str
    metric: str
    selection: str
    seed: int
    learning_rate: float
    history: list[dict[str, Any]]
    best: dict[str, Any] | None
    time_until_best_s: float | None
    total_time_s: float
    parameters: dict[str, int]  # trained_model, exported_model, exported_layers
    run_dir: str
    best_model_dir: str
    selected_step: int | None
    validation: dict[str, float]
    test: dict[str, float]
    stopped_early: bool = False
    distillation: dict[str, Any] | None = None  # alpha, temperature, teacher
    data: dict[str, Any] | None = None
    test_ci95: list[float] | None = None
    collapsed: bool = False
    predicted_classes: dict[str, int] | None = None  # classification only
    largest_class_share: dict[str, float] | None = None  # classification only
    compression_ratio: float | None = None  # compression runs only
    peak_rss_bytes: int | None = None  # the process's peak resident memory at the run's end

    @property
    def peaked_at_cap(self) -> bool:
        """The budget, not early stopping, ended the run while its metric was at its best: the
        selected step is its last evaluation and it trained to its cap (issue 32's fair budget:
        a model that often peaks at the cap may have been stopped while still improving).
        Derived from the history, so reports written before the flag get it too."""
        return bool(self.best and self.history) and not self.stopped_early and self.best["step"] == self.history[-1]["step"]

    def to_json(self) -> dict[str, Any]:
        """report.json's keys (`pipeline` repeats the name, `per_seed` holds the run itself)."""
        out = {"pipeline": self.name, **dataclasses.asdict(self), PEAKED: self.peaked_at_cap}
        out = {k: v for k, v in out.items() if v is not None or k not in OPTIONAL_KEYS}
        return out | {"per_seed": [{key: out.get(key) for key in PER_SEED_KEYS}]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


OPTIONAL_KEYS = ("predicted_classes", "largest_class_share", "compression_ratio")  # absent rather than null


def choose_learning_rate(candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """The run whose selected step is best on the selection split (first wins ties)."""
    chosen = candidates[0]
    for run in candidates[1:]:
        if better(run["metric"], run[run["selection"]][run["metric"]], chosen[chosen["selection"]][chosen["metric"]]):
            chosen = run
    return chosen


def peaked_at_cap(record: dict[str, Any]) -> tuple[int, int] | None:
    """(k, n): k of a stage's n chosen runs (per seed, the run of the learning rate chosen for
    it) peaked at the cap; None for records written before the flag."""
    entries = record["per_seed"]
    if not entries or any(e.get(PEAKED) is None for e in entries):
        return None
    return sum(bool(e[PEAKED]) for e in entries), len(entries)


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    values = [float(v) for v in values]
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def seed_interval(
    metric: str, stages: Sequence[dict[str, Any]], statistic: Callable[..., np.ndarray], cfg: ml_collections.ConfigDict
) -> list[float] | None:
    """Bootstrap interval of `statistic` over the stages' per-seed test predictions, one shared
    resample of the test examples for every stage and seed (None if the test sets differ)."""
    models, labels = [], None
    for stage in stages:
        seeds = []
        for entry in stage["per_seed"]:
            seed_labels, probabilities = load_predictions(entry["run_dir"])
            if labels is not None and not np.array_equal(labels, seed_labels):
                log.warning("%s: seeds or stages were tested on different examples; no joint interval", stage["name"])
                return None
            labels = seed_labels
            seeds.append(probabilities)
        models.append(seeds)
    return paired_interval(metric, labels, models, statistic, cfg.bootstrap.resamples, cfg.bootstrap.seed)


def stage_record(name: str, runs: dict[int, list[dict[str, Any]]], cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """A stage over seeds: per seed the run chosen among its learning rates, then means.

    Today's per-run fields (history, best, parameters, data, best_model_dir) describe the
    first seed's chosen run; `time_until_best_s` and `total_time_s` are means over the
    chosen runs, `tuning_time_s` the time of every run of the stage (all learning rates).
    """
    per_seed = []
    for seed, candidates in runs.items():
        chosen = choose_learning_rate(candidates)
        entry = {key: chosen.get(key) for key in PER_SEED_KEYS}
        entry["learning_rate_candidates"] = [
            {"learning_rate": r["learning_rate"], chosen["selection"]: r[chosen["selection"]].get(r["metric"]), "run_dir": r["run_dir"]}
            for r in candidates
        ]
        entry["time_until_best_s"] = chosen["time_until_best_s"]
        entry["total_time_s"] = chosen["total_time_s"]
        per_seed.append((entry, chosen))
    first = per_seed[0][1]
    if len(parse_seeds(cfg.seeds)) == 1 and len(runs[next(iter(runs))]) == 1:
        return first  # one seed, one rate: the run is the stage (a seed-major series' first seed is not)
    entries = [e for e, _ in per_seed]
    metric = first["metric"]
    record = {
        **{k: v for k, v in first.items() if k not in ("seed", "run_dir", "predicted_classes", "largest_class_share")},  # per seed below
        "seeds": list(runs),
        "learning_rates": sorted({r["learning_rate"] for c in runs.values() for r in c}),
        "selected_step": entries[0]["selected_step"] if len(entries) == 1 else [e["selected_step"] for e in entries],
        "learning_rate": entries[0]["learning_rate"] if len(entries) == 1 else [e["learning_rate"] for e in entries],
        "time_until_best_s": statistics.fmean(e["time_until_best_s"] for e in entries),
        "total_time_s": statistics.fmean(e["total_time_s"] for e in entries),
        "tuning_time_s": sum(r["total_time_s"] for c in runs.values() for r in c),
        "collapsed": any(e["collapsed"] for e in entries),
        "per_seed": entries,
    }
    for split in ("validation", "test"):
        keys = [k for k in entries[0][split] if all(k in e[split] for e in entries)]
        record[split] = {k: _mean_std([e[split][k] for e in entries])[0] for k in keys}
        record[f"{split}_std"] = {k: _mean_std([e[split][k] for e in entries])[1] for k in keys}
    if first["objective"] == "classification":
        record["test_ci95"] = (
            entries[0]["test_ci95"] if len(entries) == 1 else seed_interval(metric, [record], lambda a: a.mean(0), cfg)
        )
    return record


def paired_by_seed(
    a: dict[str, Any], b: dict[str, Any], metric: str, combine: Callable[[float, float], float]
) -> list[dict[str, Any]]:
    """combine(a's test metric, b's test metric) for each seed both stages ran."""
    b_by_seed = {e["seed"]: e for e in b["per_seed"]}
    return [
        {"seed": e["seed"], "value": combine(e["test"][metric], b_by_seed[e["seed"]]["test"][metric])}
        for e in a["per_seed"]
        if e["seed"] in b_by_seed
    ]


def describe(values: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, standard deviation (n - 1; None for one seed) and per-seed values; no mean when a
    seed has no value (a ratio to 0)."""
    defined = values and all(v["value"] is not None for v in values)
    mean, std = _mean_std([v["value"] for v in values]) if defined else (None, None)
    return {"mean": mean, "std": std, "per_seed": values}


def verdict(differences: list[dict[str, Any]], interval: list[float] | None, collapsed_seeds: list[int]) -> str:
    """One honest word on a paired difference (model minus baseline): "better" or "worse" only
    when every seed and the interval agree; a baseline that collapsed in some seed is not a
    comparison at all, whatever the mean says."""
    if collapsed_seeds:
        return f"not comparable: the baseline collapsed in seeds {collapsed_seeds}"
    values = [d["value"] for d in differences]
    low, high = interval if interval else (None, None)
    if values and all(v > 0 for v in values) and (low is None or low > 0):
        return "better"
    if values and all(v < 0 for v in values) and (high is None or high < 0):
        return "worse"
    return "not separated"
