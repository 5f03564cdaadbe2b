"""What the backward pass keeps: saved residuals per policy, and compiled MLP step memory."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import checkpoint_policies

import stable_layers as sl

try:  # public in newer JAX; the internal name has been stable since 0.4
    from jax.ad_checkpoint import saved_residuals
except ImportError:  # pragma: no cover - depends on the JAX version
    from jax._src.ad_checkpoint import saved_residuals


def residual_arrays(f, *args):
    """The residuals of the shape of the first argument (not scalars such as a beta)."""
    shape = jnp.shape(args[0])
    return [aval for aval, _ in saved_residuals(f, *args) if aval.shape == shape]


def vjp_leaves(f, x):
    """The arrays jax.vjp keeps for the backward pass, with the shape of x."""
    _, vjp = jax.vjp(f, x)
    return [a for a in jax.tree_util.tree_leaves(vjp) if getattr(a, "shape", None) == x.shape]


X = jnp.linspace(-3.0, 3.0, 64, dtype=jnp.float32).reshape(8, 8)


@pytest.mark.parametrize("mode", ["vjp", "jvp"])
@pytest.mark.parametrize("residual", ["output", "input"])
def test_softplus_saves_exactly_one_array(residual, mode):
    f = functools.partial(sl.softplus, residual=residual, mode=mode)
    assert len(residual_arrays(lambda x: jnp.sum(f(x)), X)) == 1
    (saved,) = vjp_leaves(f, X)
    np.testing.assert_array_equal(saved, f(X) if residual == "output" else X)


def test_jax_nn_softplus_and_plain_autodiff_keep_more():
    assert len(residual_arrays(lambda x: jnp.sum(jax.nn.softplus(x)), X)) == 2
    assert len(residual_arrays(lambda x: jnp.sum(x * jnp.sin(x)), X)) == 3


@pytest.mark.parametrize("mode", ["vjp", "jvp"])
def test_traced_beta_costs_the_input_too(mode):
    beta = jnp.float32(1.5)
    for residual, expect in [("output", 2), ("input", 1)]:
        f = lambda x, b: jnp.sum(sl.softplus(x, beta=b, residual=residual, mode=mode))  # noqa: E731
        assert len(residual_arrays(f, X, beta)) == expect


@pytest.mark.parametrize("mode", ["vjp", "jvp"])
@pytest.mark.parametrize("residual,count", [("derivative", 1), ("input_and_sin", 2), ("input", 1)])
def test_xsin_residual_counts(residual, count, mode):
    f = functools.partial(sl.xsin, residual=residual, mode=mode)
    assert len(residual_arrays(lambda x: jnp.sum(f(x)), X)) == count
    saved = vjp_leaves(f, X)
    assert len(saved) == count
    if residual == "derivative":
        np.testing.assert_allclose(saved[0], jnp.sin(X) + X * jnp.cos(X), rtol=1e-6)


def test_residuals_are_named_for_checkpoint_policies():
    for f, name in [(sl.softplus, "stable_layers.softplus"), (sl.xsin, "stable_layers.xsin")]:
        for mode in ("vjp", "jvp"):
            g = functools.partial(f, mode=mode)

            # A policy that saves only that name keeps exactly one array (the kernel's
            # residual); one naming something else keeps none and recomputes.
            def kept(policy_name):
                ck = jax.checkpoint(
                    lambda x: jnp.sum(g(jnp.sin(x))),
                    policy=checkpoint_policies.save_only_these_names(policy_name),
                )
                residuals = saved_residuals(ck, X)
                return [d for _, d in residuals if "from the argument" not in d]

            assert len(kept(name)) == 1, kept(name)
            assert len(kept("something.else")) == 0


def mlp_temp_bytes(act, depth=8, width=256, batch=512):
    keys = jax.random.split(jax.random.PRNGKey(0), depth)
    ws = [jax.random.normal(k, (width, width), jnp.float32) / 16 for k in keys]
    x = jnp.ones((batch, width), jnp.float32)

    def loss(ws, x):
        h = x
        for w in ws:
            h = act(h @ w)
        return jnp.mean(h**2)

    step = jax.jit(jax.grad(loss))
    return step.lower(ws, x).compile().memory_analysis().temp_size_in_bytes


def test_mlp_step_memory_matches_identity_and_beats_jax_nn_softplus():
    identity = mlp_temp_bytes(lambda h: h)
    jax_sp = mlp_temp_bytes(jax.nn.softplus)
    for mode in ("vjp", "jvp"):
        ours = mlp_temp_bytes(functools.partial(sl.softplus, mode=mode))
        assert ours <= 1.05 * identity, (mode, ours, identity)
        assert ours <= 0.7 * jax_sp, (mode, ours, jax_sp)
