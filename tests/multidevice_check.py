"""Run by tests/test_parallel.py in subprocesses with simulated CPU devices.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/multidevice_check.py devices OUT_DIR CKPT
    JAX_COORDINATOR_ADDRESS=localhost:PORT JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=i \
        XLA_FLAGS=--xla_force_host_platform_device_count=2 python tests/multidevice_check.py hosts OUT_DIR CKPT

`devices`: one process, 8 devices. `hosts`: one of 2 processes with 2 devices each (a
4-device mesh over 2 simulated hosts). Both train the tiny compression run below, write
its parameters (OUT_DIR/params_{mode}.npz) and a checkpoint (OUT_DIR/ckpt_{mode}),
restore the 1-device checkpoint CKPT (with the selected step's parameters, which a run
keeps on disk until its test evaluation), and print one JSON line of measurements.
"""

import functools
import json
import re
import sys
from collections import Counter
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from theseus_jax.compression import schedules, theseus  # noqa: E402
from theseus_jax.experiments.checkpoints import Checkpoints, Progress  # noqa: E402
from theseus_jax.models.bert import BertConfig, BertForSequenceClassification  # noqa: E402
from theseus_jax.training import optimizer, parallel, steps  # noqa: E402

from tiny_bert import TINY as CFG  # noqa: E402
NO_DROPOUT = CFG.replace(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
SEED = 7


@functools.cache
def predecessor_params() -> dict:
    """The tiny predecessor, initialised once per process (an eager init takes seconds);
    numpy, so that no donated step input can invalidate it."""
    params = BertForSequenceClassification(CFG).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    return jax.tree.map(np.asarray, params)


def setup(config: BertConfig = CFG):
    """Fresh Theseus parameters, optimizer, trainable mask and model for `config`."""
    params = theseus.init_theseus_params(jax.tree.map(jnp.asarray, predecessor_params()), config, 2)
    tx, mask = optimizer.make_optimizer(params, "successor_embeddings_heads", 1e-3)
    model = theseus.theseus_model(config, "classification", 2)
    return params, tx, mask, model


def batches(n: int, size: int = 16):
    """Seeded batches with padded tokens and a few padding rows (uneven per micro-batch)."""
    rng = np.random.default_rng(0)
    for _ in range(n):
        ids = rng.integers(5, 97, (size, 12)).astype(np.int32)
        mask = np.ones_like(ids)
        mask[::3, 8:] = 0
        yield {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids),
               "labels": rng.integers(0, 2, size).astype(np.int32),
               "example_mask": (rng.random(size) < 0.7).astype(np.float32)}


def compiled_step(mesh, accumulation_steps: int = 1, config: BertConfig = CFG):
    params, tx, mask, model = setup(config)
    step = jax.jit(steps.make_train_step(model, tx, mask, "classification",
                                         steps.Compression(schedules.constant_schedule(0.5), 2),
                                         accumulation_steps=accumulation_steps), donate_argnums=(0,))
    return step, parallel.replicate(steps.create_train_state(params, tx), mesh)


def train(num_devices: int = 0, accumulation_steps: int = 1, config: BertConfig = CFG, size: int = 16, n_steps: int = 4):
    """Losses, final state and compiled step of the run on a mesh over `num_devices`
    devices (0: all) with global batches of `size` rows."""
    mesh = parallel.make_mesh(num_devices)
    step, state = compiled_step(mesh, accumulation_steps, config)
    losses = []
    for batch in batches(n_steps, size):
        state, metrics = step(state, parallel.shard_batch(batch, mesh), jax.random.key(SEED))
        losses.append(float(metrics["loss"]))
    return losses, state, step


def host_leaves(tree) -> list[np.ndarray]:
    """Each leaf of a replicated tree as numpy (this process's copy)."""
    return [np.asarray(leaf.addressable_data(0)) for leaf in jax.tree.leaves(tree)]


def max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))


def collectives(step, state, batch) -> dict[str, int]:
    """Collective ops in the compiled step, by kind."""
    hlo = step.lower(state, batch, jax.random.key(SEED)).compile().as_text()
    ops = r"all-to-all|all-gather|collective-permute|all-reduce|reduce-scatter"
    return dict(Counter(re.findall(rf" ({ops})(?:-start)?\(", hlo)))


def restore_on_this_mesh(directory: Path):
    """The state, progress and kept parameters of the checkpoint in `directory`."""
    params, tx, _, _ = setup()
    target = parallel.replicate(steps.create_train_state(params, tx), parallel.make_mesh())
    checkpoints = Checkpoints(directory)
    state, progress = checkpoints.restore(target)
    return state, progress, checkpoints.restore_best(target.params, int(state.step))


def main(mode: str, out_dir: Path, restore_dir: Path) -> None:
    if mode == "hosts":
        assert parallel.init_distributed() and jax.process_count() == 2, "not distributed"
    mesh = parallel.make_mesh()
    result = {"devices": mesh.size, "processes": jax.process_count()}
    losses, state, _ = train()
    result["loss_curve"] = losses
    sample, sample_32 = next(batches(1)), next(batches(1, 32))
    result["local_rows"] = int(parallel.local_batch(sample, mesh)["labels"].shape[0])
    sharding = parallel.shard_batch(sample, mesh)["input_ids"].sharding
    result["batch_split_over"] = [list(sharding.spec), len(sharding.device_set)]

    ckpt = Checkpoints(out_dir / f"ckpt_{mode}")
    ckpt.save_best(int(state.step), state.params)
    ckpt.save(int(state.step), state, Progress(epoch=1, best={"step": int(state.step)}))  # awaiting its test
    ckpt.close()
    restored, progress, restored_kept = restore_on_this_mesh(restore_dir)
    result["restored_devices"] = len(jax.tree.leaves(restored.params)[0].sharding.device_set)
    result["restored_kept_devices"] = len(jax.tree.leaves(restored_kept)[0].sharding.device_set)
    result["restored_epoch"] = progress.epoch
    result["restored_step"] = int(restored.step)

    if mode == "devices":  # 32 rows: 4 per device, 1 per device and micro-batch
        big = train(0, 1, NO_DROPOUT, size=32)[1]
        _, accumulated, step = train(0, 4, NO_DROPOUT, size=32)
        result["accumulation_max_diff"] = max_diff(host_leaves(big.params), host_leaves(accumulated.params))
        # Only the gradient all-reduce is expected: an all-gather or all-to-all would
        # mean that micro-batches move between devices.
        result["accumulation_collectives"] = collectives(step, accumulated, parallel.shard_batch(sample_32, mesh))
    if jax.process_index() == 0:
        np.savez(out_dir / f"params_{mode}.npz", *host_leaves(state.params))
        np.savez(out_dir / f"restored_{mode}.npz", *host_leaves(restored.params))
        np.savez(out_dir / f"restored_kept_{mode}.npz", *host_leaves(restored_kept))
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
