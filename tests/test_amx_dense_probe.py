"""The AMX probe's Dense products on torch's bfloat16 kernels agree with the float32 model to
bfloat16's precision, in the forward and in every gradient (reference: the plain model in XLA)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("torch")
from benchmarks import amx_dense_probe  # noqa: E402
from benchmarks.training_workers import jax_inputs  # noqa: E402
from theseus_jax.models.bert import BertConfig, BertForSequenceClassification  # noqa: E402


def test_routed_products_match_float32_to_bfloat16_precision():
    config = BertConfig(vocab_size=1200, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForSequenceClassification(config)
    batch = jax_inputs({"batch": 3, "length": 16, "model": {"vocab_size": config.vocab_size}, "objective": "classification"})
    params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]

    def loss(p):
        logits = model.apply({"params": p}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        return jnp.sum(logits**2), logits

    reference, reference_logits = jax.grad(loss, has_aux=True)(params)
    with amx_dense_probe.dense_products(amx_dense_probe.torch_matmul):
        routed, routed_logits = jax.jit(jax.grad(loss, has_aux=True))(params)
    np.testing.assert_allclose(routed_logits, reference_logits, rtol=0.05, atol=0.02 * np.abs(reference_logits).max())
    kernels = [path for path, _ in jax.tree_util.tree_leaves_with_path(reference) if "kernel" in jax.tree_util.keystr(path)]
    assert len(kernels) >= 2 * 6  # query, key, value, attention output, intermediate, output per layer
    largest = max(float(np.abs(g).max()) for g in jax.tree.leaves(reference))
    routed_leaves = dict(jax.tree_util.tree_leaves_with_path(routed))
    for path, want in jax.tree_util.tree_leaves_with_path(reference):
        # The key's bias has no gradient (softmax ignores a shift): its leaf holds rounding noise only.
        scale = max(float(np.abs(want).max()), 1e-3 * largest)
        error = float(np.abs(np.asarray(routed_leaves[path]) - np.asarray(want)).max())
        assert error <= 0.03 * scale, (jax.tree_util.keystr(path), error, scale)


def test_the_timed_sides_differ_only_in_the_dense_products():
    """compile_sides builds the float32 side plainly and the torch side under the swap: both
    compute the same logits to bfloat16's precision, and only the torch side rounds."""
    case = {"kind": "train", "objective": "classification", "batch": 2, "length": 16, "dtype": "float32",
            "model": {"vocab_size": 1200, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                      "intermediate_size": 128}}
    sides = amx_dense_probe.compile_sides(case)
    plain, routed = (np.asarray(sides[name][0].logits()) for name in ("float32", "torch"))
    reference = BertForSequenceClassification(BertConfig(**case["model"]))
    params = reference.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    batch = jax_inputs(case)
    want = reference.apply({"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    np.testing.assert_allclose(plain, want, rtol=1e-5, atol=1e-6)
    assert 0 < np.abs(routed - want).max() <= 0.02 * np.abs(want).max() + 1e-3
    for forward, step in sides.values():
        assert forward() > 0 and step() > 0
