"""stable_layers.softplus: values, gradients and errors against independent references."""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
from helpers import (
    FLOAT_DTYPES,
    np_dtype,
    sigmoid_ref,
    slow_unless,
    softplus_ref,
    sweep,
    ulp_error,
)
from jax.test_util import check_grads

import stable_layers as sl

RESIDUALS = ("output", "input")
MODES = ("vjp", "jvp")
POLICIES = [(r, m) for r in RESIDUALS for m in MODES]


def grad_of(f):
    """Elementwise derivative of an elementwise f, through reverse mode."""
    return lambda x: jax.grad(lambda x: jnp.sum(f(x)))(x)


def naive(x):
    return jnp.log1p(jnp.exp(x))


# ------------------------------------------------------------------------------ accuracy


@pytest.mark.parametrize("name", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("residual", RESIDUALS)
def test_accuracy_vs_float64_reference(name, residual):
    """Dense sweep (every finite value for half precision): max ulp error vs float64."""
    x = sweep(name)
    xj = jnp.asarray(x)
    f = functools.partial(sl.softplus, residual=residual)
    err = ulp_error(f(xj), softplus_ref(x), name).max()
    gerr = ulp_error(grad_of(f)(xj), sigmoid_ref(x), name).max()
    jax_err = ulp_error(jax.nn.softplus(xj), softplus_ref(x), name).max()
    jax_gerr = ulp_error(grad_of(jax.nn.softplus)(xj), sigmoid_ref(x), name).max()
    # Never worse than jax.nn.softplus on the same inputs, in any dtype.
    assert err <= jax_err
    assert gerr <= jax_gerr
    if name == "float32":
        # jax.nn.softplus measures 2.82 / 8.44 here; XLA's float32 log1p alone is 2.35 ulp.
        assert err <= 3.0
        assert gerr <= 3.0
    else:
        # Computed in float32 and rounded once: within 1 ulp. With residual="output" the
        # gradient is a function of the output, which is itself rounded to half precision,
        # which costs up to ~0.3 ulp more (measured 1.27 float16, 1.00 bfloat16).
        assert err <= 0.501  # correctly rounded, up to float32's own ~3 ulp
        assert gerr <= (1.0 if residual == "input" else 1.3)


@pytest.mark.parametrize("beta", [0.5, 2.0, 7.0])
@pytest.mark.parametrize("residual", RESIDUALS)
def test_accuracy_with_beta(beta, residual):
    x = sweep("float32", n=1 << 16)
    # For beta != 1 the product z = beta*x is rounded (as in every implementation that forms
    # it, PyTorch's too) by up to |z| eps/2, and exp turns that into a relative error of
    # |z| eps/2 in the e^z tail: up to |z| ulps. So the bound is 4 + |z| ulps (4: the
    # rounding of y, of beta*y, and the final one, with residual="output").
    xj = jnp.asarray(x)
    f = functools.partial(sl.softplus, beta=beta, residual=residual)
    z = np.abs(beta * x.astype(np.float64))
    with np.errstate(over="ignore"):
        ref, gref = softplus_ref(x, beta), sigmoid_ref(beta * x.astype(np.float64))
    assert np.all(ulp_error(f(xj), ref, "float32") <= 4 + z)
    g = np.asarray(grad_of(f)(xj), np.float64)
    # Where beta*y falls below finfo.tiny (sigmoid(beta x) < beta*tiny ~ 1e-38), y is
    # subnormal and XLA flushes it to zero, so residual="output" returns a gradient of 0 there:
    # an absolute error below beta * tiny. Everywhere else, ulps.
    tiny = float(np.finfo(np.float32).tiny)
    normal = gref >= beta * tiny * 4
    assert np.all(ulp_error(g[normal], gref[normal], "float32") <= 4 + z[normal])
    assert np.abs(g[~normal] - gref[~normal]).max() <= beta * tiny * 4


def test_float64_accuracy_vs_mpmath():
    mpmath.mp.dps = 40
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            np.linspace(-50, 50, 801),
            rng.uniform(-800, 800, 100),
            np.logspace(-300, 308, 50),
            -np.logspace(-300, 308, 50),
        ]
    )
    ref = np.array([float(mpmath.log1p(mpmath.exp(mpmath.mpf(v)))) for v in x])
    gref = np.array([float(1 / (1 + mpmath.exp(-mpmath.mpf(v)))) for v in x])
    xj = jnp.asarray(x, jnp.float64)
    jax_gerr = ulp_error(grad_of(jax.nn.softplus)(xj), gref, "float64").max()
    for residual in RESIDUALS:
        f = functools.partial(sl.softplus, residual=residual)
        assert ulp_error(f(xj), ref, "float64").max() <= 2.0
        gerr = ulp_error(grad_of(f)(xj), gref, "float64").max()
        assert gerr <= 3.0
        assert gerr <= jax_gerr  # jax.nn.softplus: 31 ulp on this sweep


