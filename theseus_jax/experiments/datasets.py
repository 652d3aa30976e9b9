"""From a config's `data` block to cleaned, split, tokenised and batched data."""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from theseus_jax.data import fortunes, readers
from theseus_jax.data.batching import BatchLoader
from theseus_jax.data.encoding import encode
from theseus_jax.data.masking import masking_config
from theseus_jax.data.cleaning import CleaningReport, clean
from theseus_jax.data.records import DataError, Example
from theseus_jax.data.splits import stratified_split
from theseus_jax.data.statistics import dataset_statistics

log = logging.getLogger("theseus_jax")


@dataclasses.dataclass
class Loaders:
    train: BatchLoader
    validation: BatchLoader  # model selection, early stopping, learning rate choice
    test: BatchLoader  # evaluated at the selected checkpoints only (selection="validation")
    test_examples: list[Example]
    statistics: dict[str, Any]


def _fortunes(data: ml_collections.ConfigDict, labelled: bool) -> list[Example]:
    """'a+b/c+d': topics a, b are the positive class, c, d the negative; 'a+b' unlabelled."""
    groups = data.topics.split("/")
    if labelled and len(groups) != 2:
        raise DataError(f"data.topics={data.topics!r}: a labelled fortunes task needs 'positive topics/negative topics'")
    examples = []
    for label, group in zip((1, 0), groups) if labelled else ((None, "+".join(groups)),):
        for path in fortunes.topic_files(data.train_path, group):
            examples += [Example(text, label, f"{path}:{line}") for text, line in fortunes.read_fortunes(path)]
    return examples


_read_cache: dict[str, list[Example]] = {}


def read_file(data: ml_collections.ConfigDict, path: str, labelled: bool) -> list[Example]:
    """The examples of one file (or folder) in the configured format.

    Remembered per (data block, path, file version), so the check before a run
    (`check_data`) and the run itself read each file once.
    """
    stat = Path(path).stat() if path and Path(path).exists() else None
    version = (stat.st_mtime_ns, stat.st_size) if stat else None  # a changed file is read again
    key = json.dumps([data.to_dict(), path, labelled, version], sort_keys=True, default=str)
    if key not in _read_cache:
        _read_cache[key] = _read_file(data, path, labelled)
    return _read_cache[key]


def _read_file(data: ml_collections.ConfigDict, path: str, labelled: bool) -> list[Example]:
    if not path:
        raise DataError(f"data.train_path is empty: set --config.<stage>.data.train_path for format {data.format!r}")
    label_map = readers.parse_label_map(data.label_map) or None
    fmt = data.format
    if fmt == "germeval":
        return readers.read_germeval(path)
    if fmt == "mimic":
        return readers.read_mimic(path)
    if fmt == "nohate":
        return readers.read_nohate(path, data.text_column, data.label_column, label_map or {})
    if fmt == "nohate_lm":
        return readers.read_nohate_lm(path, data.text_column)
    if fmt == "table":
        return readers.read_table(path, data.text_column, data.label_column if labelled else None, label_map)
    if fmt == "text":
        return readers.read_text_lines(path)
    if fmt == "fortunes":
        return _fortunes(data, labelled)
    raise DataError(f"data.format={fmt!r} is not one of germeval, mimic, nohate, nohate_lm, table, text, fortunes")


@dataclasses.dataclass
class Splits:
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    cleaning: dict[str, Any]  # per file: what cleaning removed
    sources: dict[str, str]  # where each split came from, for the report


def split_examples(data: ml_collections.ConfigDict, labelled: bool) -> Splits:
    """Cleaned train / validation / test examples.

    Test: the test file when given, else a stratified `test_share` of the training file.
    Validation: the validation file when given, else a stratified `validation_share` of
    what remains for training. Splits and subsampling use `data.split_seed`, not the run's
    seed, so every seed and every model of a comparison sees the same examples.
    """
    seed = data.split_seed

    def prepared(path: str) -> tuple[list[Example], dict[str, int]]:
        examples = read_file(data, path, labelled)
        if not labelled:
            examples = [dataclasses.replace(e, label=None) for e in examples]
        elif any(e.label is None for e in examples):
            raise DataError(f"{path}: a classification stage needs labels (format {data.format!r})")
        examples, report = clean(examples)
        report_dropped(path, report)
        if data.max_examples and len(examples) > data.max_examples:
            keep = np.sort(np.random.default_rng(seed).permutation(len(examples))[: data.max_examples])
            examples = [examples[i] for i in keep]
        return examples, dataclasses.asdict(report)

    train, train_report = prepared(data.train_path)
    cleaning = {"train_file": train_report}
    stratified = "stratified " if labelled else ""
    if data.test_path:
        test, cleaning["test_file"] = prepared(data.test_path)
        test_source = data.test_path
    else:
        train, test, _ = stratified_split(train, data.test_share, seed)
        test_source = f"{stratified}{data.test_share:g} of {data.train_path} (split_seed {seed})"
    if data.validation_path:
        validation, cleaning["validation_file"] = prepared(data.validation_path)
        validation_source = data.validation_path
    elif data.validation_share > 0:
        train, validation, _ = stratified_split(train, data.validation_share, seed + 1)
        validation_source = f"{stratified}{data.validation_share:g} of the training examples (split_seed {seed})"
    else:
        raise DataError(
            f"data.validation_share=0 and no data.validation_path for {data.train_path}: model selection needs "
            "validation data; set --config.<stage>.data.validation_share=0.1 or a validation_path"
        )
    if not train or not validation or not test:
        raise DataError(
            f"{data.train_path}: too few examples for train/validation/test ({len(train)}/{len(validation)}/{len(test)})"
        )
    if labelled:
        check_classes(data, train, test)
    return Splits(train, validation, test, cleaning, {"train": data.train_path, "validation": validation_source, "test": test_source})


