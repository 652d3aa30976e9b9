"""The study's pipelines, from a config to a trained model and its report.

`run_stage` trains one stage of the registry (`theseus_jax.experiments.stages`) in a workdir;
`series` chains them (LM stage, then downstream training of predecessor, successor and the
truncated baseline) and ends with the comparison: compression ratio, retained performance
and fine-tuning speedup, on test at the validation-selected steps.

A stage runs once per seed (`config.seeds`) and learning rate (`config.<lm|cls>.learning_rates`),
and keeps per seed the learning rate whose run is best on validation (`config.rate_choice=first_seed`:
the first seed runs every rate, each later seed only the one the first chose). Folder layout of a
stage's workdir (a part appears only when there are several seeds / learning rates):

    <stage>/                      one seed, one learning rate: the run itself (as before)
    <stage>/report.json           several: the stage's record over seeds (summary.stage_record)
    <stage>/seed_<s>/             several seeds, one learning rate: one run per seed
    <stage>/lr_<lr>/              one seed, several learning rates
    <stage>/seed_<s>/lr_<lr>/     several of both

A run folder holds best/, steps.jsonl, report.json, report.md and, for
classification, predictions.csv and test_predictions.npz. Finished runs are not redone.

A series with several seeds runs seed-major: every stage of the first seed, then every
stage of the second, ..., rewriting the series report after each seed over the seeds done
so far, so a complete comparison arrives after a fraction of the study's time.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from theseus_jax.compression import schedules, theseus
from theseus_jax.errors import UserError
from theseus_jax import atomic, throughput
from theseus_jax.experiments import config_schema, datasets, model_card, pareto, report, stages, summary, teacher
from theseus_jax.experiments.stages import CLS_MODEL, CONFIGURED_TEACHER, STAGES, Stage, find
from theseus_jax.experiments.trainer import TrainingJob, run_steps, train
from theseus_jax.memory import peak_rss_bytes
from theseus_jax.models.bert import HEADS, BertConfig, BertModel
from theseus_jax.models.hub import resolve_model
from theseus_jax.tokenization import TOKENIZER_SOURCES, load_tokenizer, packaged_model_dir
from theseus_jax.training import optimizer, parallel, steps
from theseus_jax.training.distillation import Distillation

log = logging.getLogger("theseus_jax")
Params = dict[str, Any]


@dataclasses.dataclass
class ModelSource:
    """A plain BERT to start from, and the tokenizer folder that goes with it."""

    config: BertConfig
    params: Params
    tokenizer_dir: Path


def _model_dir(path: str) -> Path:
    """`packaged`, a checkpoint folder or a Hub ID (`org/name[@revision]`) as a local folder."""
    return packaged_model_dir() if path in ("", "packaged") else resolve_model(path)


def load_model(config: ml_collections.ConfigDict, head: str, path: str | None = None) -> ModelSource:
    """The configured predecessor (or the checkpoint at `path`) with the given head."""
    from theseus_jax.convert import load_hf_checkpoint

    num_labels = datasets.NUM_LABELS
    tokenizer_dir = _model_dir(config.model.tokenizer_path or config.model.path)
    if path is None and config.model.random_config:
        bert_config = BertConfig(num_labels=num_labels, **config.model.random_config.to_dict())
        module = BertModel(bert_config) if head == "none" else HEADS[head](bert_config)
        params = module.init(jax.random.key(config.seed), jnp.zeros((1, 8), jnp.int32))["params"]
    else:
        folder = _model_dir(path or config.model.path)
        bert_config, params = load_hf_checkpoint(folder, head=head, num_labels=num_labels, seed=config.seed)
        if path and any((folder / name).is_file() for name in TOKENIZER_SOURCES):
            tokenizer_dir = folder
    bert_config = bert_config.replace(dtype=config.model.dtype, remat=config.model.remat)
    return ModelSource(bert_config, params, tokenizer_dir)


def _architecture(model: str) -> str:
    architectures = json.loads((_model_dir(model) / "config.json").read_text()).get("architectures") or [""]
    return architectures[0]


def _init_offset(value: str) -> theseus.InitOffset:
    return "original" if value == "original" else int(value)


def _schedule(cfg: ml_collections.ConfigDict, total_steps: int, batches_per_epoch: int) -> schedules.Schedule:
    c = cfg.compression
    replacing = c.replacing_steps or c.replacing_epochs * batches_per_epoch  # the phase's end in steps; 0 = unset
    if c.schedule == "curriculum" and replacing:  # p = 1 from step `replacing` on
        return schedules.curriculum_schedule(c.starting_rate, slope=(1.0 - c.starting_rate) / replacing)
    if c.schedule == "curriculum":
        return schedules.curriculum_schedule(
            c.starting_rate, total_steps=total_steps, ratio_replacement_changes=c.ratio_replacement_changes
        )
    return schedules.constant_schedule(c.constant_rate, replacing or None)  # the schema allows these two


def _job(
    name: str,
    cfg: ml_collections.ConfigDict,
    stage: ml_collections.ConfigDict,
    objective: str,
    model: Any,
    params: Params,
    trainable: str,
    loaders: datasets.Loaders,
    export: Callable[[Params], tuple[BertConfig, Params]],
    tokenizer_dir: Path,
    compression_of: Callable[[int], steps.Compression] | None = None,
) -> TrainingJob:
    total_steps = run_steps(loaders.train, stage.epochs, stage.max_steps)
    lr = optimizer.learning_rate_schedule(stage.learning_rate, total_steps, int(stage.warmup_ratio * total_steps))
    tx, mask = optimizer.make_optimizer(params, trainable, lr, stage.weight_decay, stage.max_grad_norm or None)
    return TrainingJob(
        name=name,
        objective=objective,
        model=model,
        params=params,
        tx=tx,
        trainable=mask,
        train_loader=loaders.train,
        validation_loader=loaders.validation,
        test_loader=loaders.test,
        selection=cfg.selection,
        epochs=stage.epochs,
        max_steps=stage.max_steps,
        metric="perplexity" if objective == "mlm" else cfg.cls.metric,
        export=export,
        tokenizer_dir=tokenizer_dir,
        compression=compression_of(total_steps) if compression_of else None,
        learning_rate=lr,
        seed=cfg.seed,
        eval_every_steps=cfg.eval_every_steps,
        checkpoint_every_steps=cfg.checkpoint_every_steps,
        log_every_steps=cfg.log_every_steps,
        keep_checkpoints=cfg.keep_checkpoints,
        early_stopping_patience=cfg.early_stopping.patience,
        early_stopping_min_delta=cfg.early_stopping.min_delta,
        test_texts=[e.text for e in loaders.test_examples],
        num_devices=cfg.num_devices,
        accumulation_steps=cfg.accumulation_steps,
    )


def _run(
    job: TrainingJob, workdir: Path, cfg: ml_collections.ConfigDict, loaders: datasets.Loaders,
    predecessor_size: int | None = None,
) -> dict[str, Any]:
    """Trains (or resumes) one job and writes its report (`run_stage` reuses a finished one)."""
    exported_config, exported = job.export(job.params)  # before training donates the params
    exported_params = theseus.count_params(exported)
    trained_params = theseus.count_params(job.params)
    progress = train(job, workdir)
    record = summary.RunRecord(
        name=job.name, objective=job.objective, metric=job.metric, selection=job.selection, seed=cfg.seed,
        learning_rate=float(_settings(cfg, job.objective).learning_rate), history=progress.history,
        best=progress.best, time_until_best_s=progress.best["elapsed_s"] if progress.best else None,
        total_time_s=progress.elapsed_s, stopped_early=progress.stopped_early,
        distillation=dataclasses.asdict(job.distillation) | {"teacher": str(job.teacher)} if job.distillation else None,
        parameters={"trained_model": trained_params, "exported_model": exported_params,
                    "exported_layers": exported_config.num_hidden_layers},
        data=loaders.statistics, run_dir=str(workdir), best_model_dir=str(workdir / "best"),
        compression_ratio=None if predecessor_size is None else predecessor_size / exported_params,  # of the successor
        peak_rss_bytes=peak_rss_bytes(),
        **summary.run_record(progress.best, job.objective, job.metric, workdir, cfg),
    )
    if record.collapsed:
        log.warning(
            "%s: COLLAPSED: the selected model gives one class %.1f%% of its predictions (classes predicted: %s)",
            job.name, 100 * max(record.largest_class_share.values()), record.predicted_classes,
        )
    result = record.to_json()
    if parallel.is_writer():
        report.write_run_report(workdir, result, cfg)
        _write_card(result, workdir, cfg)
    parallel.barrier(f"{job.name}: report")
    if parallel.is_writer() and not cfg.keep_final_checkpoints:
        _remove_checkpoints(workdir / "checkpoints", job.name)
    return result


def _remove_checkpoints(folder: Path, name: str) -> None:
    """A finished run's checkpoints: never resumed again (its report.json marks it finished),
    so they only fill the disk (a 3-seed study keeps 30 runs)."""
    if folder.is_dir():
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        shutil.rmtree(folder)
        log.info("%s: finished; removed its checkpoints (%.2f GB; keep_final_checkpoints=True keeps them)", name, size / 1e9)


def _write_card(result: dict[str, Any], workdir: Path, cfg: ml_collections.ConfigDict) -> None:
    """The model card of the run's export (`workdir/best`) from its record."""
    model_card.write(workdir / "best", model_card.render(result, cfg, *_base_model(cfg, result["name"])))