# ------------------------------------------------------------------------------ edge cases


@pytest.mark.parametrize("name", slow_unless(FLOAT_DTYPES, ("float16", "float32")))
@pytest.mark.parametrize("residual,mode", POLICIES)
def test_edge_points(name, residual, mode):
    dt = np_dtype(name)
    fi = jnp.finfo(dt)
    big = float(fi.max)
    pts = np.array(
        [0.0, float(fi.tiny), -float(fi.tiny), 30.0, -30.0, 1e4, -1e4, big, -big, big / 2],
        dtype=np.float64,
    ).astype(dt)
    x = jnp.asarray(pts)
    f = functools.partial(sl.softplus, residual=residual, mode=mode)
    y, g = f(x), grad_of(f)(x)
    assert y.dtype == dt and g.dtype == dt
    assert bool(jnp.all(jnp.isfinite(y))) and bool(jnp.all(jnp.isfinite(g)))
    ref = softplus_ref(pts.astype(np.float64))
    assert ulp_error(y, ref, name).max() <= 3.0
    assert ulp_error(g, sigmoid_ref(pts.astype(np.float64)), name).max() <= 3.0
    # The gradient at exactly 0 is exactly 1/2 (a max(x, 0)-based rule gets 0 or 1 there).
    assert float(g[0]) == 0.5
    assert np.all(np.asarray(g, np.float64) >= 0) and np.all(np.asarray(g, np.float64) <= 1)


@pytest.mark.parametrize("name", slow_unless(FLOAT_DTYPES, ("float16", "float32")))
@pytest.mark.parametrize("residual,mode", POLICIES)
def test_infinities_and_nan(name, residual, mode):
    dt = np_dtype(name)
    x = jnp.asarray(np.array([np.inf, -np.inf, np.nan], dtype=dt))
    f = functools.partial(sl.softplus, residual=residual, mode=mode)
    y = np.asarray(f(x), np.float64)
    g = np.asarray(grad_of(f)(x), np.float64)
    assert y[0] == np.inf and g[0] == 1.0
    assert y[1] == 0.0 and g[1] == 0.0
    assert np.isnan(y[2]) and np.isnan(g[2])


def test_naive_formula_is_nonfinite_exactly_where_ours_is_finite():
    for name, overflow_at in [("float32", 88.72284), ("float16", 11.09)]:
        x = sweep(name) if name == "float16" else sweep(name, n=1 << 16)
        xj = jnp.asarray(x)
        naive_y, naive_g = naive(xj), grad_of(naive)(xj)
        ours_y, ours_g = sl.softplus(xj), grad_of(sl.softplus)(xj)
        bad = ~np.isfinite(np.asarray(naive_y, np.float64)) | ~np.isfinite(
            np.asarray(naive_g, np.float64)
        )
        x64 = x.astype(np.float64)
        # The naive forward overflows exactly above log(finfo.max)...
        assert bad.any()
        assert np.all(bad[x64 > overflow_at + 0.1]) and not np.any(bad[x64 < overflow_at - 0.1])
        # ...and ours is finite at every one of those points (and everywhere else).
        assert np.all(np.isfinite(np.asarray(ours_y, np.float64)))
        assert np.all(np.isfinite(np.asarray(ours_g, np.float64)))


