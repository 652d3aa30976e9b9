"""The experiment config's schema, checked before any work: every problem at once.

`SCHEMA` declares each field (dotted path, `{stage}` standing for `lm` and `cls`) with
its type and its allowed values; `RULES` check what involves several fields or the
model's `config.json` (read from a local folder only: the weights are not loaded). A
field the schema does not know is an error (a misspelt override would otherwise be
ignored); a declared field missing from a config is left to the code's default. To add
a field, add one line to `SCHEMA`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterable

import ml_collections

from theseus_jax.convert import check_weights
from theseus_jax.data.generic import parse_label_map
from theseus_jax.errors import UserError
from theseus_jax.experiments.stages import PIPELINES, STAGES, find, parse_depths, sweepable
from theseus_jax.models.bert import BertConfig
from theseus_jax.models.hub import parse_hub_id
from theseus_jax.training.optimizer import TRAINABLE_PRESETS

Check = Callable[[Any], str | None]  # a value -> what is wrong with it (None: fine)

DATA_FORMATS = ("germeval", "mimic", "nohate", "nohate_lm", "table", "text", "fortunes")
UNLABELLED_FORMATS = ("text", "nohate_lm")
CLASSIFICATION_METRICS = ("macro_f1", "roc_auc", "accuracy")


class ConfigError(UserError):
    """Every problem of a config, one `config.<field>=<value>: <what to do>` each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        count = f"{len(problems)} config problems: " if len(problems) > 1 else ""
        super().__init__(count + "; ".join(problems))


@dataclasses.dataclass(frozen=True)
class Field:
    types: tuple[type, ...]
    check: Check | None = None


# --- Value checks -----------------------------------------------------------------


def at_least(low: float) -> Check:
    return lambda v: None if v >= low else f"must be >= {low:g}"


def positive_finite(v: float) -> str | None:
    return None if math.isfinite(v) and v > 0 else "must be a finite number > 0"


def interval(low: float, high: float, closed_low: bool, closed_high: bool) -> Check:
    def check(v: float) -> str | None:
        ok = (v >= low if closed_low else v > low) and (v <= high if closed_high else v < high)
        brackets = ("[" if closed_low else "(") + f"{low:g}, {high:g}" + ("]" if closed_high else ")")
        return None if ok and math.isfinite(v) else f"must be in {brackets}"

    return check


def one_of(*choices: str) -> Check:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def buckets(v: Any) -> str | None:
    values = list(v)
    if not values or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in values):
        return "must be a non-empty tuple of positive integers, e.g. (32,64,128)"
    if any(b >= c for b, c in zip(values, values[1:])):
        return "must be in ascending order, e.g. (32,64,128)"
    return None


def number_list(kind: type, check: Check) -> Check:
    """A comma-separated list ('2e-5,5e-5'), each entry passing `check`; '' is fine."""

    def parse(v: str) -> str | None:
        for item in filter(None, (s.strip() for s in v.split(","))):
            try:
                value = kind(item)
            except ValueError:
                return f"entry {item!r} is not {_type_name((kind,)) if kind is int else 'a number'}"
            if problem := check(value):
                return f"entry {item!r} {problem}"
        return None

    return parse


def label_map(v: str) -> str | None:
    try:
        parse_label_map(v)
    except UserError as err:
        return f"{err} (expected 'name=0,other=1')"
    return None


def init_offset(v: str) -> str | None:
    return None if v == "original" or v.isdigit() else "must be 'original' or a layer offset 0, 1, ..."


INT, FLOAT, STR, BOOL = (int,), (int, float), (str,), (bool,)
SEQUENCE = (tuple, list)
CONFIG = (ml_collections.ConfigDict,)

_STAGE = {
    "epochs": Field(INT, at_least(0)),
    "max_steps": Field(INT, at_least(0)),
    "batch_size": Field(INT, at_least(1)),
    "eval_batch_size": Field(INT, at_least(1)),
    "learning_rate": Field(FLOAT, positive_finite),
    "learning_rates": Field(STR, number_list(float, positive_finite)),  # a tuning grid; "" = learning_rate
    "warmup_ratio": Field(FLOAT, interval(0, 1, True, False)),
    "weight_decay": Field(FLOAT, at_least(0)),
    "max_grad_norm": Field(FLOAT, at_least(0)),
    "max_length": Field(INT, at_least(1)),
    "buckets": Field(SEQUENCE, buckets),
    "trainable": Field(STR, one_of("all", "all_but_word_embeddings")),
    "data": Field(CONFIG),
    "data.format": Field(STR, one_of(*DATA_FORMATS)),
    "data.train_path": Field(STR),
    "data.test_path": Field(STR),
    "data.validation_path": Field(STR),
    "data.text_column": Field(STR),
    "data.label_column": Field(STR),
    "data.label_map": Field(STR, label_map),
    "data.topics": Field(STR),
    "data.test_share": Field(FLOAT, interval(0, 1, False, False)),
    "data.validation_share": Field(FLOAT, interval(0, 1, True, False)),
    "data.max_examples": Field(INT, at_least(0)),
    "data.split_seed": Field(INT, at_least(0)),
}