NUM_LABELS = 2  # the classifier's outputs; pipelines.load_model builds heads of this size
MIN_CLASS_EXAMPLES = 10


_logged: set[str] = set()


def _log_once(level: int, message: str) -> None:
    """Each message once per process: the check before a run and the run read the same files."""
    if message not in _logged:
        _logged.add(message)
        log.log(level, "%s", message)


def _warn_once(message: str) -> None:
    _log_once(logging.WARNING, message)


DROPPED_WARNING_SHARE = 0.1  # more than this share of a file dropped: likely a wrong column or format


def report_dropped(path: str, report: CleaningReport) -> None:
    """One console line per file that cleaning shortened, with the reasons; a warning when much
    of the file went, so nobody trains on a sliver of their data unawares."""
    dropped = report.empty + report.duplicates + report.conflicting
    if not dropped:
        return
    total = report.kept + dropped
    reasons = f"{report.empty} empty texts, {report.duplicates} duplicates, {report.conflicting} with conflicting labels"
    message = f"data: {path}: dropped {dropped} of {total} rows ({reasons}); {report.kept} kept"
    if dropped / total > DROPPED_WARNING_SHARE:
        _warn_once(f"{message}: {dropped / total:.0%} of the file; check its text column and format")
    else:
        _log_once(logging.INFO, message)


def check_classes(data: ml_collections.ConfigDict, train: list[Example], test: list[Example]) -> None:
    """At least two classes in the training split, labels the classifier can output;
    warnings for rare classes and classes the test split lacks."""
    counts = collections.Counter(e.label for e in train)
    where = f"data.train_path={data.train_path}"
    outside = sorted(label for label in counts if not 0 <= label < NUM_LABELS)
    if outside:
        first = next(e for e in train if e.label == outside[0])
        raise DataError(f"{first.source}: label {outside[0]} is outside 0..{NUM_LABELS - 1}; map the labels to 0/1 (data.label_map)")
    if len(counts) < 2:
        (label,) = counts
        raise DataError(
            f"{where}: the training split holds one class only (label {label}, {counts[label]} examples); "
            "a classifier needs two: check the label column, data.label_map or data.topics"
        )
    for label, count in sorted(counts.items()):
        if count < MIN_CLASS_EXAMPLES:
            _warn_once(f"{where}: class {label} has only {count} training examples")
    missing = sorted(set(counts) - {e.label for e in test})
    if missing:
        _warn_once(f"{where}: the test split has no example of class {missing}; its scores and ROC AUC are undefined")


def check_data(cfg: ml_collections.ConfigDict, stages: set[str]) -> None:
    """Reads, cleans and splits the data of the given stages (`lm`, `cls`) before a run
    starts, so that data errors end it before any work (the files stay cached)."""
    for stage in sorted(stages & {"lm", "cls"}):
        split_examples(cfg[stage].data, stage == "cls")


def _loaders(
    stage: ml_collections.ConfigDict, tokenizer, seed: int, labelled: bool, mlm_probability: float = 0.15, micro_batches: int = 1
) -> Loaders:
    splits = split_examples(stage.data, labelled)
    masking = None if labelled else masking_config(tokenizer, mlm_probability)
    parts = {}
    for name in ("train", "validation", "test"):
        examples = getattr(splits, name)
        encoded = encode([e.text for e in examples], tokenizer, stage.max_length)
        labels = np.array([e.label for e in examples], np.int32) if labelled else None
        loader = BatchLoader(
            encoded, labels, stage.batch_size if name == "train" else stage.eval_batch_size,
            pad_token_id=tokenizer.pad_token_id, buckets=tuple(stage.buckets), shuffle=name == "train",
            seed=seed, masking=masking, gather_masked=masking is not None,
            micro_batches=micro_batches if name == "train" else 1,  # evaluation is not split
        )
        parts[name] = (loader, dataset_statistics(examples, encoded.full_lengths, stage.max_length))
    statistics = {"cleaning": splits.cleaning, "sources": splits.sources, **{name: part[1] for name, part in parts.items()}}
    log.info("data: %d train / %d validation / %d test examples", len(splits.train), len(splits.validation), len(splits.test))
    return Loaders(parts["train"][0], parts["validation"][0], parts["test"][0], splits.test, statistics)


def classification_loaders(cfg: ml_collections.ConfigDict, tokenizer) -> Loaders:
    return _loaders(cfg.cls, tokenizer, cfg.seed, labelled=True)


def mlm_loaders(cfg: ml_collections.ConfigDict, tokenizer) -> Loaders:
    return _loaders(cfg.lm, tokenizer, cfg.seed, labelled=False, mlm_probability=cfg.lm.mlm_probability,
                    micro_batches=cfg.accumulation_steps)
