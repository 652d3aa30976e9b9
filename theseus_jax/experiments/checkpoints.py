"""Resumable runs: orbax checkpoints of the train state plus the loop's position.

A checkpoint holds the `TrainState` (step, parameters, optimizer state) and a JSON
`progress` record (data position: epoch, batch within the epoch; evaluation history, best
metric, the wall-clock time spent so far). The selected step's parameters, which the test
evaluation at the run's end reads, are written once when selected (`save_best`, in
`best_params/` beside the step folders, until a checkpoint records a newer selection) rather
than kept in memory until then; checkpoints of earlier versions held them as a `best` item,
which `restore_best` still reads. The PRNG needs no saving: every step folds its number into
the run's seed key. Orbax writes each checkpoint into a temporary directory and renames it
when complete, so a kill at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from theseus_jax import atomic, faults, memory
from theseus_jax.errors import UserError
from theseus_jax.experiments.workdir_lock import LOCK_FILES

log = logging.getLogger("theseus_jax")


class _OwnWaitWarning(logging.Filter):
    """Drops orbax's "Waiting for previous save to complete took N seconds" warning.

    `Checkpoints.save` waits for each write on purpose (memory, below). Orbax adds that wait to
    the next save's count and warns at every checkpoint, advising fewer checkpoints for a wait
    that is ours, not a slow write overlapping training."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Waiting for previous save to complete")


_OWN_WAIT = _OwnWaitWarning()


@dataclasses.dataclass
class Progress:
    """Where the training loop stands; everything needed to resume besides the state."""

    epoch: int = 0
    batch: int = 0  # batches of `epoch` already trained on
    elapsed_s: float = 0.0  # wall clock spent training and evaluating, across restarts
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # one entry per evaluation
    best: dict[str, Any] | None = None  # the best evaluation entry
    evals_without_improvement: int = 0  # for early stopping
    stopped_early: bool = False

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Progress":
        return cls(**d)


class Checkpoints:
    """Periodic checkpoints with a keep-N policy, restored on restart."""

    def __init__(self, directory: Path, keep: int = 2) -> None:
        logging.getLogger("absl").addFilter(_OWN_WAIT)  # orbax logs through absl; added once
        self.manager = ocp.CheckpointManager(
            Path(directory).absolute(),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True),
            item_names=("state", "progress", "best"),
        )
        self.best_directory = Path(directory).absolute() / "best_params"
        self._best_manager: ocp.CheckpointManager | None = None

    def _best(self, create: bool = False) -> ocp.CheckpointManager | None:
        """The manager of `best_params/`, made when first written (a run that never selects has no such folder)."""
        if self._best_manager is None and (create or self.best_directory.is_dir()):
            self._best_manager = ocp.CheckpointManager(  # every selection kept until a checkpoint records a newer one
                self.best_directory,
                options=ocp.CheckpointManagerOptions(create=True, cleanup_tmp_directories=True),
                item_names=("params",),
            )
        return self._best_manager

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, progress: Progress) -> None:
        """Saves `state` and `progress`, then deletes the written selections other than the
        one `progress` records (a resume reads the latest checkpoint only)."""
        items = {"state": ocp.args.StandardSave(state), "progress": ocp.args.JsonSave(progress.to_json())}
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        faults.point("checkpoint")  # crash tests: a kill while the checkpoint is written
        # Written before training goes on: orbax's host copy of the state (1.4 GB for e5-small
        # with AdamW) would otherwise live beside the next steps' buffers (+2 GB at the peak
        # of an e5-small stage, docs/memory-benchmarks.md).
        self.manager.wait_until_finished()
        best = self._best()
        for selected in best.all_steps() if best else ():
            if progress.best is None or selected != progress.best["step"]:
                best.delete(selected)
        memory.release_freed_memory()

    def restore(self, target_state: Any) -> tuple[Any, Progress]:
        """The latest checkpoint, restored into the structure (and shardings) of `target_state`."""
        step = self.manager.latest_step()
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(target_state), progress=ocp.args.JsonRestore()),
        )
        return restored["state"], Progress.from_json(restored["progress"])

    def save_best(self, step: int, params: Any) -> None:
        """Writes the parameters selected at `step`; those of earlier selections stay until a
        checkpoint records this one, for a resume from the checkpoint before it."""
        manager = self._best(create=True)
        if step in manager.all_steps():  # written before a kill, the run resumed from an earlier checkpoint
            manager.delete(step)
        manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)), force=True)
        manager.wait_until_finished()
        memory.release_freed_memory()

    def has_best(self, step: int) -> bool:
        manager = self._best()
        return manager is not None and step in manager.all_steps()

    def restore_best(self, target_params: Any, step: int) -> Any:
        """The parameters selected at `step`, in the structure (and shardings) of
        `target_params`: from `save_best`, or from the latest checkpoint's `best` item
        (checkpoints of earlier versions; KeyError where neither holds them)."""
        if self.has_best(step):
            restored = self._best().restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target_params)))
            return restored["params"]
        latest = self.manager.latest_step()
        return self.manager.restore(latest, args=ocp.args.Composite(best=ocp.args.StandardRestore(target_params)))["best"]

    def close(self) -> None:
        """Waits for asynchronous writes to finish."""
        for manager in (self.manager, self._best_manager):
            if manager is not None:
                manager.wait_until_finished()
                manager.close()


