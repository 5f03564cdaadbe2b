"""The seed entry points: stable_log1pexp (seed 000), custom_vjp_with_extra_residual (002)."""

import jax
import jax.numpy as jnp
import numpy as np
from helpers import sigmoid_ref, softplus_ref, xsin_grad_ref

import stable_layers as sl


def test_stable_log1pexp_worked_example():
    x = jnp.array([0.0, 1.0], jnp.float32)
    np.testing.assert_allclose(sl.stable_log1pexp(x), [0.693147, 1.313262], rtol=1e-6)
    g = jax.grad(lambda x: sl.stable_log1pexp(x).sum())(x)
    np.testing.assert_allclose(g, [0.5, 0.731059], rtol=1e-6)


def test_stable_log1pexp_is_finite_where_the_seed_forward_overflows():
    for dt, big in [(jnp.float32, 100.0), (jnp.float16, 12.0)]:
        x = jnp.array([-big, big, float(jnp.finfo(dt).max)], dt)
        assert not bool(jnp.all(jnp.isfinite(jnp.log1p(jnp.exp(x)))))  # the seed's forward
        y = sl.stable_log1pexp(x)
        g = jax.grad(lambda x: sl.stable_log1pexp(x).sum())(x)
        assert bool(jnp.all(jnp.isfinite(y))) and bool(jnp.all(jnp.isfinite(g)))
        x64 = np.asarray(x, np.float64)
        # (softplus(-100) = 3.7e-44 is subnormal in float32 and XLA flushes it to 0: atol.)
        kw = dict(rtol=1e-3, atol=float(jnp.finfo(dt).tiny))
        np.testing.assert_allclose(np.asarray(y, np.float64), softplus_ref(x64), **kw)
        np.testing.assert_allclose(np.asarray(g, np.float64), sigmoid_ref(x64), **kw)


def test_stable_log1pexp_saves_the_input():
    x = jnp.linspace(-3, 3, 5, dtype=jnp.float32)
    _, vjp = jax.vjp(sl.stable_log1pexp, x)
    leaves = [a for a in jax.tree_util.tree_leaves(vjp) if getattr(a, "shape", ()) == x.shape]
    assert len(leaves) == 1
    np.testing.assert_array_equal(leaves[0], x)


def test_custom_vjp_with_extra_residual():
    x = jnp.array([-3.0, 0.0, 0.5, 2.0, 10.0], jnp.float64)
    g = sl.custom_vjp_with_extra_residual(x)
    np.testing.assert_allclose(g, xsin_grad_ref(np.asarray(x)), rtol=1e-14)
    # It is the gradient of sum(x sin x), i.e. autodiff's answer.
    np.testing.assert_allclose(g, jax.grad(lambda x: jnp.sum(x * jnp.sin(x)))(x), rtol=1e-14)
    assert sl.custom_vjp_with_extra_residual(jnp.ones(3, jnp.float32)).dtype == jnp.float32
