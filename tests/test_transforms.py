"""The kernels under jit, vmap, grad, grad-of-grad, checkpoint, scan and sharding.

Every entry of ``tests/registry.py``, every policy and mode, in float64 against the entry's
references; softplus with a non-unit and a traced β as extra cases.
"""

import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import registry
from helpers import sigmoid_ref, softplus_ref

import stable_layers as sl


def _kernels():
    """(id, f, reference, derivative, second derivative) for every entry x policy x mode."""
    out = []
    for case in registry.cases():
        entry, residual, mode = case.values
        f = functools.partial(entry.fn, residual=residual, mode=mode)
        dref, d2ref = entry.derivative, _second(entry)
        if residual == "output" and entry.output_slope is not None:
            # The slope the float64 output implies (and its derivative): y + α keeps e^x's
            # absolute, not relative, accuracy where y nears -α, by design (issue 16).
            def output_of(x, f=f):
                return np.asarray(jax.jit(f)(jnp.asarray(x)))

            dref = lambda x, e=entry, y=output_of: e.output_slope(y(x))  # noqa: E731
            d2ref = lambda x, e=entry, y=output_of: e.second_from_output(y(x))  # noqa: E731
        out.append(pytest.param(f, entry.reference, dref, d2ref, id=case.id))
    # softplus with a non-unit (static) β.
    for mode in ("vjp", "jvp"):
        out.append(
            pytest.param(
                functools.partial(sl.softplus, beta=2.5, mode=mode),
                lambda x: softplus_ref(x, 2.5),
                lambda x: sigmoid_ref(2.5 * np.asarray(x)),
                lambda x: (
                    2.5 * sigmoid_ref(2.5 * np.asarray(x)) * sigmoid_ref(-2.5 * np.asarray(x))
                ),
                id=f"softplus-beta2.5-{mode}",
            )
        )
    return out


def _second(entry):
    if entry.second_derivative is not None:
        return entry.second_derivative

    def central_difference(x, h=1e-6):
        x = np.asarray(x, np.float64)
        return (entry.derivative(x + h) - entry.derivative(x - h)) / (2 * h)

    return central_difference


KERNELS = _kernels()
# checkpoint and scan: every entry and mode with its default policy, and softplus "input".
DEFAULTS = [
    k
    for k in KERNELS
    if k.id
    in {f"{e.name}-{next(iter(e.residuals))}-{m}" for e in registry.ENTRIES for m in ("vjp", "jvp")}
    or k.id == "softplus-input-vjp"
]
X = jnp.linspace(-20.0, 20.0, 24, dtype=jnp.float64).reshape(4, 6)


def _vjp_by_default(params):
    """The same kernels; mode="jvp" ones under -m slow (the rules share their math)."""
    return [
        p if p.id.endswith("-vjp") else pytest.param(*p.values, id=p.id, marks=pytest.mark.slow)
        for p in params
    ]


@pytest.mark.parametrize("f,ref,dref,d2ref", _vjp_by_default(KERNELS))
def test_jit_vmap_grad(f, ref, dref, d2ref):
    x64 = np.asarray(X)
    np.testing.assert_allclose(jax.jit(f)(X), ref(x64), rtol=1e-13)
    np.testing.assert_allclose(jax.vmap(f)(X), ref(x64), rtol=1e-13)
    g = jax.jit(jax.vmap(jax.vmap(jax.grad(f))))(X)
    np.testing.assert_allclose(g, dref(x64), rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("f,ref,dref,d2ref", _vjp_by_default(KERNELS))
def test_grad_of_grad_under_jit_and_vmap(f, ref, dref, d2ref):
    x = jnp.array([-30.0, -2.0, 0.0, 0.3, 4.0, 30.0], jnp.float64)
    g2 = jax.jit(jax.vmap(jax.grad(jax.grad(f))))(x)
    np.testing.assert_allclose(g2, d2ref(np.asarray(x)), rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("f,ref,dref,d2ref", _vjp_by_default(DEFAULTS))
def test_checkpoint_and_scan(f, ref, dref, d2ref):
    def loss(x):
        return jnp.sum(f(x) * jnp.cos(x))

    # Jitted: eager grad dispatches op by op, several times slower to run for the same check.
    expected = jax.jit(jax.grad(loss))(X)
    np.testing.assert_allclose(jax.jit(jax.grad(jax.checkpoint(loss)))(X), expected, rtol=1e-14)

    def body(c, xrow):
        return c + jnp.sum(f(xrow) * jnp.cos(xrow)), f(xrow)

    def scanned(x):
        total, ys = jax.lax.scan(body, jnp.zeros((), x.dtype), x)
        return total

    np.testing.assert_allclose(jax.jit(jax.grad(scanned))(X), expected, rtol=1e-13)
    ys = jax.jit(lambda x: jax.lax.scan(body, 0.0, x)[1])(X)
    np.testing.assert_allclose(ys, ref(np.asarray(X)), rtol=1e-13)


def test_softplus_grad_of_grad_at_large_x():
    """The second derivative keeps the e^-x where lax.logistic's rule rounds it to 0."""
    f = jax.jit(jax.vmap(jax.grad(jax.grad(sl.softplus))))
    x = jnp.array([-30.0, 0.0, 30.0], jnp.float64)
    np.testing.assert_allclose(f(x), sigmoid_ref(x) * sigmoid_ref(-np.asarray(x)), rtol=1e-13)


SHARDING_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import registry
    import stable_layers as sl

    assert jax.device_count() == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    sharding = NamedSharding(mesh, P("data", "model"))
    x = jnp.linspace(-100.0, 100.0, 64, dtype=jnp.float32).reshape(16, 4)
    xs = jax.device_put(x, sharding)
    beta = jax.device_put(jnp.full((4,), 1.5, jnp.float32), NamedSharding(mesh, P("model")))

    kernels = [(e.fn, mode) for e in registry.ENTRIES for mode in ("vjp", "jvp")]
    fs = [lambda x, fn=fn, mode=mode: fn(x, mode=mode) for fn, mode in kernels]
    for f in fs + [lambda x: sl.softplus(x, beta=beta)]:
        value_and_grad = jax.jit(lambda x: (f(x), jax.grad(lambda x: jnp.sum(f(x)))(x)))
        y, g = value_and_grad(xs)
        assert y.sharding.is_equivalent_to(sharding, 2), y.sharding
        assert g.sharding.is_equivalent_to(sharding, 2), g.sharding
        # (XLA may vectorise sin differently per shard: equal to float32 rounding.)
        y_ref, g_ref = value_and_grad(x)
        np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-6, atol=1e-6)
    gb = jax.jit(jax.grad(lambda b: jnp.sum(sl.softplus(xs, beta=b))))(beta)
    ref = jax.grad(lambda b: jnp.sum(sl.softplus(x, beta=b)))(jnp.full((4,), 1.5, jnp.float32))
    np.testing.assert_allclose(np.asarray(gb), np.asarray(ref), rtol=1e-5)
    print("sharded ok", len(fs) + 1)
    """
)


def test_namedsharding_over_8_host_devices():
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    script = SHARDING_SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert f"sharded ok {2 * len(registry.ENTRIES) + 1}" in out.stdout
