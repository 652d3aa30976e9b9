"""Run by tests/test_parallel.py in a subprocess with 8 simulated CPU devices.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/multidevice_check.py OUT_DIR RESTORE_DIR

Prints one JSON line with its measurements; writes a checkpoint made on 8 devices into
OUT_DIR/ckpt8 and restores the 1-device checkpoint in RESTORE_DIR.
"""

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from theseus_jax.compression import schedules, theseus  # noqa: E402
from theseus_jax.experiments.checkpoints import Checkpoints, Progress  # noqa: E402
from theseus_jax.models.bert import BertConfig, BertForSequenceClassification  # noqa: E402
from theseus_jax.training import optimizer, parallel, steps  # noqa: E402

CFG = BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=48, max_position_embeddings=32)


def setup(config: BertConfig = CFG):
    pred = BertForSequenceClassification(config).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    params = theseus.init_theseus_params(pred, config, 2)
    tx, mask = optimizer.make_optimizer(params, "successor_embeddings_heads", 1e-3)
    model = theseus.theseus_model(config, "classification", 2)
    return params, tx, mask, model


def batches(n: int, size: int = 16):
    rng = np.random.default_rng(0)
    for _ in range(n):
        ids = rng.integers(5, 97, (size, 12)).astype(np.int32)
        mask = np.ones_like(ids)
        mask[::3, 8:] = 0
        yield {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids),
               "labels": rng.integers(0, 2, size).astype(np.int32), "example_mask": np.ones(size, np.float32)}


def train(num_devices: int, accumulation_steps: int = 1, config: BertConfig = CFG, n_steps: int = 6):
    params, tx, mask, model = setup(config)
    step = jax.jit(steps.make_train_step(model, tx, mask, "classification",
                                         steps.Compression(schedules.constant_schedule(0.5), 2),
                                         accumulation_steps=accumulation_steps))
    mesh = parallel.make_mesh(num_devices)
    state = parallel.replicate(steps.create_train_state(params, tx), mesh)
    losses = []
    for batch in batches(n_steps):
        state, metrics = step(state, parallel.shard_batch(batch, mesh), jax.random.key(7))
        losses.append(float(metrics["loss"]))
    return losses, state


def max_diff(a, b) -> float:
    return max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main(out_dir: Path, restore_dir: Path) -> None:
    assert len(jax.devices()) == 8, jax.devices()
    result = {}
    losses8, state8 = train(8)
    losses1, state1 = train(1)
    result["loss_curve_8"], result["loss_curve_1"] = losses8, losses1
    result["params_max_diff_8_vs_1"] = max_diff(state8.params, state1.params)
    sharding = parallel.shard_batch(next(batches(1)), parallel.make_mesh(8))["input_ids"].sharding
    result["batch_split_over"] = [list(sharding.spec), len(sharding.device_set)]

    no_dropout = CFG.replace(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    big = train(8, 1, no_dropout)[1]
    accumulated = train(8, 4, no_dropout)[1]
    result["accumulation_max_diff"] = max_diff(big.params, accumulated.params)

    ckpt = Checkpoints(out_dir / "ckpt8")
    ckpt.save(int(state8.step), state8, Progress(epoch=1))
    ckpt.close()
    np.savez(out_dir / "params8.npz", *[np.asarray(x) for x in jax.tree.leaves(state8.params)])

    # Restore the checkpoint written on 1 device, replicated over 8.
    params, tx, _, _ = setup()
    target = parallel.replicate(steps.create_train_state(params, tx), parallel.make_mesh(8))
    restored, progress = Checkpoints(restore_dir).restore(target)
    saved = np.load(restore_dir.parent / "params1.npz")
    result["restore_1_on_8_max_diff"] = max(
        float(np.abs(np.asarray(x) - saved[f"arr_{i}"]).max()) for i, x in enumerate(jax.tree.leaves(restored.params))
    )
    result["restored_devices"] = len(jax.tree.leaves(restored.params)[0].sharding.device_set)
    result["restored_epoch"] = progress.epoch
    print(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
