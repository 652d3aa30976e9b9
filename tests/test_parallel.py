"""Data parallelism on simulated CPU devices and hosts, checked against one device.

The multi-device runs happen in subprocesses (tests/multidevice_check.py): the device
count is fixed when JAX starts, and this process keeps its single device.
"""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import multidevice_check as check  # noqa: E402

from theseus_jax.compression import theseus  # noqa: E402
from theseus_jax.experiments.checkpoints import Checkpoints, Progress  # noqa: E402
from theseus_jax.training import parallel, steps  # noqa: E402

SCRIPT = str(Path(check.__file__))


def _env(devices: int, **extra: str) -> dict[str, str]:
    """`devices` simulated CPU devices; LLVM optimisation off (compiling is most of the
    run's time: a third less)."""
    flags = f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
    return dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu", **extra)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _result(returncode: int, stdout: str, stderr: str) -> dict:
    """The JSON line a check process prints last."""
    assert returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The 1-device run here (checkpointed), then the same run on 8 devices and on
    2 hosts x 2 devices, each restoring the 1-device checkpoint."""
    root = tmp_path_factory.mktemp("parallel")
    losses, state, _ = check.train(1)
    ckpt = Checkpoints(root / "ckpt_one")
    ckpt.save_best(int(state.step), state.params)
    ckpt.save(int(state.step), state, Progress(epoch=3, best={"step": int(state.step)}))  # awaiting its test
    ckpt.close()
    one = {"loss_curve": losses, "params": check.host_leaves(state.params)}

    devices = subprocess.run(
        [sys.executable, SCRIPT, "devices", str(root), str(root / "ckpt_one")],
        env=_env(8), capture_output=True, text=True, timeout=600,
    )
    port = _free_port()
    hosts = [
        subprocess.Popen(
            [sys.executable, SCRIPT, "hosts", str(root), str(root / "ckpt_one")],
            env=_env(2, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    host_outputs = [proc.communicate(timeout=600) for proc in hosts]
    host_results = [_result(proc.returncode, *out) for proc, out in zip(hosts, host_outputs)]
    return {
        "root": root,
        "one": one,
        "devices": _result(devices.returncode, devices.stdout, devices.stderr),
        "hosts": host_results[0],
    }


@pytest.mark.slow  # 30-90 s; the default suite stays under 15 minutes on 2 cores
@pytest.mark.parametrize("mode", ["devices", "hosts"])
def test_run_matches_the_one_device_run(runs, mode):
    """Same global batches and seed: same loss curve and final parameters to float32
    tolerance on 8 devices and on 2 hosts x 2 devices."""
    result = runs[mode]
    assert result["devices"] == (8 if mode == "devices" else 4)
    assert result["processes"] == (1 if mode == "devices" else 2)
    assert result["batch_split_over"] == [["data"], result["devices"]]
    # Every host holds half the global batch of 16 rows.
    assert result["local_rows"] == 16 // result["processes"]
    np.testing.assert_allclose(result["loss_curve"], runs["one"]["loss_curve"], rtol=1e-5)
    saved = np.load(runs["root"] / f"params_{mode}.npz")
    assert check.max_diff(runs["one"]["params"], [saved[f"arr_{i}"] for i in range(len(saved.files))]) < 1e-5


def test_gradient_accumulation_matches_one_big_batch(runs):
    """4 micro-batches (uneven padding rows) on 8 devices give the one-batch update, and
    no micro-batch moves between devices: the only collective is the gradient all-reduce."""
    result = runs["devices"]
    assert result["accumulation_max_diff"] < 1e-5
    assert set(result["accumulation_collectives"]) == {"all-reduce"}


@pytest.mark.parametrize("mode", ["devices", "hosts"])
def test_one_device_checkpoint_restores_on_several(runs, mode):
    """The state and the selected step's parameters (written by `save_best`, awaiting their
    test evaluation) restore onto every device of the mesh."""
    result = runs[mode]
    assert result["restored_devices"] == result["restored_kept_devices"] == result["devices"]
    assert result["restored_epoch"] == 3 and result["restored_step"] == 4
    for name in ("restored", "restored_kept"):
        restored = np.load(runs["root"] / f"{name}_{mode}.npz")
        assert check.max_diff(runs["one"]["params"], [restored[f"arr_{i}"] for i in range(len(restored.files))]) == 0.0


@pytest.mark.parametrize("mode", ["devices", "hosts"])
def test_several_device_checkpoint_restores_on_one(runs, mode):
    restored, progress, kept = check.restore_on_this_mesh(runs["root"] / f"ckpt_{mode}")
    saved = np.load(runs["root"] / f"params_{mode}.npz")
    for params in (restored.params, kept):
        assert check.max_diff(check.host_leaves(params), [saved[f"arr_{i}"] for i in range(len(saved.files))]) == 0.0
    assert progress.epoch == 1 and int(restored.step) == 4
    assert jax.tree.leaves(restored.params)[0].sharding.device_set == set(jax.devices()[:1])


def test_local_batch_is_the_whole_batch_on_one_process():
    mesh = parallel.make_mesh(1)
    batch = {"x": np.arange(6).reshape(3, 2)}
    np.testing.assert_array_equal(parallel.local_batch(batch, mesh)["x"], batch["x"])
    assert parallel.shard_batch(batch, mesh)["x"].shape == (3, 2)
    with pytest.raises(ValueError, match="disagree"):
        parallel.local_batch({"x": np.zeros(3), "y": np.zeros(4)}, mesh)
    with pytest.raises(ValueError, match="asked for 2 devices"):
        parallel.make_mesh(2)


def test_init_distributed_is_a_no_op_without_a_cluster(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert parallel.init_distributed() is False


def test_micro_batches_are_strided():
    x = jnp.arange(8)
    np.testing.assert_array_equal(steps.micro_batches(x, 4), [[0, 4], [1, 5], [2, 6], [3, 7]])
    with pytest.raises(ValueError, match="micro-batches"):
        steps.micro_batches(x, 3)


def test_remat_keeps_parameter_names_and_results():
    """`remat=True` leaves the parameter tree (layer_i, predecessor_j, successor_i) and the
    loss and gradients of a compression step under nn.cond as they were."""
    params, _, mask, _ = check.setup(check.NO_DROPOUT)
    batch = next(check.batches(1, 4))
    replace_mask = jnp.array([True, False])

    def loss_and_grads(config):
        model = theseus.theseus_model(config, "classification", 2)
        shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
        assert jax.tree.structure(shapes) == jax.tree.structure(params)

        def loss(p):
            logits = model.apply({"params": p}, batch["input_ids"], batch["attention_mask"],
                                 batch["token_type_ids"], deterministic=False, replace_mask=replace_mask)
            return steps.classification_loss(logits, batch)[0]

        return jax.jit(jax.value_and_grad(loss))(params)

    (loss, grads), (loss_remat, grads_remat) = loss_and_grads(check.NO_DROPOUT), loss_and_grads(
        check.NO_DROPOUT.replace(remat=True)
    )
    assert "remat" not in check.NO_DROPOUT.to_hf_dict()
    np.testing.assert_allclose(loss_remat, loss, rtol=1e-6)
    assert check.max_diff(jax.tree.leaves(grads), jax.tree.leaves(grads_remat)) < 1e-6
    encoder = grads["bert"]["encoder"]
    assert float(jnp.abs(encoder["successor_0"]["output"]["dense"]["kernel"]).sum()) > 0  # taken branch
    assert float(jnp.abs(encoder["predecessor_0"]["output"]["dense"]["kernel"]).sum()) == 0  # skipped


def test_bfloat16_computes_matmuls_in_bfloat16_and_softmax_and_logits_in_float32():
    params, _, _, _ = check.setup()
    batch = next(check.batches(1, 4))
    outputs = {}
    for dtype in ("float32", "bfloat16"):
        model = theseus.theseus_model(check.CFG.replace(dtype=dtype), "classification", 2)

        def forward(p, model=model):
            return model.apply({"params": p}, batch["input_ids"], batch["attention_mask"],
                               batch["token_type_ids"], replace_mask=jnp.array([True, False]))

        outputs[dtype] = (jax.jit(forward)(params), str(jax.make_jaxpr(forward)(params)))
    logits, jaxpr = outputs["bfloat16"]
    assert logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, outputs["float32"][0], atol=5e-2)
    exps = re.findall(r"(\w+)\[[\d,]*\] = exp ", jaxpr)  # softmax, in both cond branches
    assert exps and set(exps) == {"f32"}
    assert re.search(r"bf16\[[\d,]*\] = dot_general", jaxpr)
