"""A depth sweep's answer at a glance: per method and depth its size, measured speed-up, test
metric, retained performance (RP) and gain over the truncated model of its depth; the points of
the Pareto figure; and the smallest model within 1% (2%) of the teacher.

Pure functions of per-seed records. Means, standard deviations and verdicts come from
`summary`; the intervals are the bootstrap intervals the series already computed (a stage's
test interval, `report.compare`'s RP and paired-difference intervals), carried in the records.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from theseus_jax.experiments import summary

TEACHER = "cls_predecessor"
# "Within x% of the teacher": RP, the test metric over the same seed's teacher's averaged over
# seeds (the table's RP column), is at least 1 - x.
TOLERANCES = (0.01, 0.02)


@dataclasses.dataclass(frozen=True)
class SweepModel:
    """One model of the sweep over seeds, as the series recorded it."""

    stage: str  # its stage (cls_compress_L4)
    method: str  # its stage kind (cls_compress); the teacher's is TEACHER
    depth: int  # layers of its exported model
    parameters: int  # of its exported model
    test: dict[int, float]  # test metric per seed
    test_ci95: list[float] | None
    retained: dict[int, float | None]  # RP per seed: its test metric / the same seed's teacher's
    retained_ci95: list[float] | None
    minus_truncated: dict[int, float]  # paired per seed; empty for a truncated model and the teacher
    minus_truncated_ci95: list[float] | None
    truncated_collapsed: tuple[int, ...] = ()  # seeds where the truncated model of its depth collapsed
    speedup: float | None = None  # measured inference speed-up over the teacher; None: not measured
    peaked_at_cap: tuple[int, int] | None = None  # k of its n chosen runs peaked at the cap (summary.peaked_at_cap)


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A per-seed quantity: mean and standard deviation over seeds, bootstrap interval."""

    mean: float | None
    std: float | None
    ci95: list[float] | None
    per_seed: dict[int, float]


@dataclasses.dataclass(frozen=True)
class ParetoRow:
    stage: str
    method: str
    depth: int
    parameters: int
    speedup: float | None
    test: Estimate
    retained: Estimate
    minus_truncated: Estimate | None  # None: the truncated models and the teacher
    positive_seeds: int | None
    verdict: str | None
    peaked_at_cap: tuple[int, int] | None  # k of n chosen runs

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _estimate(per_seed: dict[int, float | None], ci95: list[float] | None) -> Estimate:
    """Seeds without a value (a zero denominator) are left out of the mean."""
    known = {seed: value for seed, value in per_seed.items() if value is not None}
    described = summary.describe([{"seed": seed, "value": value} for seed, value in known.items()])
    return Estimate(described["mean"], described["std"], ci95, known)


def row(model: SweepModel) -> ParetoRow:
    """The model's table row: means over seeds, and the verdict on its gain over the truncated
    model of its depth (better / worse only when every seed and the interval agree)."""
    paired = [{"seed": seed, "value": value} for seed, value in model.minus_truncated.items()]
    diff = _estimate(model.minus_truncated, model.minus_truncated_ci95) if paired else None
    return ParetoRow(
        stage=model.stage, method=model.method, depth=model.depth, parameters=model.parameters, speedup=model.speedup,
        test=_estimate(model.test, model.test_ci95),
        retained=_estimate(model.retained, model.retained_ci95),
        minus_truncated=diff,
        positive_seeds=sum(1 for p in paired if p["value"] > 0) if paired else None,
        verdict=summary.verdict(paired, model.minus_truncated_ci95, list(model.truncated_collapsed)) if paired else None,
        peaked_at_cap=model.peaked_at_cap,
    )


def rows(models: Sequence[SweepModel]) -> list[ParetoRow]:
    """The teacher first, then the depths from deepest to shallowest, methods in the order they first appear."""
    order = list(dict.fromkeys(m.method for m in models))
    ranked = sorted(models, key=lambda m: (m.method != TEACHER, -m.depth, order.index(m.method)))
    return [row(m) for m in ranked]


def smallest_within(table: Sequence[ParetoRow], tolerance: float) -> ParetoRow | None:
    """The student with the fewest parameters whose RP is at least 1 - tolerance (the higher
    RP among equals); None if no student is that close to the teacher."""
    close = [r for r in table if r.method != TEACHER and r.retained.mean is not None
             and r.retained.mean >= 1 - tolerance - 1e-12]  # RP 0.99 computed as 0.98999... counts
    return min(close, key=lambda r: (r.parameters, -r.retained.mean), default=None)


def sentence(table: Sequence[ParetoRow], tolerances: Sequence[float] = TOLERANCES) -> str:
    """'The smallest model within 1% of the teacher is ...' for each tolerance."""
    parts = []
    for tolerance in tolerances:
        best = smallest_within(table, tolerance)
        within = f"within {tolerance:.0%} of the teacher (RP >= {1 - tolerance:.2f})"
        if best is None:
            parts.append(f"no model is {within}")
            continue
        speed = "" if best.speedup is None else f", {best.speedup:.2f}x the teacher's measured speed"
        parts.append(f"the smallest model {within} is `{best.stage}`: {best.depth} layer{'s' * (best.depth != 1)}, {best.parameters:,} "
                     f"parameters, RP {best.retained.mean:.3f}{speed}")
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


def points(table: Sequence[ParetoRow]) -> dict[str, dict[str, list]]:
    """Per method, its models from deepest to shallowest (the teacher under TEACHER): measured
    speed-up, test mean and interval, depth; what the Pareto figure draws. Models not yet
    measured are left out."""
    out: dict[str, dict[str, list]] = {}
    for r in table:
        if r.speedup is None or r.test.mean is None:
            continue
        line = out.setdefault(r.method, {"speedup": [], "mean": [], "ci95": [], "depth": []})
        line["speedup"].append(r.speedup)
        line["mean"].append(r.test.mean)
        line["ci95"].append(r.test.ci95 or [r.test.mean, r.test.mean])
        line["depth"].append(r.depth)
    return out