def _base_model(cfg: ml_collections.ConfigDict, name: str) -> tuple[str | None, Path | None]:
    """The model a run's export derives from, as configured and as a local folder: a
    `cls_baseline` run's own `cls_model`, else the predecessor (None for a random init)."""
    if name == "cls_baseline" and cfg.cls_model not in ("predecessor", "truncated"):
        return cfg.cls_model, _model_dir(cfg.cls_model)
    if cfg.model.random_config:
        return None, None
    return cfg.model.path, _model_dir(cfg.model.path)


def _distil(job: TrainingJob, cfg: ml_collections.ConfigDict, workdir: Path, teacher_dir: str | None) -> TrainingJob:
    """The job learning from `teacher_dir`'s fixed logits as well as the labels (alpha and
    temperature from `config.distillation`); unchanged without a teacher."""
    if not teacher_dir:
        return job
    def load() -> tuple[Any, Params]:
        source = load_model(cfg, "classification", path=teacher_dir)
        return HEADS["classification"](source.config), source.params

    logits = teacher.stored_or_computed(workdir, teacher_dir, load, job.train_loader, cfg.num_devices)
    log.info("%s: distilling from %s (alpha %g, temperature %g)", job.name, teacher_dir, cfg.distillation.alpha,
             cfg.distillation.temperature)
    return dataclasses.replace(
        job, train_loader=teacher.WithTeacherLogits(job.train_loader, logits), teacher=teacher_dir,
        distillation=Distillation(cfg.distillation.alpha, cfg.distillation.temperature),
    )


