"""Data parallelism on 8 simulated CPU devices (in a subprocess: this process keeps 1 device)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import multidevice_check as check  # noqa: E402

from theseus_jax.experiments.checkpoints import Checkpoints, Progress  # noqa: E402
from theseus_jax.training import parallel, steps  # noqa: E402


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory):
    """Writes a 1-device checkpoint, then runs the 8-device checks, which restore it."""
    root = tmp_path_factory.mktemp("parallel")
    losses, state = check.train(1)
    ckpt = Checkpoints(root / "ckpt1")
    ckpt.save(int(state.step), state, Progress(epoch=3))
    ckpt.close()
    np.savez(root / "params1.npz", *[np.asarray(x) for x in jax.tree.leaves(state.params)])
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, str(Path(check.__file__)), str(root), str(root / "ckpt1")],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), root, losses


def test_eight_devices_match_one_device(eight_devices):
    result, _, _ = eight_devices
    assert result["batch_split_over"] == [["data"], 8]
    np.testing.assert_allclose(result["loss_curve_8"], result["loss_curve_1"], rtol=1e-5, atol=1e-6)
    assert result["params_max_diff_8_vs_1"] < 1e-5


def test_single_device_process_matches_the_one_device_mesh_run(eight_devices):
    """The same run in this 1-device process gives the 8-device process's 1-device curve."""
    result, _, losses = eight_devices
    np.testing.assert_allclose(losses, result["loss_curve_1"], rtol=1e-6)


def test_gradient_accumulation_matches_one_big_batch(eight_devices):
    result, _, _ = eight_devices
    assert result["accumulation_max_diff"] < 1e-5


def test_checkpoints_move_between_device_counts(eight_devices):
    result, root, _ = eight_devices
    # 1 device -> 8 devices (restored in the subprocess, replicated on all 8).
    assert result["restore_1_on_8_max_diff"] == 0.0
    assert result["restored_devices"] == 8 and result["restored_epoch"] == 3
    # 8 devices -> 1 device (restored here).
    params, tx, _, _ = check.setup()
    target = parallel.replicate(steps.create_train_state(params, tx), parallel.make_mesh(1))
    restored, progress = Checkpoints(root / "ckpt8").restore(target)
    saved = np.load(root / "params8.npz")
    for i, leaf in enumerate(jax.tree.leaves(restored.params)):
        np.testing.assert_array_equal(np.asarray(leaf), saved[f"arr_{i}"])
    assert progress.epoch == 1 and int(restored.step) == 6


def test_batch_rows_must_divide_over_devices():
    mesh = parallel.make_mesh(1)
    assert parallel.shard_batch({"x": np.zeros((3, 2))}, mesh)["x"].shape == (3, 2)
    with pytest.raises(ValueError, match="asked for 2 devices"):
        parallel.make_mesh(2)
