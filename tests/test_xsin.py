"""stable_layers.xsin: values, gradients and errors against float64 references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import FLOAT_DTYPES, np_dtype, slow_unless, sweep, xsin_grad_ref, xsin_ref
from jax.test_util import check_grads

import stable_layers as sl

RESIDUALS = ("derivative", "input_and_sin", "input")
MODES = ("vjp", "jvp")
POLICIES = [(r, m) for r in RESIDUALS for m in MODES]


def grad_of(f):
    return lambda x: jax.grad(lambda x: jnp.sum(f(x)))(x)


@pytest.mark.parametrize(
    "name", slow_unless(["float16", "bfloat16", "float32"], ("float16", "float32"))
)
@pytest.mark.parametrize("residual,mode", POLICIES)
def test_values_and_gradients_vs_float64(name, residual, mode):
    x = sweep(name, n=1 << 16, limit=50.0)
    x = x[np.abs(x.astype(np.float64)) < 1e4]  # where the XLA and numpy sin agree to an ulp
    xj = jnp.asarray(x)
    f = functools.partial(sl.xsin, residual=residual, mode=mode)
    y, g = f(xj), grad_of(f)(xj)
    assert y.dtype == xj.dtype and g.dtype == xj.dtype
    x64 = x.astype(np.float64)
    ref, gref = xsin_ref(x64), xsin_grad_ref(x64)
    # In units of the ulp of the terms' magnitude: exact cancellation at sin's zeros makes
    # relative error meaningless there; autodiff of x * jnp.sin(x) obeys the same bound.
    dt = np_dtype(name)
    unit = np.spacing(np.maximum(np.abs(x64), 1.0).astype(dt)).astype(np.float64)
    unit_g = np.spacing((1.0 + np.abs(x64)).astype(dt)).astype(np.float64)
    tol = 1.0 if name != "float32" else 4.0
    assert (np.abs(np.asarray(y, np.float64) - ref) / unit).max() <= tol
    assert (np.abs(np.asarray(g, np.float64) - gref) / unit_g).max() <= tol + 1
    # And against autodiff of the plain formula, computed the same way.
    auto = grad_of(lambda x: x * jnp.sin(x))
    if name == "float32":
        np.testing.assert_allclose(g, auto(xj), atol=4 * float(unit_g.max()))


@pytest.mark.slow
def test_float64_and_large_inputs_are_finite():
    for name in FLOAT_DTYPES:
        dt = np_dtype(name)
        fi = jnp.finfo(dt)
        pts = np.array(
            [0.0, float(fi.tiny), -float(fi.tiny), 1e3, -1e3, float(fi.max), -float(fi.max)],
            np.float64,
        ).astype(dt)
        for residual, mode in POLICIES:
            f = functools.partial(sl.xsin, residual=residual, mode=mode)
            y, g = f(jnp.asarray(pts)), grad_of(f)(jnp.asarray(pts))
            assert bool(jnp.all(jnp.isfinite(y))) and bool(jnp.all(jnp.isfinite(g))), (
                name,
                residual,
            )
            assert y.dtype == dt and g.dtype == dt
            assert float(y[0]) == 0.0 and float(g[0]) == 0.0


@pytest.mark.parametrize("residual,mode", POLICIES)
def test_nonfinite_inputs(residual, mode):
    f = functools.partial(sl.xsin, residual=residual, mode=mode)
    x = jnp.array([jnp.inf, -jnp.inf, jnp.nan], jnp.float32)
    # sin(±inf) is NaN, so x sin x there is undefined: NaN, like autodiff of x * jnp.sin(x).
    assert bool(jnp.all(jnp.isnan(f(x))))
    assert bool(jnp.all(jnp.isnan(grad_of(f)(x))))


@pytest.mark.slow
@pytest.mark.parametrize("residual", RESIDUALS)
def test_check_grads(residual):
    x = jnp.linspace(-5.0, 5.0, 7, dtype=jnp.float64)
    check_grads(functools.partial(sl.xsin, residual=residual), (x,), order=2, modes=["rev"])
    # Order 4 (forward and reverse) for the default policy; the jvp rule is the same code for
    # every policy but for which residual feeds the checkpointed tangent map, so order 2 there
    # (order 4 costs ~15 s of tracing per policy).
    check_grads(
        functools.partial(sl.xsin, residual=residual, mode="jvp"),
        (x,),
        order=4 if residual == "derivative" else 2,
        modes=["fwd", "rev"],
    )


def test_second_derivative_and_hessian():
    x = jnp.array([-2.0, 0.3, 4.0], jnp.float64)
    xs = np.asarray(x)
    d2 = 2 * np.cos(xs) - xs * np.sin(xs)
    for residual in RESIDUALS:
        for mode in MODES:
            f = functools.partial(sl.xsin, residual=residual, mode=mode)
            g2 = jax.vmap(jax.grad(jax.grad(f)))(x)
            np.testing.assert_allclose(g2, d2, rtol=1e-13)
        h = jax.hessian(lambda v: jnp.sum(sl.xsin(v, residual=residual, mode="jvp")))(x)
        np.testing.assert_allclose(h, np.diag(d2), rtol=1e-13, atol=1e-300)
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(sl.xsin, (x,), (x,))


@pytest.mark.slow
@pytest.mark.parametrize("name", FLOAT_DTYPES)
def test_policies_and_modes_agree(name):
    x = jnp.asarray(sweep(name, n=1 << 12, limit=20.0)[::16])
    base_y = sl.xsin(x)
    base_g = grad_of(sl.xsin)(x)
    for residual, mode in POLICIES:
        f = functools.partial(sl.xsin, residual=residual, mode=mode)
        np.testing.assert_array_equal(f(x), base_y)
        g = grad_of(f)(x)
        if residual == "derivative" or name in ("float32", "float64"):
            # The same formula in the same compute dtype: identical. (In half precision
            # "input_and_sin" rounds sin x to half first, "derivative" rounds the sum once.)
            np.testing.assert_allclose(
                g,
                base_g,
                rtol=0,
                atol=0 if residual == "derivative" else float(jnp.finfo(x.dtype).eps) * 64,
            )
        else:
            scale = 1 + np.abs(np.asarray(x, np.float64))
            err = np.abs(np.asarray(g, np.float64) - np.asarray(base_g, np.float64)) / scale
            assert err.max() <= 2 * float(jnp.finfo(x.dtype).eps)


@pytest.mark.parametrize("dtype", [jnp.int8, jnp.int32, jnp.uint8, jnp.bool_])
def test_integers_promote(dtype):
    y = sl.xsin(jnp.ones((2,), dtype))
    assert y.dtype == jax.nn.softplus(jnp.ones((2,), dtype)).dtype
    np.testing.assert_allclose(y, np.sin(1.0), rtol=1e-6)


def test_errors():
    with pytest.raises(TypeError, match="complex128"):
        sl.xsin(jnp.ones(2, jnp.complex128))
    with pytest.raises(
        ValueError, match="residual must be one of 'derivative', 'input_and_sin', 'input'"
    ):
        sl.xsin(jnp.ones(2), residual="output")
    with pytest.raises(ValueError, match="mode must be one of 'vjp', 'jvp'"):
        sl.xsin(jnp.ones(2), mode="rev")


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
@pytest.mark.parametrize("residual", RESIDUALS)
def test_half_precision_with_a_non_unit_cotangent(name, residual):
    """What each policy's half-precision residual costs once the cotangent is not 1.

    Error in ulps of |w| (1 + |x|), the size of the terms of w (sin x + x cos x): "input"
    recomputes everything in float32 and rounds once (0.5); "derivative" rounds the derivative
    to half precision before the multiply (measured 1.27); "input_and_sin" rounds sin x (0.73).
    """
    x = sweep(name)
    x = x[np.abs(x.astype(np.float64)) < 1e4]
    w = np.random.default_rng(0).uniform(0.5, 2.0, size=x.shape).astype(np_dtype(name))
    _, vjp = jax.vjp(functools.partial(sl.xsin, residual=residual), jnp.asarray(x))
    (g,) = vjp(jnp.asarray(w))
    assert g.dtype == np_dtype(name)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    ref = w64 * xsin_grad_ref(x64)
    unit = np.spacing((w64 * (1 + np.abs(x64))).astype(np_dtype(name))).astype(np.float64)
    err = (np.abs(np.asarray(g, np.float64) - ref) / unit).max()
    assert err <= {"input": 0.501, "input_and_sin": 0.8, "derivative": 1.35}[residual]