def _theseus_params(cfg: ml_collections.ConfigDict, source: ModelSource) -> dict:
    """The predecessor's layers plus the successor's copies: of its own layers, or with
    `compression.successor_init=pretrained` of the pretrained model.path's."""
    n, offset = cfg.compression.num_successor_layers, _init_offset(cfg.compression.init_offset)
    if cfg.compression.successor_init != "pretrained":
        return theseus.init_theseus_params(source.params, source.config, n, offset)
    try:
        return theseus.init_theseus_params(source.params, source.config, n, offset, load_model(cfg, "none").params)
    except ValueError as err:
        raise UserError(
            f"config.compression.successor_init='pretrained': model.path {cfg.model.path} cannot start the successor of "
            f"the checkpoint being compressed ({err}); point model.path at the model it was fine-tuned from, or use 'predecessor'"
        ) from err


def _compress(
    cfg: ml_collections.ConfigDict, workdir: Path, objective: str, name: str, path: str | None = None,
    teacher_dir: str | None = None,
) -> dict[str, Any]:
    source = load_model(cfg, objective, path)  # the head of each objective carries its name
    loaders, n = _loaders(cfg, objective, source.tokenizer_dir), cfg.compression.num_successor_layers
    job = _job(name, cfg, _settings(cfg, objective), objective, theseus.theseus_model(source.config, objective, n),
               _theseus_params(cfg, source), cfg.compression.trainable, loaders,
               lambda p: theseus.extract_successor(source.config, p), source.tokenizer_dir,
               compression_of=lambda total: steps.Compression(_schedule(cfg, total, loaders.train.num_batches(0)), n))
    return _run(_distil(job, cfg, workdir, teacher_dir), workdir, cfg, loaders, theseus.count_params(source.params))


