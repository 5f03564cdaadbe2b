"""The kernels under jit, vmap, grad, grad-of-grad, checkpoint, scan and sharding."""

import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stable_layers as sl
from helpers import sigmoid_ref, softplus_ref, xsin_grad_ref, xsin_ref

KERNELS = [
    ("softplus-vjp", functools.partial(sl.softplus, mode="vjp"), softplus_ref, sigmoid_ref),
    ("softplus-jvp", functools.partial(sl.softplus, mode="jvp"), softplus_ref, sigmoid_ref),
    ("softplus-input", functools.partial(sl.softplus, residual="input"), softplus_ref, sigmoid_ref),
    ("xsin-vjp", sl.xsin, xsin_ref, xsin_grad_ref),
    ("xsin-jvp", functools.partial(sl.xsin, mode="jvp"), xsin_ref, xsin_grad_ref),
]
X = jnp.linspace(-20.0, 20.0, 24, dtype=jnp.float64).reshape(4, 6)


@pytest.mark.parametrize("name,f,ref,dref", KERNELS, ids=[k[0] for k in KERNELS])
def test_jit_vmap_grad(name, f, ref, dref):
    x64 = np.asarray(X)
    np.testing.assert_allclose(jax.jit(f)(X), ref(x64), rtol=1e-13)
    np.testing.assert_allclose(jax.vmap(f)(X), ref(x64), rtol=1e-13)
    g = jax.jit(jax.vmap(jax.vmap(jax.grad(f))))(X)
    np.testing.assert_allclose(g, dref(x64), rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("name,f,ref,dref", KERNELS, ids=[k[0] for k in KERNELS])
def test_checkpoint_and_scan(name, f, ref, dref):
    def loss(x):
        return jnp.sum(f(x) * jnp.cos(x))

    expected = jax.grad(loss)(X)
    np.testing.assert_allclose(jax.grad(jax.checkpoint(loss))(X), expected, rtol=1e-14)

    def body(c, xrow):
        return c + jnp.sum(f(xrow) * jnp.cos(xrow)), f(xrow)

    def scanned(x):
        total, ys = jax.lax.scan(body, jnp.zeros((), x.dtype), x)
        return total

    np.testing.assert_allclose(jax.grad(scanned)(X), expected, rtol=1e-13)
    np.testing.assert_allclose(jax.lax.scan(body, 0.0, X)[1], ref(np.asarray(X)), rtol=1e-13)


def test_grad_of_grad_under_jit_and_vmap():
    f = jax.jit(jax.vmap(jax.grad(jax.grad(sl.softplus))))
    x = jnp.array([-30.0, 0.0, 30.0], jnp.float64)
    np.testing.assert_allclose(f(x), sigmoid_ref(x) * sigmoid_ref(-np.asarray(x)), rtol=1e-13)


SHARDING_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import stable_layers as sl

    assert jax.device_count() == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    sharding = NamedSharding(mesh, P("data", "model"))
    x = jnp.linspace(-100.0, 100.0, 64, dtype=jnp.float32).reshape(16, 4)
    xs = jax.device_put(x, sharding)
    beta = jax.device_put(jnp.full((4,), 1.5, jnp.float32), NamedSharding(mesh, P("model")))

    for f in [sl.softplus, lambda x: sl.softplus(x, mode="jvp"), sl.xsin,
              lambda x: sl.softplus(x, beta=beta)]:
        y = jax.jit(f)(xs)
        g = jax.jit(jax.grad(lambda x: jnp.sum(f(x))))(xs)
        assert y.sharding.is_equivalent_to(sharding, 2), y.sharding
        assert g.sharding.is_equivalent_to(sharding, 2), g.sharding
        # (XLA may vectorise sin differently per shard: equal to float32 rounding.)
        np.testing.assert_allclose(np.asarray(y), np.asarray(f(x)), rtol=1e-6)
        g_ref = jax.grad(lambda x: jnp.sum(f(x)))(x)
        np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-6, atol=1e-6)
    gb = jax.jit(jax.grad(lambda b: jnp.sum(sl.softplus(xs, beta=b))))(beta)
    ref = jax.grad(lambda b: jnp.sum(sl.softplus(x, beta=b)))(jnp.full((4,), 1.5, jnp.float32))
    np.testing.assert_allclose(np.asarray(gb), np.asarray(ref), rtol=1e-5)
    print("sharded ok")
    """
)


def test_namedsharding_over_8_host_devices():
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    out = subprocess.run(
        [sys.executable, "-c", SHARDING_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "sharded ok" in out.stdout