SCHEMA: dict[str, Field] = {
    "pipeline": Field(STR, one_of(*PIPELINES, "series")),
    "seed": Field(INT),
    "seeds": Field(STR, number_list(int, at_least(0))),
    "rate_choice": Field(STR, one_of("per_seed", "first_seed")),
    "selection": Field(STR, one_of("validation", "test")),
    "bootstrap": Field(CONFIG),
    "bootstrap.resamples": Field(INT, at_least(1)),
    "bootstrap.seed": Field(INT, at_least(0)),
    "model": Field(CONFIG),
    "model.path": Field(STR),
    "model.tokenizer_path": Field(STR),
    "model.random_config": Field(CONFIG),
    "model.dtype": Field(STR, one_of("float32", "bfloat16")),
    "model.remat": Field(BOOL),
    "cls_model": Field(STR),
    "compression": Field(CONFIG),
    "compression.num_successor_layers": Field(INT, at_least(1)),
    "compression.depths": Field(STR, number_list(int, at_least(1))),
    "compression.init_offset": Field(STR, init_offset),
    "compression.schedule": Field(STR, one_of("curriculum", "constant")),
    "compression.starting_rate": Field(FLOAT, interval(0, 1, True, True)),
    "compression.ratio_replacement_changes": Field(FLOAT, interval(0, 1, False, True)),
    "compression.constant_rate": Field(FLOAT, interval(0, 1, True, True)),
    "compression.replacing_steps": Field(INT, at_least(0)),
    "compression.replacing_epochs": Field(FLOAT, at_least(0)),
    "compression.trainable": Field(STR, one_of(*TRAINABLE_PRESETS)),
    "compression.successor_init": Field(STR, one_of("predecessor", "pretrained")),
    "lm": Field(CONFIG),
    "lm.mlm_probability": Field(FLOAT, interval(0, 1, False, False)),
    "cls": Field(CONFIG),
    "cls.metric": Field(STR, one_of(*CLASSIFICATION_METRICS)),
    **{f"{stage}.{key}": field for stage in ("lm", "cls") for key, field in _STAGE.items()},
    "series": Field(CONFIG),
    "series.stages": Field(STR),
    "num_devices": Field(INT, at_least(0)),
    "accumulation_steps": Field(INT, at_least(1)),
    "eval_every_steps": Field(INT, at_least(0)),
    "checkpoint_every_steps": Field(INT, at_least(1)),
    "log_every_steps": Field(INT, at_least(1)),
    "keep_checkpoints": Field(INT, at_least(1)),
    "max_memory_gb": Field(FLOAT, at_least(0)),
    "keep_final_checkpoints": Field(BOOL),
    "early_stopping": Field(CONFIG),
    "early_stopping.patience": Field(INT, at_least(0)),
    "early_stopping.min_delta": Field(FLOAT, at_least(0)),
    "distillation": Field(CONFIG),
    "distillation.alpha": Field(FLOAT, interval(0, 1, True, True)),
    "distillation.temperature": Field(FLOAT, positive_finite),
    "distillation.teacher": Field(STR),
}
# Free-form blocks: their keys are checked by a rule (BertConfig's fields).
_FREE = ("model.random_config",)


# --- Walking the config -------------------------------------------------------------