def _plain(
    cfg: ml_collections.ConfigDict, workdir: Path, objective: str, name: str, model: str, teacher_dir: str | None
) -> dict[str, Any]:
    """Training of a plain model: `predecessor`, `truncated` (its bottom n layers) or a checkpoint folder."""
    path = None if model in ("predecessor", "truncated") else model
    source = load_model(cfg, objective, path)
    family = source.config.family
    if path and objective == "classification" and family.classifier == "pooler" and _architecture(path) == family.architectures["mlm"]:
        # An MLM checkpoint has no pooler: keep the predecessor's (pretrained) one rather
        # than a random init. (Families whose classifier has its own head start it fresh,
        # as transformers does.)
        source.params["bert"]["pooler"] = load_model(cfg, "none").params["pooler"]
    if model == "truncated":
        config, params = theseus.truncate_layers(source.config, source.params, cfg.compression.num_successor_layers)
        source = ModelSource(config, params, source.tokenizer_dir)
    loaders, settings = _loaders(cfg, objective, source.tokenizer_dir), _settings(cfg, objective)
    job = _job(name, cfg, settings, objective, HEADS[objective](source.config), source.params, settings.trainable, loaders,
               lambda p: (source.config, p), source.tokenizer_dir)
    return _run(_distil(job, cfg, workdir, teacher_dir), workdir, cfg, loaders)


def _settings(cfg: ml_collections.ConfigDict, objective: str) -> ml_collections.ConfigDict:
    return cfg.lm if objective == "mlm" else cfg.cls


def _loaders(cfg: ml_collections.ConfigDict, objective: str, tokenizer_dir: Path) -> datasets.Loaders:
    tokenizer = load_tokenizer(tokenizer_dir, _settings(cfg, objective).max_length)
    return datasets.mlm_loaders(cfg, tokenizer) if objective == "mlm" else datasets.classification_loaders(cfg, tokenizer)


def _source(
    sources: tuple[str | None, ...], cfg: ml_collections.ConfigDict, previous: dict[str, Any], seed: int
) -> str | None:
    """The first available of a stage's model or teacher sources, as a folder (a previous
    stage's selected model of the seed, a configured one) or `predecessor` / `truncated`; None
    for no teacher."""
    source = next(s for s in sources if s in previous or s not in STAGES)
    if source in previous:
        return next(e["best_model_dir"] for e in previous[source]["per_seed"] if e["seed"] == seed)
    if source == CLS_MODEL:
        return cfg.cls_model
    if source == CONFIGURED_TEACHER:
        return cfg.distillation.teacher if cfg.distillation.alpha > 0 and cfg.distillation.teacher else None
    return source


def _train(stage: Stage, cfg: ml_collections.ConfigDict, workdir: Path, model: str, teacher_dir: str | None) -> dict[str, Any]:
    """One run of the stage (one seed, one learning rate) from `model`."""
    if stage.compresses:
        return _compress(cfg, workdir, stage.objective, stage.name,
                         None if model in ("predecessor", "truncated") else model, teacher_dir)
    return _plain(cfg, workdir, stage.objective, stage.name, model, teacher_dir)


