"""The training loop: jitted steps in the middle, I/O at the edges.

One loop serves every pipeline (MLM or classification, plain or Theseus). It evaluates
the validation split after every epoch, every K steps if asked and where `max_steps` ends
the run (the per-step choices are `decide`, a pure function); a new best on the
selection split exports the model as a Hugging Face checkpoint and writes its parameters
beside the checkpoints (not a copy in memory: 0.5-1.1 GB for base-size models). The test
split is evaluated once, on those, when training ends (one test pass per run, not one per
improvement), so a test number exists at the selected step only and never steers a choice
(unless `selection="test"`, the source study's protocol, asks for test at every
evaluation). It writes resumable orbax checkpoints, so a run killed after its best still
tests it at its end, logs scalars for every step and stops with a clear message on a
non-finite loss. The step loop never waits on the device: metrics stay there
and reach the host every `log_every_steps` steps (and before every evaluation and
checkpoint), while the next batches are already being transferred.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import logging
import math
import signal
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import flax.linen as nn
import jax
import numpy as np
import optax
from tqdm.auto import tqdm

from theseus_jax import atomic, faults, memory
from theseus_jax.errors import UserError
from theseus_jax.evaluation.metrics import classification_metrics, perplexity
from theseus_jax.experiments import preemption
from theseus_jax.experiments.checkpoints import Checkpoints, Progress
from theseus_jax.experiments.run_clock import RunClock
from theseus_jax.models.bert import BertConfig
from theseus_jax.training import parallel, steps
from theseus_jax.training.distillation import Distillation

log = logging.getLogger("theseus_jax")
Batch = dict[str, np.ndarray]
Params = dict[str, Any]
Evaluation = tuple[dict[str, Any], dict[str, np.ndarray]]  # metrics, and classification's predictions


class Loader(Protocol):
    def num_batches(self, epoch: int) -> int: ...

    def batches(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]: ...


class NonFiniteLoss(UserError, FloatingPointError):
    pass


@dataclasses.dataclass
class TrainingJob:
    """Everything one training run needs; built by `theseus_jax.experiments.pipelines`."""

    name: str
    objective: steps.Objective
    model: nn.Module  # the training model (Theseus or plain)
    params: Params
    tx: optax.GradientTransformation
    trainable: Params  # bool mask tree the optimizer was built with
    train_loader: Loader
    validation_loader: Loader
    test_loader: Loader
    epochs: int
    metric: str  # "macro_f1", "roc_auc", "accuracy" (higher is better) or "perplexity" (lower)
    export: Callable[[Params], tuple[BertConfig, Params]]  # params -> plain BERT to save as best
    tokenizer_dir: Path | None = None
    test_texts: list[str] | None = None  # written beside the best model's test predictions
    selection: str = "validation"  # the split that picks the best step: "validation" | "test"
    num_devices: int = 0  # data-parallel mesh size; 0 = every device
    accumulation_steps: int = 1
    compression: steps.Compression | None = None
    distillation: Distillation | None = None  # with `teacher_logits` in every training batch
    teacher: str | None = None  # the teacher's checkpoint folder, for the report
    learning_rate: optax.Schedule | None = None
    seed: int = 0
    eval_every_steps: int = 0  # 0: after every epoch only
    checkpoint_every_steps: int = 100
    log_every_steps: int = 50  # metrics reach the host in chunks of this many steps
    keep_checkpoints: int = 2
    early_stopping_patience: int = 0  # evaluations without improvement; 0 = off
    early_stopping_min_delta: float = 0.0
    max_steps: int = 0  # > 0: training ends after this many steps, if the epochs hold more


def run_steps(loader: Loader, epochs: int, max_steps: int = 0) -> int:
    """The run's step count: `epochs` epochs, cut at `max_steps` if set; the loop and the
    learning-rate and compression schedules (`pipelines._job`) read this one number."""
    total = sum(loader.num_batches(e) for e in range(epochs))
    return min(total, max_steps) if max_steps else total


@dataclasses.dataclass(frozen=True)
class Decision:
    """What the loop does after a step, in this order."""

    flush: bool  # fetch the pending metrics: before any evaluation or checkpoint, so a non-finite step is never saved
    evaluate: bool
    epoch_end: bool  # the next step starts the next epoch
    save: bool
    stop: bool  # on a signal: raise `Stopped` after the save


def decide(
    step: int, batch: int, batches: int, total_steps: int, signal: bool, pending: int, *, eval_every_steps: int,
    checkpoint_every_steps: int, log_every_steps: int,
) -> Decision:
    """After `step` (batch `batch` of `batches`; `pending` steps' metrics on the device): an epoch's
    or the run's last step evaluates and saves; in between, every `eval_every_steps` evaluates
    (0: never), every `checkpoint_every_steps` saves, and so does a stop `signal`."""
    epoch_end = batch == batches
    last = epoch_end or step >= total_steps
    evaluate = last or (eval_every_steps > 0 and step % eval_every_steps == 0)
    save = last or signal or step % checkpoint_every_steps == 0
    return Decision(evaluate or save or pending >= log_every_steps, evaluate, epoch_end, save, signal)


def stops_early(evals_without_improvement: int, patience: int, step: int, total_steps: int) -> bool:
    """After an evaluation at `step`: `patience` evaluations in a row without a gain (0: never
    stop). A plateau at the last step stops nothing: the run trained to its end."""
    return patience > 0 and evals_without_improvement >= patience and step < total_steps


def batches_from(loader: Loader, epochs: int, epoch: int, batch: int) -> Iterator[tuple[int, Batch]]:
    """(epoch, batch) pairs from batch `batch` of `epoch` on, across epochs."""
    for e in range(epoch, epochs):
        yield from ((e, b) for b in loader.batches(e, batch if e == epoch else 0))


def better(metric: str, new: float, old: float, min_delta: float = 0.0) -> bool:
    if metric == "perplexity":
        return new < old - min_delta
    return new > old + min_delta


def replacing_at(compression: steps.Compression | None, step: int) -> bool:
    """Whether Theseus still swaps modules from `step` on (p < 1)."""
    return compression is not None and float(compression.schedule(step)) < 1.0


def plateau_count(
    count: int, metric: str, value: float, previous_best: float | None, min_delta: float, replacing: bool = False
) -> int:
    """Evaluations in a row that did not beat the best before them by more than `min_delta`
    (early stopping ends a run when this reaches the patience). None count while Theseus is
    `replacing`: validation scores the successor alone, which trains alone only after the
    replacement phase, so a plateau before then says nothing about the end of training."""
    if not replacing and previous_best is not None and not better(metric, value, previous_best, min_delta):
        return count + 1
    return 0


def evaluate(eval_step: Callable, params: Params, loader: Loader, objective: str, desc: str) -> Evaluation:
    """Metrics over the whole evaluation set (padding rows ignored), and for classification
    the predictions in example order (`index`, `labels`, `probabilities`)."""
    totals = {"loss_sum": 0.0, "count": 0.0, "correct": 0.0}
    parts: dict[str, list[np.ndarray]] = {"index": [], "labels": [], "probabilities": []}
    jax.block_until_ready(params)
    memory.release_freed_memory()  # the training steps' kept memory: the evaluation's buffers have other sizes
    for batch in tqdm(loader.batches(0), total=loader.num_batches(0), desc=desc, leave=False, disable=None):
        out = jax.device_get(eval_step(params, batch))
        for key in totals:
            totals[key] += float(out[key])
        if objective == "classification":
            real = np.asarray(batch["example_mask"]) > 0
            parts["index"].append(np.asarray(batch["example_index"])[real])
            parts["probabilities"].append(np.asarray(out["probabilities"])[real])
            parts["labels"].append(np.asarray(batch["labels"])[real])
    memory.release_freed_memory()  # the evaluation's buffers
    result: dict[str, Any] = {"loss": totals["loss_sum"] / max(totals["count"], 1.0)}
    if objective == "mlm":
        result["perplexity"] = perplexity(totals["loss_sum"], totals["count"])
        result["mlm_accuracy"] = totals["correct"] / max(totals["count"], 1.0)
        return result, {}
    order = np.argsort(np.concatenate(parts["index"]))
    predictions = {key: np.concatenate(value)[order] for key, value in parts.items()}
    result.update(classification_metrics(predictions["labels"], predictions["probabilities"]))
    return result, predictions


def write_predictions(workdir: Path, texts: list[str], predictions: dict[str, np.ndarray]) -> None:
    """`predictions.csv` (text, label, probability of the positive class per test example, for
    error analysis) and `test_predictions.npz` (labels, probabilities in example order, for
    bootstrap intervals)."""
    import csv

    with atomic.open_atomic(workdir / "predictions.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "text", "label", "probability"])
        for i, label, probs in zip(predictions["index"], predictions["labels"], predictions["probabilities"]):
            writer.writerow([int(i), texts[i], int(label), f"{probs[-1]:.6f}"])
    with atomic.open_atomic(workdir / "test_predictions.npz", "wb") as f:
        np.savez(f, **predictions)


def awaits_test(progress: Progress) -> bool:
    """Whether the selected entry still lacks its test metrics (validation selection, before
    the run's end evaluation): its parameters must be kept on disk (`Checkpoints.save_best`)."""
    return progress.best is not None and "test" not in progress.best


def record_test(progress: Progress, metrics: dict[str, Any]) -> None:
    """Puts `metrics` on the selected entry and on its history entry (separate dicts once
    restored from JSON)."""
    progress.best["test"] = metrics
    for entry in progress.history:
        if entry["step"] == progress.best["step"]:
            entry["test"] = metrics


class _StepLog:
    """Per-step scalars to `steps.jsonl` (plots, resume-safe) and TensorBoard; written by
    process 0 only (`enabled`)."""

    def __init__(self, workdir: Path, resume_step: int, enabled: bool = True) -> None:
        self.enabled = enabled
        if not enabled:
            return
        self.path = workdir / "steps.jsonl"
        kept = []
        if self.path.exists():  # drop steps logged after the checkpoint we resume from
            kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= resume_step]
        atomic.write_text(self.path, "".join(line + "\n" for line in kept))
        self.file = self.path.open("a")
        from tensorboardX import SummaryWriter

        self.tensorboard = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, **scalars}) + "\n")
        self.file.flush()  # a killed run keeps the steps up to its last checkpoint
        for key, value in scalars.items():
            self.tensorboard.add_scalar(f"train/{key}", value, step)

    def write_eval(self, step: int, metrics: dict[str, Any], split: str) -> None:
        if not self.enabled:
            return
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.tensorboard.add_scalar(f"{split}/{key}", value, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self.file.close()
        self.tensorboard.close()


def prefetch(batches: Iterable[Any], transfer: Callable[[Any], Any], size: int = 2) -> Iterator[Any]:
    """`transfer(batch)` for each batch, started `size` batches ahead: while one step runs
    on the device, the next batches are prepared and already on their way to it."""
    queue: collections.deque = collections.deque()
    for batch in batches:
        queue.append(transfer(batch))
        if len(queue) >= size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


class _PendingMetrics:
    """Per-step metrics left on the device until `flush`, which fetches them in one
    transfer, then logs every step, updates the progress bar (with the resident memory, now
    and at its peak), checks the loss and the memory cap (`over_cap`, for the loop to stop
    at). Without a terminal (a run under nohup or a scheduler: no bar) each flush logs one
    progress line."""

    def __init__(
        self, name: str, checkpoint_dir: Path, step_log: "_StepLog", step: int, total_steps: int, clock: RunClock
    ) -> None:
        self.name, self.checkpoint_dir, self.step_log, self.total_steps = name, checkpoint_dir, step_log, total_steps
        self.clock = clock
        self.steps: list[int] = []
        self.metrics: list[dict[str, jax.Array]] = []
        self.bar = tqdm(total=total_steps, initial=step, desc=name, disable=None)
        self.last_flush = clock()  # reset after evaluations: s/step counts training only
        self.epoch = 0
        self.over_cap: memory.OverCap | None = None  # the memory cap's verdict: it stays once passed

    def __len__(self) -> int:
        return len(self.steps)

    def add(self, step: int, epoch: int, metrics: dict[str, jax.Array]) -> None:
        self.steps.append(step)
        self.metrics.append(metrics)
        self.epoch = epoch

    def flush(self) -> None:
        if not self.steps:
            return
        fetched = jax.device_get(self.metrics)
        steps, self.steps, self.metrics = self.steps, [], []
        for step, values in zip(steps, fetched):
            scalars = {k: float(v) for k, v in values.items()}
            if not math.isfinite(scalars["loss"]):
                raise NonFiniteLoss(
                    f"{self.name}: non-finite loss {scalars['loss']} at step {step} (epoch {self.epoch + 1}); "
                    f"the last good checkpoint is kept in {self.checkpoint_dir}; lower the learning rate "
                    "or set max_grad_norm, then rerun with --overwrite"
                )
            self.step_log.write(step, scalars)
            self.bar.update(1)
        now = self.clock()
        previous, self.last_flush = self.last_flush, now
        rss = f"{memory.rss_bytes() / 1e9:.1f} GB (peak {memory.peak_rss_bytes() / 1e9:.1f})"
        self.over_cap = self.over_cap or memory.over_cap()
        if not self.bar.disable:
            self.bar.set_postfix({k: f"{scalars[k]:.3g}" for k in ("loss", "replace_rate") if k in scalars} | {"RSS": rss})
        else:
            per_step = (now - previous) / len(steps)
            log.info(
                "%s: epoch %d, step %d of %d, loss %.4f%s, %.2f s/step (%s), RSS %s", self.name, self.epoch + 1,
                steps[-1], self.total_steps, scalars["loss"],
                f", p {scalars['replace_rate']:.2f}" if "replace_rate" in scalars else "", per_step,
                time_to_cap(self.total_steps - steps[-1], per_step), rss,
            )


def time_to_cap(remaining_steps: int, seconds_per_step: float) -> str:
    """The training time left to the step cap at the current speed, for the log line of a run
    without a progress bar: an upper bound where early stopping ends the run first (evaluations
    not counted)."""
    if remaining_steps == 0:
        return "at the cap"
    minutes = round(remaining_steps * seconds_per_step / 60)
    if minutes < 1:
        return "under a minute of steps to the cap"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min of steps to the cap" if hours else f"{minutes} min of steps to the cap"


def train(job: TrainingJob, workdir: Path) -> Progress:
    """Runs (or resumes) `job` in `workdir`; returns the final progress record.

    Leaves `workdir/best/` (the best model as an HF checkpoint), `workdir/checkpoints/` and,
    for classification, the best model's test predictions. Each history entry holds the
    `validation` metrics and, where evaluated, the `test` metrics (the selected entry only,
    unless `job.selection == "test"`); `progress.best` is the entry with the best
    `job.metric` on `job.selection`. A stop signal ends the run before the test evaluation;
    a rerun evaluates it (a finished run's last checkpoint still holds the parameters to
    test: orbax writes each step once, so the result is not checkpointed).
    """
    from theseus_jax.convert import save_hf_checkpoint

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    train_step = jax.jit(steps.make_train_step(
        job.model, job.tx, job.trainable, job.objective, job.compression, job.learning_rate, job.accumulation_steps,
        job.distillation,
    ), donate_argnums=(0,))
    mesh = parallel.make_mesh(job.num_devices)
    # Outputs replicated: every process (and the host copy) sees every example's predictions.
    eval_step = jax.jit(steps.make_eval_step(job.model, job.objective), out_shardings=parallel.replicated(mesh))
    rng = jax.random.key(job.seed)
    state = parallel.replicate(steps.create_train_state(job.params, job.tx), mesh)
    checkpoints = Checkpoints(workdir / "checkpoints", keep=job.keep_checkpoints)
    progress = Progress()
    if checkpoints.latest_step() is not None:
        state, progress = checkpoints.restore(state)
        if awaits_test(progress) and not checkpoints.has_best(progress.best["step"]):  # a checkpoint of an earlier version
            checkpoints.save_best(progress.best["step"], checkpoints.restore_best(state.params, progress.best["step"]))
        log.info("%s: resuming at step %d (epoch %d, batch %d)", job.name, int(state.step), progress.epoch, progress.batch)
    writer = parallel.is_writer()  # process 0 writes the files; every process trains
    step_log = _StepLog(workdir, int(state.step), enabled=writer)
    memory.drop_staging_caches()  # initialisation's and conversions' traces
    memory.release_freed_memory()  # loading (checkpoint reads, conversions) ends here

    def evaluate_split(params: Params, loader: Loader, split: str, at_step: int) -> Evaluation:
        """`evaluate` over the mesh, its metrics logged at `at_step` (the step `params` come from)."""
        metrics, predictions = evaluate(
            lambda p, b: eval_step(p, parallel.shard_batch(b, mesh)), params, loader, job.objective, f"{job.name} {split}"
        )
        step_log.write_eval(at_step, metrics, split)
        return metrics, predictions

    def publish_test(predictions: dict[str, np.ndarray]) -> None:
        if writer and predictions and job.test_texts is not None:
            write_predictions(workdir, job.test_texts, predictions)

    def run_evaluation(epoch: int) -> None:
        """Evaluates, exports a new best model, writes its parameters for the test evaluation
        at the end and decides on early stopping."""
        entry: dict[str, Any] = {"epoch": epoch, "step": int(state.step), "elapsed_s": elapsed()}
        entry["validation"], _ = evaluate_split(state.params, job.validation_loader, "validation", entry["step"])
        if job.selection == "test":  # the source study's protocol: choose on test, said in every report
            entry["test"], test_predictions = evaluate_split(state.params, job.test_loader, "test", entry["step"])
        value = entry[job.selection][job.metric]
        previous_best = None if progress.best is None else progress.best[job.selection][job.metric]
        if previous_best is None or better(job.metric, value, previous_best):
            progress.best = entry
            if writer:
                config, params = job.export(jax.device_get(state.params))
                save_hf_checkpoint(config, params, workdir / "best", tokenizer_dir=job.tokenizer_dir)
            if job.selection == "test":
                publish_test(test_predictions)
            else:
                checkpoints.save_best(entry["step"], state.params)
        progress.history.append(entry)
        log.info("%s: epoch %d, step %d: %s %s=%.4f (best %.4f)", job.name, epoch + 1, entry["step"], job.selection,
                 job.metric, value, progress.best[job.selection][job.metric])
        count = progress.evals_without_improvement = plateau_count(
            progress.evals_without_improvement, job.metric, value, previous_best, job.early_stopping_min_delta,
            replacing=replacing_at(job.compression, entry["step"]),
        )
        progress.stopped_early = stops_early(count, job.early_stopping_patience, entry["step"], total_steps)

    step = int(state.step)  # host copy: reading state.step would wait for the device
    total_steps = run_steps(job.train_loader, job.epochs, job.max_steps)
    if job.early_stopping_patience and replacing_at(job.compression, total_steps - 1):
        log.warning("%s: early stopping is off: it counts evaluations after the replacement phase, and p stays "
                    "below 1 here (compression.replacing_steps ends the phase)", job.name)
    elapsed = RunClock(progress.elapsed_s)  # the run's seconds so far, a stopped process's stops left out
    pending = _PendingMetrics(job.name, workdir / "checkpoints", step_log, step, total_steps, elapsed)

    def stopped(signum: int | memory.OverCap, saved: bool) -> Exception:
        where = f"at step {step} of {total_steps}" + (f", checkpoint saved in {workdir / 'checkpoints'}" if saved else "")
        if isinstance(signum, memory.OverCap):
            return memory.MemoryCapExceeded(f"{job.name}: {signum.message(where)}")
        return preemption.Stopped(f"{job.name}: stopped by {signal.Signals(signum).name} {where}; "
                                  "rerun the same command to resume", signum)

    try:
        stop = preemption.requested(step)  # a signal while the previous stage finished: train nothing
        if stop:
            raise stopped(stop, saved=False)
        left = 0 if progress.stopped_early else max(total_steps - step, 0)
        batches = itertools.islice(batches_from(job.train_loader, job.epochs, progress.epoch, progress.batch), left)
        temporaries: dict[tuple[tuple[int, ...], ...], int] = {}  # XLA's temporary bytes per batch shape
        for epoch, batch in prefetch(batches, lambda b: (b[0], parallel.shard_batch(b[1], mesh))):
            shapes = tuple(leaf.shape for leaf in jax.tree.leaves(batch))
            new_shape = shapes not in temporaries
            if new_shape:  # compiled here, once per batch shape (the call below reuses it),
                memory.release_freed_memory(step_running=True)  # beside the running step, with no kept memory
                temporaries[shapes] = memory.note_step_temporaries(
                    train_step.lower(state, batch, rng).compile().memory_analysis())
            jax.block_until_ready(state)  # one step at a time: XLA:CPU takes a step's temporaries when it is dispatched
            memory.between_steps(temporaries[shapes])
            if new_shape and (over := memory.step_over_cap(temporaries[shapes], batch["input_ids"].shape)):
                pending.flush()  # stops before the step: the steps so far are kept, as a signal would keep them
                if step > (checkpoints.latest_step() or 0):
                    progress.elapsed_s = elapsed()
                    checkpoints.save(step, state, progress)
                raise stopped(over, saved=checkpoints.latest_step() is not None)
            state, metrics = train_step(state, batch, rng)
            if new_shape:  # dispatched: its executable is in train_step's own cache now
                memory.drop_staging_caches()
            step += 1
            progress.batch += 1
            pending.add(step, epoch, metrics)
            faults.point("train_step")
            stop = preemption.requested(step) or pending.over_cap  # a signal, or memory past max_memory_gb
            now = decide(
                step, progress.batch, job.train_loader.num_batches(epoch), total_steps, bool(stop), len(pending),
                eval_every_steps=job.eval_every_steps, checkpoint_every_steps=job.checkpoint_every_steps,
                log_every_steps=job.log_every_steps,
            )
            if now.flush:
                pending.flush()
            if now.evaluate:
                run_evaluation(epoch)
                pending.last_flush = elapsed()  # s/step counts training only
            if now.epoch_end:
                progress.epoch, progress.batch = epoch + 1, 0
            if now.save or progress.stopped_early:
                progress.elapsed_s = elapsed()
                checkpoints.save(step, state, progress)
            if now.stop:
                raise stopped(stop, saved=True)
            if progress.stopped_early:
                break
        pending.bar.close()
        if awaits_test(progress):  # trained to the end or stopped early, now or before a rerun: test, once
            selected = checkpoints.restore_best(state.params, progress.best["step"])  # read back for this pass only
            metrics, predictions = evaluate_split(selected, job.test_loader, "test", progress.best["step"])
            del selected
            record_test(progress, metrics)
            publish_test(predictions)
            progress.elapsed_s = elapsed()
            log.info("%s: selected step %d: validation %s=%.4f, test %s=%.4f", job.name, progress.best["step"],
                     job.metric, progress.best["validation"][job.metric], job.metric, metrics[job.metric])
    finally:
        elapsed.close()
        checkpoints.close()
        step_log.close()
    return progress