@pytest.mark.slow
def test_jax_edge_cases_from_nn_test():
    """The cases of jax's tests/nn_test.py testSoftplusGrad*, with our kernel."""
    for mode in MODES:
        f = functools.partial(sl.softplus, mode=mode)
        g = jax.grad(f)
        assert float(g(jnp.float32(0.0))) == 0.5
        assert float(g(jnp.float32(-jnp.inf))) == 0.0
        assert float(g(jnp.float32(jnp.inf))) == 1.0
        assert float(g(jnp.float32(1e4))) == 1.0
        assert np.isnan(float(g(jnp.float32(jnp.nan))))
        assert float(f(jnp.float32(jnp.inf))) == np.inf
        assert float(f(jnp.float32(-jnp.inf))) == 0.0
    # order-4 derivatives at 1e-8 (testSoftplusGradZero / testSoftplusGradNan).
    check_grads(functools.partial(sl.softplus, mode="jvp"), (1e-8,), order=4, rtol=1e-2)


# ------------------------------------------------------------------------------ derivatives


@pytest.mark.parametrize("residual", RESIDUALS)
def test_check_grads_vjp_mode_order2_reverse(residual):
    f = functools.partial(sl.softplus, residual=residual, mode="vjp")
    x = jnp.linspace(-6.0, 6.0, 13, dtype=jnp.float64)
    check_grads(f, (x,), order=2, modes=["rev"])
    fb = lambda x, b: sl.softplus(x, beta=b, residual=residual)  # noqa: E731
    check_grads(fb, (x, jnp.float64(1.7)), order=2, modes=["rev"])


@pytest.mark.slow
@pytest.mark.parametrize("residual", RESIDUALS)
def test_check_grads_jvp_mode_order4(residual):
    f = functools.partial(sl.softplus, residual=residual, mode="jvp")
    x = jnp.linspace(-4.0, 4.0, 9, dtype=jnp.float64)
    check_grads(f, (x,), order=4, modes=["fwd", "rev"])
    fb = lambda x, b: sl.softplus(x, beta=b, residual=residual, mode="jvp")  # noqa: E731
    check_grads(fb, (x, jnp.float64(0.8)), order=2, modes=["fwd", "rev"])


@pytest.mark.parametrize("residual,mode", POLICIES)
def test_second_derivative_is_accurate_where_jax_rounds_to_zero(residual, mode):
    f = functools.partial(sl.softplus, residual=residual, mode=mode)
    true = float(sigmoid_ref(30.0) * sigmoid_ref(-30.0))  # 9.357622968840175e-14
    for dt in (jnp.float32, jnp.float64):
        d2 = float(jax.grad(jax.grad(f))(dt(30.0)))
        assert d2 == pytest.approx(true, rel=1e-5)
    assert float(jax.grad(jax.grad(jax.nn.softplus))(jnp.float32(30.0))) == 0.0  # JAX #40387
    # f''(0) = beta/4, and third derivative 0 at 0 (f'' is even about 0).
    fb = functools.partial(sl.softplus, beta=3.0, residual=residual, mode=mode)
    assert float(jax.grad(jax.grad(fb))(jnp.float64(0.0))) == pytest.approx(0.75, rel=1e-12)
    assert abs(float(jax.grad(jax.grad(jax.grad(fb)))(jnp.float64(0.0)))) < 1e-12


