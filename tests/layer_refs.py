"""Helpers shared by the three framework test files: float64 references and comparisons."""

import jax
import jax.numpy as jnp
import numpy as np

F32, F64, BF16 = jnp.float32, jnp.float64, jnp.bfloat16


def ref_softplus(x, beta):
    """float64 log(1 + exp(βx)) / β, not through stable_layers."""
    return jnp.logaddexp(0.0, beta * x) / beta


def assert_tree_close(actual, ref, rtol, *, same_structure=True):
    """Leaves finite, of equal shapes, and close to the reference (float64) leaves.

    ``same_structure=False`` compares leaves only (an Equinox module against a plain pytree).
    """
    if same_structure:
        assert jax.tree.structure(actual) == jax.tree.structure(ref)
    a_leaves, r_leaves = jax.tree.leaves(actual), jax.tree.leaves(ref)
    assert len(a_leaves) == len(r_leaves)
    for a, r in zip(a_leaves, r_leaves):
        assert a.shape == r.shape
        assert np.all(np.isfinite(np.asarray(a, np.float64)))
        r = np.asarray(r, np.float64)
        np.testing.assert_allclose(
            np.asarray(a, np.float64), r, rtol=rtol, atol=rtol * np.abs(r).max()
        )


def big_inputs(n=32, d=2, seed=0):
    # x100: pre-activations reach the hundreds, where exp overflows float32 (x > 88.7).
    return jnp.asarray(100.0 * np.random.default_rng(seed).normal(size=(n, d)), F32)


def naive_overflows(h):
    """Whether the textbook log1p(exp(h)) is non-finite somewhere, in float32."""
    with np.errstate(over="ignore"):
        return not np.all(np.isfinite(np.log1p(np.exp(np.asarray(h, np.float32)))))
