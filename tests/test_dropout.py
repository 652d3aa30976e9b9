"""The model's dropout (`models.dropout`): rate rounded to k/256, kept fraction and
scaling checked against hand-computed binomial bounds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from theseus_jax.models.dropout import Dropout, dropout, dropout_rate


def test_rate_rounds_to_multiples_of_1_256():
    assert dropout_rate(0.1) == 26 / 256  # 25.6 -> 26: 0.1016
    assert dropout_rate(0.5) == 0.5
    assert dropout_rate(0.2) == 51 / 256
    assert dropout_rate(0.0) == 0.0 and dropout_rate(1.0) == 1.0


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_kept_fraction_and_scale(rate):
    n = 1 << 20
    x = jnp.full((64, n // 64), 3.0, jnp.float32)
    out = np.asarray(dropout(jax.random.key(0), x, rate))
    keep = 1 - round(256 * rate) / 256  # 230/256 for 0.1
    kept = out != 0
    sigma = np.sqrt(keep * (1 - keep) / n)  # binomial standard deviation of the kept fraction
    assert abs(kept.mean() - keep) < 3 * sigma
    np.testing.assert_allclose(out[kept], np.float32(3.0) / np.float32(keep), rtol=1e-6)
    # Neighbouring elements share a random word: their drops must still be independent.
    both = (~kept[:, 0::2] & ~kept[:, 1::2]).mean()
    pairs = n // 2
    p_both = (1 - keep) ** 2
    assert abs(both - p_both) < 3 * np.sqrt(p_both * (1 - p_both) / pairs)


def test_same_key_same_mask_other_key_other_mask():
    x = jnp.ones((3, 5, 7))  # 105 elements: not a multiple of the 4 bytes of a word
    a, b = dropout(jax.random.key(1), x, 0.5), dropout(jax.random.key(1), x, 0.5)
    np.testing.assert_array_equal(a, b)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert not np.array_equal(a, dropout(jax.random.key(2), x, 0.5))


def test_edge_rates_and_deterministic_module_are_exact():
    x = jax.random.normal(jax.random.key(0), (4, 8))
    np.testing.assert_array_equal(dropout(jax.random.key(0), x, 0.0), x)
    np.testing.assert_array_equal(dropout(jax.random.key(0), x, 1.0), np.zeros((4, 8)))
    np.testing.assert_array_equal(Dropout(0.0).apply({}, x, deterministic=False), x)  # needs no rng, as nn.Dropout
    module = Dropout(0.5)
    np.testing.assert_array_equal(module.apply({}, x, deterministic=True), x)
    trained = module.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(3)})
    assert 0 < (np.asarray(trained) == 0).sum() < x.size