def test_bfloat16_gradient_at_5():
    # jax.nn.softplus gives 1.0 here; the true value 0.99331 rounds to 0.9921875 in bfloat16.
    for residual in RESIDUALS:
        g = jax.grad(functools.partial(sl.softplus, residual=residual))(jnp.bfloat16(5.0))
        assert g.dtype == jnp.bfloat16
        assert float(g) == float(jnp.bfloat16(sigmoid_ref(5.0)))


def test_forward_mode_needs_mode_jvp():
    x = jnp.float32(1.0)
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(sl.softplus, (x,), (x,))
    for residual in RESIDUALS:
        f = functools.partial(sl.softplus, residual=residual, mode="jvp")
        y, t = jax.jvp(f, (x,), (jnp.float32(2.0),))
        assert float(t) == pytest.approx(2 * sigmoid_ref(1.0), rel=1e-6)
        _, lin = jax.linearize(f, x)
        assert float(lin(jnp.float32(1.0))) == pytest.approx(sigmoid_ref(1.0), rel=1e-6)
        v = jnp.array([-2.0, 0.5, 3.0], jnp.float64)
        jac = jax.jacfwd(f)(v)
        np.testing.assert_allclose(np.diag(jac), sigmoid_ref(v), rtol=1e-14)
        hess = jax.hessian(lambda v: jnp.sum(f(v)))(v)
        np.testing.assert_allclose(
            np.diag(hess), sigmoid_ref(v) * sigmoid_ref(-np.asarray(v)), rtol=1e-14
        )
        assert np.count_nonzero(hess - np.diag(np.diag(hess))) == 0