class WorkdirConflict(UserError):
    pass


def check_workdir(workdir: Path) -> None:
    """A workdir that is a file, lies under a file or cannot be written ends the run before any
    data is read, rather than as an OS error halfway through."""
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirConflict(f"--workdir={workdir}: is a file, not a folder; choose a new or existing folder")
    existing = next(p for p in (workdir, *workdir.parents) if p.exists())
    if not existing.is_dir():
        raise WorkdirConflict(f"--workdir={workdir}: {existing} is a file, so no folder can be made under it; choose another --workdir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise WorkdirConflict(f"--workdir={workdir}: {existing} is not writable by this user; choose a writable --workdir")


def claim_workdir(
    workdir: Path, config_json: dict[str, Any], overwrite: bool, defaults: dict[str, Any] | None = None
) -> bool:
    """Records the run's config in `workdir/config.json`.

    Returns True when the workdir already holds this run (resume). A workdir holding a
    run of another config is refused unless `overwrite`, which clears it first (all but
    the workdir lock of this run). A run saved before a field existed is the same run when
    the field holds its value in `defaults` (the base config): a long study survives an
    upgrade that adds a field; its config.json then records the field.
    """
    workdir = Path(workdir)
    saved = workdir / "config.json"
    text = json.dumps(config_json, indent=2, sort_keys=True, default=str)
    if saved.exists():
        if saved.read_text() == text:
            return True
        old, new = _flatten(json.loads(saved.read_text())), _flatten(json.loads(text))
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        base = _flatten(json.loads(json.dumps(defaults or {}, default=str)))
        if all(k not in old and k in base and base[k] == new[k] for k in changed):
            log.info("%s: its config predates fields %s, which hold their defaults; resuming", workdir, ", ".join(changed))
            atomic.write_text(saved, text)
            return True
        if not overwrite:
            raise WorkdirConflict(
                f"{workdir} holds a run with a different config (fields differ: {', '.join(changed)}); "
                "pass --overwrite to replace it or choose another --workdir"
            )
        for child in workdir.iterdir():
            if child.name in LOCK_FILES:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    workdir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(saved, text)
    return False


def unclaim_workdir(workdir: Path, created: bool) -> None:
    """Undoes a fresh `claim_workdir` when the run failed before writing anything else:
    removes config.json, and the workdir itself when the run `created` it."""
    workdir = Path(workdir)
    if not workdir.is_dir() or {p.name for p in workdir.iterdir()} - {"config.json", *LOCK_FILES}:
        return
    (workdir / "config.json").unlink(missing_ok=True)
    if created and not any(workdir.iterdir()):
        workdir.rmdir()


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