def _rates(seed: int, rates: list[float], first: int, runs: dict[int, list[dict[str, Any]]], first_seed: bool) -> list[float]:
    """The learning rates a seed runs: the stage's set, or with `rate_choice=first_seed` for any
    seed after the first only the rate the first seed's runs chose on the selection split (their
    folders stay `lr_<rate>/`, so a rerun reuses them)."""
    if not first_seed or seed == first:
        return rates
    return [summary.choose_learning_rate(runs[first])["learning_rate"]]


@dataclasses.dataclass
class RunCount:
    """Numbers a study's runs in the order they start or are reused ("run 3 of 28"), so a series
    of many hours says where it stands; a resume numbers the reused runs as before."""

    total: int
    numbers: dict[tuple[str, int, float], int] = dataclasses.field(default_factory=dict)

    def number(self, stage: str, seed: int, rate: float) -> int:
        return self.numbers.setdefault((stage, seed, rate), len(self.numbers) + 1)


def planned_runs(chosen: list[Stage], cfg: ml_collections.ConfigDict) -> int:
    """The runs the stages will make over the configured seeds: every rate for each seed, or
    with `rate_choice=first_seed` every rate for the first seed and one for each later seed."""
    later_seeds = len(summary.parse_seeds(cfg.seeds)) - 1
    total = 0
    for stage in chosen:
        rates = len(summary.learning_rates(_settings(cfg, stage.objective)))
        total += rates + later_seeds * (1 if cfg.get("rate_choice") == "first_seed" else rates)
    return total


def run_stage(
    stage: Stage, cfg: ml_collections.ConfigDict, workdir: Path, previous: dict[str, Any] | None = None,
    seeds: list[int] | None = None, count: RunCount | None = None,
) -> dict[str, Any]:
    """The stage for every seed (`seeds`: the first of the configured ones, in a seed-major
    series) and learning rate, from the model its `starts` name (`previous`: the records of the
    stages before it in a series), then the stage's record (the learning rate chosen per seed on
    the selection split; with `rate_choice=first_seed` the later seeds run only the first seed's
    choice). A finished run (its report.json) is reused, not redone. `count` numbers the runs
    across a series (the stage's own runs without one)."""
    previous = previous or {}
    count = count or RunCount(planned_runs([stage], cfg))
    if stage.depth:
        cfg = ml_collections.ConfigDict(cfg.to_dict())
        cfg.compression.num_successor_layers = stage.depth
    configured, rates = summary.parse_seeds(cfg.seeds), summary.learning_rates(_settings(cfg, stage.objective))
    order, first_seed = seeds or configured, cfg.get("rate_choice") == "first_seed"
    if first_seed:  # the later seeds run the rate the first chose: it runs (or is reused) first
        order = [configured[0], *(s for s in order if s != configured[0])]
    runs: dict[int, list[dict[str, Any]]] = {}
    for seed in order:
        runs[seed] = []
        for rate in _rates(seed, rates, configured[0], runs, first_seed):
            folder = workdir / (f"seed_{seed}" if len(configured) > 1 else "") / (f"lr_{rate:g}" if len(rates) > 1 else "")
            place = f"run {count.number(stage.name, seed, rate)} of {count.total}"
            if (folder / "report.json").exists():
                log.info("%s: already finished, reusing %s (%s)", stage.name, folder / "report.json", place)
                stored = summary.RunRecord.from_json(json.loads((folder / "report.json").read_text())).to_json()
                finished = summary.with_current_collapse(stored)
                card = folder / "best" / model_card.CARD_FILE
                if parallel.is_writer() and (folder / "best").is_dir() and not card.exists():
                    log.info("%s: writing the model card its export lacked, %s", stage.name, card)  # finished before cards
                    _write_card(finished, folder, cfg)
                runs[seed].append(finished)
                continue
            if count.total > 1:
                log.info("%s: seed %d, learning rate %g (%s)", stage.name, seed, rate, place)
            run_cfg = ml_collections.ConfigDict(cfg.to_dict())
            run_cfg.seed = seed
            _settings(run_cfg, stage.objective).learning_rate = rate
            model, teacher_dir = (_source(s, cfg, previous, seed) for s in (stage.starts, (stage.teacher,)))
            runs[seed].append(_train(stage, run_cfg, folder, model, teacher_dir))
    record = summary.stage_record(stage.name, runs, cfg)
    if len(configured) > 1 or len(rates) > 1:
        if record["collapsed"]:
            log.warning("%s: COLLAPSED in seeds %s", stage.name, summary.collapsed_seeds(record))
        if parallel.is_writer():
            report.write_stage_report(workdir, record, cfg)
    return record