@pytest.mark.parametrize("name", slow_unless(FLOAT_DTYPES, ("float16", "float32")))
@pytest.mark.parametrize("residual", RESIDUALS)
def test_modes_agree_exactly(name, residual):
    x = jnp.asarray(sweep(name, n=1 << 12)[:: max(1, len(sweep(name, n=1 << 12)) // 4096)])
    fv = functools.partial(sl.softplus, residual=residual, mode="vjp")
    fj = functools.partial(sl.softplus, residual=residual, mode="jvp")
    np.testing.assert_array_equal(fv(x), fj(x))
    np.testing.assert_array_equal(grad_of(fv)(x), grad_of(fj)(x))


# ------------------------------------------------------------------------------ traced beta


def _dsoftplus_dbeta_mpmath(x, beta):
    """d/dβ [log(1 + exp(βx)) / β] = (x sigmoid(βx) - softplus_β(x)) / β, at 80 digits.

    The two terms cancel to ~e^-|βx| of their size, hence the many digits.
    """
    mpmath.mp.dps = 80
    out = []
    for v in x:
        v, b = mpmath.mpf(float(v)), mpmath.mpf(beta)
        y = mpmath.log1p(mpmath.exp(b * v)) / b
        out.append(float((v / (1 + mpmath.exp(-b * v)) - y) / b))
    return np.array(out)


@pytest.mark.parametrize("residual,mode", POLICIES)
def test_traced_beta_gradient_matches_analytic(residual, mode):
    x = jnp.linspace(-40.0, 40.0, 161, dtype=jnp.float64)
    w = jnp.cos(x)  # a fixed, non-uniform cotangent
    beta = jnp.float64(1.7)

    def loss(x, b):
        return jnp.sum(w * sl.softplus(x, beta=b, residual=residual, mode=mode))

    gx, gb = jax.grad(loss, argnums=(0, 1))(x, beta)
    dy_db = _dsoftplus_dbeta_mpmath(np.asarray(x), 1.7)
    np.testing.assert_allclose(gb, np.sum(np.asarray(w) * dy_db), rtol=1e-13)
    # Per element too, through a vmap over the cotangent: the entropy form has no
    # cancellation, so even the e^-68-sized values at |x| = 40 keep full relative precision.
    per_elem = jax.vmap(
        jax.grad(lambda x, b: sl.softplus(x, beta=b, residual=residual, mode=mode), argnums=1),
        in_axes=(0, None),
    )(x, beta)
    np.testing.assert_allclose(per_elem, dy_db, rtol=1e-13)
    np.testing.assert_allclose(gx, np.asarray(w) * sigmoid_ref(1.7 * np.asarray(x)), rtol=1e-13)
    # A traced beta gives the same x-gradients as the same static beta (to an ulp: XLA may
    # fold a constant beta into the products differently).
    static = jax.grad(
        lambda x: jnp.sum(w * sl.softplus(x, beta=1.7, residual=residual, mode=mode))
    )(x)
    np.testing.assert_allclose(gx, static, rtol=4e-16, atol=0)


def test_per_feature_beta_broadcasts_and_sums():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(5, 3)) * 4, jnp.float32)
    beta = jnp.array([0.5, 1.0, 3.0], jnp.float32)
    y = sl.softplus(x, beta=beta)
    assert y.shape == x.shape and y.dtype == jnp.float32
    ref = np.logaddexp(0, np.asarray(x, np.float64) * np.asarray(beta, np.float64)) / np.asarray(
        beta, np.float64
    )
    np.testing.assert_allclose(y, ref, rtol=3e-7)
    gb = jax.grad(lambda b: jnp.sum(sl.softplus(x, beta=b)))(beta)
    assert gb.shape == (3,) and gb.dtype == jnp.float32
    xs, bs = np.asarray(x, np.float64), np.asarray(beta, np.float64)
    expect = ((xs * sigmoid_ref(bs * xs) - np.logaddexp(0, bs * xs) / bs) / bs).sum(axis=0)
    np.testing.assert_allclose(gb, expect, rtol=1e-5, atol=1e-6)
    # a (3, 1) beta against (3, 4) x: sums over the broadcast trailing axis.
    x2 = jnp.ones((3, 4), jnp.float32)
    gb2 = jax.grad(lambda b: jnp.sum(sl.softplus(x2, beta=b)))(jnp.ones((3, 1), jnp.float32))
    assert gb2.shape == (3, 1)


def test_beta_dtype_and_cotangent_dtype():
    x = jnp.linspace(-3, 3, 7, dtype=jnp.bfloat16)
    beta = jnp.float32(2.0)
    y, vjp = jax.vjp(lambda x, b: sl.softplus(x, beta=b), x, beta)
    gx, gb = vjp(jnp.ones_like(y))
    assert y.dtype == jnp.bfloat16 and gx.dtype == jnp.bfloat16 and gb.dtype == jnp.float32


def test_beta_at_extremes_is_finite():
    x = jnp.asarray([-3e38, -1.0, 0.0, 1.0, 3e38], jnp.float32)
    for b in (1e-3, 4.0, 1e30):
        y = sl.softplus(x, beta=b)
        g = grad_of(functools.partial(sl.softplus, beta=b))(x)
        gb = jax.grad(lambda bb: jnp.sum(sl.softplus(x, beta=bb)))(jnp.float32(b))
        assert bool(jnp.all(jnp.isfinite(y))) and bool(jnp.all(jnp.isfinite(g)))
        assert bool(jnp.isfinite(gb))
        assert float(y[-1]) == 3e38 or float(y[-1]) == pytest.approx(3e38, rel=1e-6)


# ------------------------------------------------------------------------------ threshold


@pytest.mark.parametrize("residual,mode", POLICIES)
def test_threshold_follows_torch_semantics(residual, mode):
    x = jnp.linspace(-5.0, 5.0, 101, dtype=jnp.float64)
    beta, thr = 2.0, 3.0
    f = functools.partial(sl.softplus, beta=beta, threshold=thr, residual=residual, mode=mode)
    xs = np.asarray(x)
    over = beta * xs > thr
    np.testing.assert_allclose(f(x), np.where(over, xs, softplus_ref(xs, beta)), rtol=1e-15)
    np.testing.assert_allclose(
        grad_of(f)(x), np.where(over, 1.0, sigmoid_ref(beta * xs)), rtol=1e-15
    )


# ------------------------------------------------------------------------------ dtypes, errors


@pytest.mark.parametrize(
    "dtype", [jnp.int8, jnp.int16, jnp.int32, jnp.int64, jnp.uint8, jnp.uint32, jnp.bool_]
)
def test_integers_promote_like_jax_nn_softplus(dtype):
    x = jnp.zeros((3,), dtype)
    y = sl.softplus(x)
    assert y.dtype == jax.nn.softplus(x).dtype
    np.testing.assert_array_equal(y, np.asarray(np.log(2.0)).astype(y.dtype))


@pytest.mark.parametrize("name", FLOAT_DTYPES)
def test_softplus_of_zero_is_log2(name):
    y = sl.softplus(jnp.zeros((), np_dtype(name)))
    assert float(y) == float(np.asarray(np.log(2.0)).astype(np_dtype(name)))


def test_complex_input_raises_type_error_naming_dtype():
    with pytest.raises(TypeError, match="complex64"):
        sl.softplus(jnp.ones(2, jnp.complex64))


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"residual": "outptu"}, ValueError, "residual must be one of 'output', 'input'"),
        ({"mode": "fwd"}, ValueError, "mode must be one of 'vjp', 'jvp'"),
        ({"beta": 0.0}, ValueError, "beta must be a positive"),
        ({"beta": -1}, ValueError, "beta must be a positive"),
        ({"beta": float("nan")}, ValueError, "beta must be a positive"),
        ({"beta": float("inf")}, ValueError, "beta must be a positive"),
        ({"beta": True}, TypeError, "beta"),
        ({"beta": "2"}, TypeError, "beta"),
        ({"beta": jnp.ones(2, jnp.int32)}, TypeError, "floating dtype"),
        ({"beta": jnp.ones((4,), jnp.float32)}, ValueError, "must broadcast to x's shape"),
        ({"threshold": float("nan")}, ValueError, "threshold"),
        ({"threshold": "20"}, ValueError, "threshold"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        sl.softplus(jnp.ones((3,), jnp.float32), **kwargs)


def test_accepts_lists_and_numpy():
    np.testing.assert_allclose(sl.softplus([0.0, 1.0]), np.logaddexp(0, [0.0, 1.0]), rtol=1e-15)
    y = sl.softplus(np.float32(2.0))
    assert y.dtype == jnp.float32


# ------------------------------------------------------------ cotangents, β arrays, x64 off


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
@pytest.mark.parametrize("residual", RESIDUALS)
def test_half_precision_with_a_non_unit_cotangent(name, residual):
    """Every other test differentiates sum(f(x)), whose cotangent 1 hides a double rounding."""
    x = sweep(name)
    w = np.random.default_rng(0).uniform(0.5, 2.0, size=x.shape).astype(np_dtype(name))
    _, vjp = jax.vjp(functools.partial(sl.softplus, residual=residual), jnp.asarray(x))
    (g,) = vjp(jnp.asarray(w))
    assert g.dtype == np_dtype(name)
    sig = sigmoid_ref(x.astype(np.float64))
    ref = w.astype(np.float64) * sig
    # (Where sigmoid itself is subnormal, XLA flushes it before the multiply by w.)
    normal = sig >= float(jnp.finfo(jnp.float32).tiny)
    err = ulp_error(np.asarray(g)[normal], ref[normal], name).max()
    # "input": computed in float32 from the exact input, rounded once. "output": from y,
    # which was itself rounded to half precision (measured 1.31 float16, 1.26 bfloat16).
    assert err <= (0.501 if residual == "input" else 1.4)


def test_concrete_beta_arrays_are_checked_and_scalars_stay_static():
    x = jnp.linspace(-3.0, 3.0, 7, dtype=jnp.float32)
    for bad in (
        jnp.float32(-1.0),
        jnp.float32(0.0),
        jnp.array([1.0, -1.0, 2.0, 1.0, 1.0, 1.0, 1.0], jnp.float32),
        jnp.float32(jnp.inf),
    ):
        with pytest.raises(ValueError, match="beta must be positive and finite"):
            sl.softplus(x, beta=bad)
    # A concrete scalar array is a constant: one residual, exactly like the same Python float.
    f = functools.partial(sl.softplus, beta=jnp.float32(2.0))
    _, vjp = jax.vjp(f, x)
    kept = [a for a in jax.tree_util.tree_leaves(vjp) if getattr(a, "shape", None) == x.shape]
    assert len(kept) == 1
    np.testing.assert_array_equal(f(x), sl.softplus(x, beta=2.0))
    # ...while a traced one is differentiable.
    gb = jax.grad(lambda b: jnp.sum(sl.softplus(x, beta=b)))(jnp.float32(2.0))
    assert np.isfinite(float(gb)) and float(gb) < 0


@pytest.mark.parametrize("beta", [1e300, 3.5e38, 1e-40, 10**400])
def test_static_beta_outside_the_compute_dtype_range_is_rejected(beta):
    with pytest.raises(ValueError, match="beta"):
        sl.softplus(jnp.ones(3, jnp.float32), beta=beta)


def test_beta_column_broadcast_values():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(3, 4)) * 3, jnp.float64)
    beta = jnp.asarray([[0.5], [1.0], [4.0]], jnp.float64)
    w = jnp.asarray(rng.normal(size=(3, 4)), jnp.float64)
    gb = jax.grad(lambda b: jnp.sum(w * sl.softplus(x, beta=b)))(beta)
    assert gb.shape == (3, 1)
    xs, bs, ws = np.asarray(x), np.asarray(beta), np.asarray(w)
    per = (xs * sigmoid_ref(bs * xs) - np.logaddexp(0, bs * xs) / bs) / bs
    np.testing.assert_allclose(gb, (ws * per).sum(axis=1, keepdims=True), rtol=1e-12)