def _flatten(config: ml_collections.ConfigDict, prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in config.items():
        path = f"{prefix}{key}"
        yield path, value
        if isinstance(value, ml_collections.ConfigDict) and path not in _FREE:
            yield from _flatten(value, f"{path}.")


def _type_name(types: tuple[type, ...]) -> str:
    return {INT: "an integer", FLOAT: "a number", STR: "a string", BOOL: "true or false", SEQUENCE: "a tuple",
            CONFIG: "a block of fields"}.get(types, "/".join(t.__name__ for t in types))


def _unknown_or_mistyped(path: str, value: Any) -> str | None:
    field = SCHEMA.get(path)
    if field is None:
        close = difflib.get_close_matches(path, SCHEMA, n=1)
        return "unknown field" + (f" (did you mean config.{close[0]}?)" if close else "; remove it")
    if isinstance(value, bool) and bool not in field.types or not isinstance(value, field.types):
        return f"must be {_type_name(field.types)}, not {type(value).__name__}"
    return None


def _value(config: ml_collections.ConfigDict, path: str, default: Any = None) -> Any:
    for key in path.split("."):
        if not isinstance(config, ml_collections.ConfigDict) or key not in config:
            return default
        config = config[key]
    return config


# --- Which parts a run uses ---------------------------------------------------------


def series_stages(config: ml_collections.ConfigDict) -> list[str]:
    return [s.strip() for s in str(_value(config, "series.stages", "")).split(",") if s.strip()]


def used_parts(config: ml_collections.ConfigDict) -> set[str]:
    """Of `lm`, `cls`, `compression`: what the configured pipeline runs."""
    pipeline = config.get("pipeline")
    stages = series_stages(config) if pipeline == "series" else [pipeline]
    parts = {"lm" for s in stages if str(s).startswith("lm_")} | {"cls" for s in stages if str(s).startswith("cls_")}
    known = [s for s in map(find, map(str, stages)) if s]  # cls_successor follows lm_compress
    if any(s.compresses or "truncated" in s.starts for s in known) or (
        pipeline == "cls_baseline" and config.get("cls_model") == "truncated"
    ):
        parts.add("compression")
    return parts


# --- Rules over several fields ------------------------------------------------------


def _field(path: str, value: Any, problem: str) -> str:
    return f"config.{path}={value!r}: {problem}"


def _model_config(config: ml_collections.ConfigDict, problems: list[str]) -> BertConfig | None:
    """The predecessor's config (from random_config or config.json, any supported family);
    None when unknown (a Hub ID) or broken (the problem is recorded)."""
    random_config = _value(config, "model.random_config")
    if random_config:
        known = {f.name for f in dataclasses.fields(BertConfig)}
        unknown = sorted(set(random_config.keys()) - known)
        if unknown:
            problems.append(_field("model.random_config", dict(random_config), f"unknown BertConfig fields {unknown}"))
            return None
        return BertConfig(**random_config.to_dict())
    path = str(_value(config, "model.path", ""))
    folder = _model_folder(path, "model.path", problems)
    d = _read_model_config(folder, "model.path", problems) if folder else None
    if d is None:
        return None
    try:
        return BertConfig.from_hf_dict(d)
    except (ValueError, TypeError) as err:
        problems.append(_field("model.path", path, f"{folder / 'config.json'}: {err}"))
        return None


def _model_folder(path: str, name: str, problems: list[str]) -> Path | None:
    """The local checkpoint folder of a model setting; None for a Hub ID or a problem."""
    if path in ("", "packaged") and name == "model.path":
        if path == "":
            problems.append(_field(name, path, "empty; set it to a checkpoint folder, a Hub ID or 'packaged'"))
            return None
        try:
            from theseus_jax.tokenization import packaged_model_dir

            return packaged_model_dir()
        except ImportError as err:
            problems.append(_field(name, path, str(err)))
            return None
    folder = Path(path)
    if folder.is_dir():
        return folder
    if not folder.exists() and parse_hub_id(path) is not None:
        return None  # a Hub ID: resolved (and checked) when the model is loaded
    problems.append(_field(name, path, "no such checkpoint folder (give a folder with config.json or a Hub ID org/name)"))
    return None


def _read_model_config(folder: Path, name: str, problems: list[str]) -> dict[str, Any] | None:
    """The folder's config.json; a damaged safetensors weights file is a problem too (its
    header read, not the weights), found before a workdir is taken."""
    config_file = folder / "config.json"
    try:
        check_weights(folder)
    except UserError as err:
        problems.append(_field(name, str(folder), str(err)))
    try:
        return json.loads(config_file.read_text())
    except FileNotFoundError:
        problems.append(_field(name, str(folder), f"{config_file} is missing; a checkpoint folder needs its config.json"))
    except (OSError, ValueError) as err:
        problems.append(_field(name, str(folder), f"{config_file} is not readable JSON ({err})"))
    return None


def _stage_rules(config: ml_collections.ConfigDict, stage: str, labelled: bool, problems: list[str]) -> None:
    value = lambda key: _value(config, f"{stage}.{key}")
    if (value("epochs") or 0) < 1:
        problems.append(_field(f"{stage}.epochs", value("epochs"), f"nothing to train: set it >= 1 ({stage}.max_steps only cuts the epochs short)"))
    shares = (value("data.test_share") or 0.0, value("data.validation_share") or 0.0)
    if shares[0] + shares[1] >= 1:
        problems.append(_field(f"{stage}.data.validation_share", shares[1], f"test_share + validation_share = {sum(shares):g} leaves no training data; keep the sum < 1"))
    fmt = value("data.format")
    if labelled and fmt in UNLABELLED_FORMATS:
        problems.append(_field(f"{stage}.data.format", fmt, f"has no labels; a classifier needs one of {[f for f in DATA_FORMATS if f not in UNLABELLED_FORMATS]}"))
    if labelled and fmt == "fortunes" and len(str(value("data.topics")).split("/")) != 2:
        problems.append(_field(f"{stage}.data.topics", value("data.topics"), "a labelled fortunes task needs 'positive+topics/negative+topics'"))
    for key in ("train_path", "test_path", "validation_path"):
        path = value(f"data.{key}")
        if key == "train_path" and not path:
            problems.append(_field(f"{stage}.data.train_path", path, f"empty; set --config.{stage}.data.train_path to the data file"))
        elif path and not Path(path).exists():
            problems.append(_field(f"{stage}.data.{key}", path, "no such file or folder"))


def _size_rules(config: ml_collections.ConfigDict, model: BertConfig, parts: set[str], problems: list[str]) -> None:
    positions = model.max_sequence_length
    layers = model.num_hidden_layers
    for stage in sorted(parts & {"lm", "cls"}):
        max_length, stage_buckets = _value(config, f"{stage}.max_length"), _value(config, f"{stage}.buckets")
        if isinstance(positions, int) and isinstance(max_length, int) and max_length > positions:
            problems.append(_field(f"{stage}.max_length", max_length, f"exceeds the model's {positions} positions; use <= {positions}"))
        if isinstance(positions, int) and isinstance(stage_buckets, SEQUENCE):
            too_long = [b for b in stage_buckets if isinstance(b, int) and b > positions]
            if too_long:
                problems.append(_field(f"{stage}.buckets", tuple(stage_buckets), f"{too_long} exceed the model's {positions} positions; drop them"))
    depths = _depths(config)
    path = "compression.depths" if depths else "compression.num_successor_layers"
    sizes = depths or [_value(config, path)]
    if "compression" not in parts or not isinstance(layers, int) or not all(isinstance(n, int) and n >= 1 for n in sizes):
        return
    entry = (lambda n: f"entry {n} ") if depths else (lambda n: "")
    divisors = [d for d in range(1, layers + 1) if layers % d == 0]
    problems += [_field(path, _value(config, path), f"{entry(n)}does not divide the predecessor's {layers} layers; use one of {divisors}")
                 for n in sizes if layers % n]
    module = min((layers // n for n in sizes if layers % n == 0), default=None)  # the deepest successor's
    offset = str(_value(config, "compression.init_offset", "0"))
    if module and offset.isdigit() and int(offset) >= module:
        problems.append(_field("compression.init_offset", offset, f"a module has {module} layers; use 0..{module - 1} or 'original'"))


def _depths(config: ml_collections.ConfigDict) -> list[int]:
    """compression.depths' layer counts; [] when empty or malformed (a value problem already)."""
    text = str(_value(config, "compression.depths", ""))
    return [] if number_list(int, at_least(1))(text) else parse_depths(text)


def _depth_rules(config: ml_collections.ConfigDict, names: list[str] | None) -> list[str]:
    """A depth sweep (`names`: the series' stages; None: not a series) runs its downstream
    students and truncated models per depth against one teacher."""
    depths = _depths(config)
    if not depths:
        return []
    problem = lambda text: _field("compression.depths", _value(config, "compression.depths"), text)
    if names is None:
        return [problem("a depth sweep is a series: set pipeline=series or leave depths empty")]
    problems = [problem("lists a depth twice; give each once")] if len(set(depths)) < len(depths) else []
    listed = [find(name) for name in names]
    one_depth = [s.name for s in listed if not sweepable(s) and s.depth is None
                 and (s.compresses or any(find(x) and find(x).compresses for x in s.starts))]
    if one_depth:
        problems.append(problem(f"sweeps downstream stages; {', '.join(one_depth)} would keep one depth: drop them or the depths"))
    if "cls_predecessor" not in names:
        problems.append(problem("every depth is compared with the teacher: list cls_predecessor in series.stages"))
    if not any(sweepable(s) for s in listed):
        problems.append(problem("no stage runs per depth: list cls_compress and cls_truncated (and their _kd variants) in series.stages"))
    return problems


def _rules(config: ml_collections.ConfigDict) -> list[str]:
    problems: list[str] = []
    pipeline = config.get("pipeline")
    if pipeline == "series":
        unknown = [s for s in series_stages(config) if not find(s)]
        if unknown:
            problems.append(_field("series.stages", _value(config, "series.stages"), f"unknown stages {unknown}; known: {', '.join(STAGES)} (<stage>_L<layers> for another depth)"))
        elif not series_stages(config):
            problems.append(_field("series.stages", _value(config, "series.stages"), "no stages; list some of " + ", ".join(STAGES)))
        else:
            stages = series_stages(config)
            problems += [
                _field("series.stages", _value(config, "series.stages"), f"{stage} needs {need} before it")
                for i, stage in enumerate(stages) for need in find(stage).needs if need not in stages[:i]
            ]
            problems += _depth_rules(config, stages)
            alpha, distilling = _value(config, "distillation.alpha", 0.0), [s.name for s in STAGES.values() if s.teacher]
            if any(find(s).teacher for s in stages) != bool(alpha):  # alpha unused would pass for KD unnoticed
                problems.append(_field("distillation.alpha", alpha, f"no stage of series.stages distils: set it to 0, or add one of {', '.join(distilling)}"
                                       if alpha else "the *_kd stages distil: set it in (0, 1], e.g. 0.5"))
    else:
        problems += _depth_rules(config, None)
    alpha, teacher_dir = _value(config, "distillation.alpha", 0.0), str(_value(config, "distillation.teacher", ""))
    if pipeline in ("lm_baseline", "lm_compress") and alpha:  # MLM stages never distil: alpha would pass unnoticed
        problems.append(_field("distillation.alpha", alpha, f"pipeline={pipeline} does not distil; set it to 0"))
    if pipeline in ("cls_baseline", "cls_compress") and alpha and not teacher_dir:
        problems.append(_field("distillation.teacher", teacher_dir, "alpha > 0 needs a teacher: a fine-tuned classifier folder"))
    if pipeline in ("cls_baseline", "cls_compress") and alpha and teacher_dir:
        folder = _model_folder(teacher_dir, "distillation.teacher", problems)
        if folder:
            _read_model_config(folder, "distillation.teacher", problems)
    in_steps, in_epochs = _value(config, "compression.replacing_steps", 0), _value(config, "compression.replacing_epochs", 0.0)
    if in_steps and in_epochs:
        problems.append(_field("compression.replacing_epochs", in_epochs,
                               f"replacing_steps={in_steps} is set too; set one of them (the other 0)"))
    parts = used_parts(config)
    for stage in ("lm", "cls"):
        if stage in parts:
            _stage_rules(config, stage, stage == "cls", problems)
            batch, steps = _value(config, f"{stage}.batch_size"), config.get("accumulation_steps", 1)
            if batch % steps:
                problems.append(_field(f"{stage}.batch_size", batch, f"does not split into accumulation_steps={steps} micro-batches"))
    cls_model = config.get("cls_model", "predecessor")
    if pipeline in ("cls_baseline", "cls_compress") and cls_model not in ("predecessor", "truncated"):
        folder = _model_folder(str(cls_model), "cls_model", problems)
        if folder:
            _read_model_config(folder, "cls_model", problems)
    tokenizer = str(_value(config, "model.tokenizer_path", ""))
    if tokenizer:
        _model_folder(tokenizer, "model.tokenizer_path", problems)
    model = _model_config(config, problems)
    if model:
        _size_rules(config, model, parts, problems)
    return problems


def validate_devices(config: ml_collections.ConfigDict, device_count: int) -> None:
    """Batch sizes that split over the data-parallel devices (known once JAX started)."""
    devices = config.get("num_devices", 0) or device_count
    problems = []
    if devices > device_count:
        problems.append(_field("num_devices", devices, f"more than the {device_count} available"))
    for stage in sorted(used_parts(config) & {"lm", "cls"}):
        for key in ("batch_size", "eval_batch_size"):
            size = _value(config, f"{stage}.{key}")
            if size % devices:
                problems.append(_field(f"{stage}.{key}", size, f"does not split over {devices} devices; use a multiple of {devices}"))
    if problems:
        raise ConfigError(problems)


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises `ConfigError` listing every problem of `config`; reads nothing but the
    model's config.json."""
    fields = list(_flatten(config))
    problems = [_field(path, value, problem) for path, value in fields if (problem := _unknown_or_mistyped(path, value))]
    if not problems:  # the value checks and rules assume known, well-typed fields
        problems = [
            _field(path, value, problem)
            for path, value in fields
            if SCHEMA[path].check and (problem := SCHEMA[path].check(value))
        ]
        problems += _rules(config)
    if problems:
        raise ConfigError(problems)
