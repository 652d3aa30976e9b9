"""What each stage of the study is, in one table: `STAGES` (a series' stages) and `PIPELINES`
(those a config runs alone). `pipelines.run_stage` trains any of them, the schema checks series
against them, the reports take titles and students from them: a new stage is one entry here.

A stage starts from the first available of `starts`: a stage run before it in the series (its
model of the same seed), `predecessor`, `truncated` (its bottom n layers) or `cls_model` (the
configured one). The last of `starts` and a teacher stage must run before it (`needs`).

A depth variant, `dataclasses.replace(STAGES["cls_compress"], depth=4)`, is a stage of its own
(`cls_compress_L4`, its own workdir and report rows) whose successor or truncated model has 4
layers instead of `compression.num_successor_layers`; its model and teacher stages stay the
same (the same seed's predecessor), and a student is compared with the truncated model of its
depth. `find` reads such names back, so a series may list `cls_truncated_L4`; `series` adds one
variant per depth of `compression.depths` (a depth sweep) to the stages a series lists.
"""

from __future__ import annotations

import dataclasses

CLS_MODEL = "cls_model"  # the config field naming a single stage's start (predecessor | truncated | a folder)
CONFIGURED_TEACHER = "distillation.teacher"  # the config field naming a single stage's teacher


@dataclasses.dataclass(frozen=True)
class Stage:
    kind: str  # the registry's key; `name` adds the depth
    objective: str  # mlm | classification
    starts: tuple[str, ...]  # the first available is the model it trains from
    title: str  # report heading
    compresses: bool = False  # Theseus Compression: trains predecessor and successor, exports the successor
    teacher: str | None = None  # a stage (its model of the same seed), CONFIGURED_TEACHER or None
    row: str | None = None  # its row in the series comparison; None: not compared
    student: bool = False  # a smaller model compared with the predecessor and the truncated baseline
    depth: int | None = None  # successor / truncated layers; None: compression.num_successor_layers

    @property
    def name(self) -> str:
        return self.kind + (f"_L{self.depth}" if self.depth else "")

    @property
    def needs(self) -> tuple[str, ...]:
        """The stages that must run before it: a start without fallback, its teacher."""
        return tuple(dict.fromkeys(s for s in (self.starts[-1], self.teacher) if s in STAGES))

    @property
    def truncated(self) -> str:
        """The truncated baseline of its depth (a student is compared with it)."""
        return dataclasses.replace(STAGES["cls_truncated"], depth=self.depth).name


def _cls(kind: str, starts: tuple[str, ...], title: str, row: str, **fields) -> Stage:
    return Stage(kind, "classification", starts, title, row=row, **fields)


STAGES: dict[str, Stage] = {
    s.kind: s
    for s in (
        Stage("lm_baseline", "mlm", ("predecessor",), "LM fine-tuning, predecessor"),
        Stage("lm_compress", "mlm", ("predecessor",), "LM fine-tuning with Theseus Compression", compresses=True),
        _cls("cls_predecessor", ("lm_baseline", "predecessor"), "downstream, predecessor", "predecessor"),
        _cls("cls_successor", ("lm_compress",), "downstream, compressed successor", "compressed during MLM fine-tuning",
             student=True),
        _cls("cls_compress", ("cls_predecessor", CLS_MODEL), "downstream with Theseus Compression",
             "compressed during downstream training", compresses=True, student=True),
        _cls("cls_successor_kd", ("lm_compress",), "downstream, compressed successor, distilled from cls_predecessor",
             "compressed during MLM fine-tuning, distilled", teacher="cls_predecessor", student=True),
        _cls("cls_compress_kd", ("cls_predecessor",),
             "downstream with Theseus Compression and distillation from cls_predecessor",
             "compressed during downstream training, distilled", compresses=True, teacher="cls_predecessor", student=True),
        _cls("cls_truncated_kd", ("truncated",),
             "downstream, truncated predecessor distilled from cls_predecessor (vanilla KD)",
             "truncated predecessor, distilled (vanilla KD)", teacher="cls_predecessor", student=True),
        _cls("cls_truncated", ("truncated",), "downstream, truncated predecessor (bottom n layers)",
             "truncated predecessor (bottom n layers)"),
    )
}
ORDER = list(STAGES)  # students in this order: the first present gets the unsuffixed comparison keys

PIPELINES: dict[str, Stage] = {
    "lm_baseline": STAGES["lm_baseline"],
    "lm_compress": STAGES["lm_compress"],
    "cls_baseline": _cls("cls_baseline", (CLS_MODEL,), "downstream training of cls_model", "cls_model",
                         teacher=CONFIGURED_TEACHER),
    "cls_compress": dataclasses.replace(STAGES["cls_compress"], teacher=CONFIGURED_TEACHER),
}


def find(name: str, registry: dict[str, Stage] = STAGES) -> Stage | None:
    """The stage of a name, depth variants (`<kind>_L<depth>` of a compressing or truncated
    stage) included; None if unknown."""
    kind, _, depth = name.rpartition("_L")
    sized = kind in registry and (registry[kind].compresses or "truncated" in registry[kind].starts)
    if depth.isdigit() and int(depth) > 0 and sized:  # a depth of its own (cls_successor's is lm_compress's)
        return dataclasses.replace(registry[kind], depth=int(depth))
    return registry.get(name)


def title(name: str) -> str:
    """A run's or stage's report heading (its name when it is no stage)."""
    stage = find(name) or find(name, PIPELINES)
    return stage.title if stage else name


def present(names, **fields) -> list[Stage]:
    """The stages of `names` whose fields have the given values, in `ORDER` (then depth)."""
    stages = [s for s in map(find, names) if s and all(getattr(s, k) == v for k, v in fields.items())]
    return sorted(stages, key=lambda s: (ORDER.index(s.kind), s.depth or 0))


def sweepable(stage: Stage) -> bool:
    """A stage a depth sweep runs once per depth: a downstream stage whose model is the successor
    or the truncated predecessor (the LM stages and cls_successor* keep one depth)."""
    return stage.objective == "classification" and stage.depth is None and (stage.compresses or "truncated" in stage.starts)


def parse_depths(text: str) -> list[int]:
    """`compression.depths` ("6,4,3") as layer counts; [] when empty."""
    return [int(d) for d in str(text).split(",") if d.strip()]


def series(names: list[str], depths: list[int]) -> list[Stage]:
    """A series' stages in running order. With `depths` (a depth sweep) each sweepable stage runs
    once per depth, depth by depth, after the others (the teacher, cls_predecessor, runs once)."""
    listed = [find(name) for name in names]
    if not depths:
        return listed
    chosen = [s for s in listed if not sweepable(s)]
    chosen += [dataclasses.replace(s, depth=d) for d in depths for s in listed if sweepable(s)]
    return list({s.name: s for s in chosen}.values())