def series(cfg: ml_collections.ConfigDict, workdir: Path) -> dict[str, Any]:
    """The study's testing series (stages checked by the schema), each stage in its own
    sub-workdir, then the comparison. A depth sweep (`compression.depths`) runs its students and
    truncated models per depth and ends by measuring their inference speed (`_speeds`)."""
    depths = stages.parse_depths(cfg.compression.depths)
    chosen = stages.series(config_schema.series_stages(cfg), depths)
    seeds = summary.parse_seeds(cfg.seeds)
    count = RunCount(planned_runs(chosen, cfg))
    for done in range(1, len(seeds) + 1):  # seed-major; each pass reuses the seeds before it
        results: dict[str, Any] = {}
        for stage in chosen:
            results[stage.name] = run_stage(stage, cfg, workdir / stage.name, results, seeds[:done], count)
        comparison = report.compare(results, cfg, seeds[:done])
        if parallel.is_writer():
            speeds = _speeds(cfg, workdir, results, measure=False) if depths else None
            report.write_series_report(workdir, results, comparison, cfg, speeds)
        if done < len(seeds):
            log.info("series: seeds %s done of %s; report.md covers them", seeds[:done], seeds)
    if depths and parallel.is_writer():
        report.write_series_report(workdir, results, comparison, cfg, _speeds(cfg, workdir, results, measure=True))
    return {"stages": results, "comparison": comparison.to_json()}


SPEEDS = "throughput.json"


def _speeds(
    cfg: ml_collections.ConfigDict, workdir: Path, results: dict[str, Any], measure: bool
) -> dict[str, throughput.Throughput]:
    """A depth sweep's measured inference speed: the first seed's exported teacher and per-depth
    models on the test texts, in this process, at the end of the series (`measure`); kept in
    `workdir/throughput.json` and reused while it holds the same models ({} before it exists)."""
    models = {name: r["per_seed"][0]["best_model_dir"] for name, r in results.items()
              if name == pareto.TEACHER or find(name).depth}
    path = workdir / SPEEDS
    if path.exists():
        stored = {name: throughput.Throughput.from_json(t) for name, t in json.loads(path.read_text()).items()}
        if {name: t.model_dir for name, t in stored.items()} == models:
            return stored
    if not measure:
        return {}
    texts = [e.text for e in datasets.split_examples(cfg.cls.data, labelled=True).test]
    log.info("series: measuring the inference speed of %d models on %d test texts", len(models), len(texts))
    speeds = throughput.measure(models, texts, cfg.cls.eval_batch_size, rounds=3, reference=pareto.TEACHER,
                                max_length=cfg.cls.max_length, buckets=cfg.cls.buckets)
    atomic.write_text(path, json.dumps({name: t.to_json() for name, t in speeds.items()}, indent=2))
    return speeds


PIPELINES: dict[str, Callable[[ml_collections.ConfigDict, Path], dict[str, Any]]] = {
    **{name: functools.partial(run_stage, stage) for name, stage in stages.PIPELINES.items()},
    "series": series,
}