def test_threshold_accepts_a_concrete_scalar_array():
    x = jnp.linspace(-5.0, 30.0, 8, dtype=jnp.float32)
    np.testing.assert_array_equal(
        sl.softplus(x, threshold=jnp.float32(20.0)), sl.softplus(x, threshold=20.0)
    )


X64_OFF_SMOKE = """
import jax, jax.numpy as jnp, numpy as np
import stable_layers as sl
assert not jax.config.jax_enable_x64
# Python floats and weakly typed input: float32, as with jax.nn.softplus.
for f in (sl.softplus, lambda x: sl.softplus(x, mode="jvp"), sl.xsin):
    y = f(3.0)
    assert y.dtype == jnp.float32, y.dtype
    assert jax.grad(f)(3.0).dtype == jnp.float32
assert float(jax.grad(sl.softplus)(0.0)) == 0.5
assert float(sl.softplus(100.0)) == 100.0 and float(jax.grad(sl.softplus)(100.0)) == 1.0
assert float(jax.grad(jax.grad(sl.softplus))(30.0)) > 9e-14
assert sl.softplus(jnp.arange(3)).dtype == jnp.float32
x = jnp.asarray([-1e30, -100.0, 0.0, 100.0, 3e38], jnp.float32)
for r in ("output", "input"):
    g = jax.grad(lambda x: jnp.sum(sl.softplus(x, residual=r)))(x)
    assert bool(jnp.all(jnp.isfinite(g))), g
print("x64-off ok")
"""


def test_default_configuration_without_x64():
    """conftest enables x64 for the float64 references; users run without it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    out = subprocess.run(
        [sys.executable, "-c", X64_OFF_SMOKE], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert "x64-off ok" in out.stdout
