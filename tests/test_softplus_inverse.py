"""stable_layers.softplus_inverse: values, conditioning-aware accuracy, round trips, β, errors.

References are float64 NumPy (``helpers.softplus_inverse_ref``) for the float32 and half
precision sweeps and mpmath for float64. The function is ill-conditioned near its root
y = log(2)/β, where no formula can be accurate in ulps of the tiny result, so errors are
measured in ulps divided by ``max(1, cond)`` with ``cond(y) = |y f'(y) / f(y)|``.
"""

import functools
import math

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
from helpers import (
    FLOAT_DTYPES,
    np_dtype,
    sigmoid_ref,
    softplus_inverse_ref,
    softplus_ref,
    sweep,
    ulp_error,
)
from jax.test_util import check_grads

import stable_layers as sl

HALF = ("float16", "bfloat16")


def f64(a):
    return np.asarray(a).astype(np.float64)


def slope_ref(y, beta=1.0):
    """d/dy log(expm1(βy))/β = 1 / (1 - exp(-βy)), float64."""
    with np.errstate(divide="ignore", over="ignore"):
        return 1 / -np.expm1(-beta * f64(y))


def cond_inverse(y):
    """|y f'(y) / f(y)| for f = softplus_inverse (β = 1): infinite at the root y = log 2."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.abs(f64(y) * slope_ref(y) / softplus_inverse_ref(y))


def cond_softplus(x):
    """|x softplus'(x) / softplus(x)|: the conditioning of the way back."""
    return np.abs(f64(x) * sigmoid_ref(x) / softplus_ref(x))


def compute_tiny(name):
    """finfo.tiny of the compute dtype: float32 for half precision."""
    return float(np.finfo(np.float32 if name in HALF else np_dtype(name)).tiny)


def mp_softplus_inverse(v, beta=1.0):
    v, b = mpmath.mpf(float(v)), mpmath.mpf(float(beta))
    return mpmath.log(mpmath.expm1(b * v)) / b


def positive_sweep(name, n):
    y = sweep(name, n=n)
    return y[f64(y) > 0]


def grad_of(f):
    return jax.jit(lambda y: jax.grad(lambda y: jnp.sum(f(y)))(y))


# ------------------------------------------------------------------------------ accuracy


def test_float32_accuracy_allowing_for_conditioning():
    y = positive_sweep("float32", 1 << 17)
    y = y[f64(y) >= compute_tiny("float32")]  # subnormals: the flush test below
    err = ulp_error(
        jax.jit(sl.softplus_inverse)(jnp.asarray(y)), softplus_inverse_ref(y), "float32"
    )
    scaled = err / np.maximum(1.0, cond_inverse(y))
    # Measured 3.50 (at y = 0.346, cond 1.34: XLA's float32 expm1 loses a few ulps there).
    # Unscaled the error reaches 779 ulps at y = 0.69306, next to the root (cond 7992).
    assert scaled.max() <= 3.6, scaled.max()
    assert err.max() > 100  # the unscaled figure: the scaling is doing real work
    # Away from the root (|y - log 2| > 0.5, cond <= 2.05) plain ulps suffice: measured 2.34.
    far = np.abs(f64(y) - math.log(2)) > 0.5
    assert err[far].max() <= 2.4, err[far].max()


def test_float64_accuracy_vs_mpmath_allowing_for_conditioning():
    mpmath.mp.dps = 60
    y = positive_sweep("float64", 1 << 15)[::24]
    y = y[y >= compute_tiny("float64")]
    ln2 = math.log(2)
    near_root = ln2 * (
        1 + np.concatenate([-(10.0 ** -np.arange(1, 16)), 10.0 ** -np.arange(1, 16)])
    )
    y = np.concatenate([y, near_root, np.linspace(0.01, 3.0, 300)])
    ref = np.array([float(mp_softplus_inverse(v)) for v in y])
    err = ulp_error(sl.softplus_inverse(jnp.asarray(y)), ref, "float64")
    scaled = err / np.maximum(1.0, cond_inverse(y))
    assert scaled.max() <= 2.3, scaled.max()  # measured 2.24 (at y = 0.346, cond 1.34)


@pytest.mark.parametrize("name", HALF)
def test_half_precision_is_correctly_rounded_everywhere(name):
    """Every finite positive value (float16 subnormals too: they are normal in float32)."""
    y = positive_sweep(name, 0)
    if name == "bfloat16":  # bfloat16 subnormals are float32 subnormals: the flush test
        y = y[f64(y) >= compute_tiny(name)]
    out = jax.jit(sl.softplus_inverse)(jnp.asarray(y))
    assert out.dtype == np_dtype(name)
    err = ulp_error(out, softplus_inverse_ref(y), name)
    # Computed in float32 and rounded once: measured 0.50022 (float16), 0.49999 (bfloat16),
    # with no allowance for conditioning needed even at the half-precision values next to the
    # root (float32's error there, ~cond · 2^-24, is far below a half-precision ulp).
    assert err.max() <= 0.501, err.max()


# ------------------------------------------------------------------------------ tiny and huge y


def test_tiny_y_is_log_of_beta_y_over_beta():
    y = np.logspace(-37, -5, 400).astype(np.float32)
    for beta, bound in [(1.0, 0.55), (2.5, 1.45), (0.3, 1.6)]:
        out = f64(sl.softplus_inverse(jnp.asarray(y), beta=beta))
        # log(expm1(βy))/β = log(βy)/β + βy/2 + ... . Measured 0.53 ulp (β = 1); with β ≠ 1
        # βy is rounded first, which costs up to 1/|log βy| relative: 1.40, 1.57 ulp.
        assert ulp_error(out, softplus_inverse_ref(y, beta), "float32").max() <= bound, beta
        # The first two terms of that expansion, independently of any expm1.
        np.testing.assert_allclose(out, np.log(beta * f64(y)) / beta + f64(y) / 2, rtol=1e-6)


# softplus_inverse(y) = y + log1p(-e^-y) rounds to y exactly when -log1p(-e^-y) is below half
# an ulp h of y, i.e. above T = -log(-expm1(-h)) (the mirror image of log σ(x) = x).
EXACT_ABOVE = {
    "float16": -math.log(-math.expm1(-(2.0**-9))),  # 6.2393, in [4, 8)
    "bfloat16": -math.log(-math.expm1(-(2.0**-6))),  # 4.1667, in [4, 8)
    # float32 rounds correctly only from 14.70: below the switch to the y + log1p form
    # (βy = 20), log(expm1(y)) is 1 ulp off in [14.48, 14.70] (every float32 there measured).
    "float32": 14.71,
    "float64": -math.log(-math.expm1(-(2.0**-48))),  # 33.2711, in [32, 64)
}


@pytest.mark.parametrize("name", FLOAT_DTYPES)
def test_huge_y_is_y_itself_up_to_finfo_max(name):
    dt = np_dtype(name)
    y = positive_sweep(name, 1 << 14)
    if name == "float32":  # every float32 in [14.4, 14.8]
        lo, hi = np.float32(14.4).view(np.uint32), np.float32(14.8).view(np.uint32)
        y = np.concatenate([y, np.arange(lo, hi, dtype=np.uint32).view(np.float32)])
    out = f64(jax.jit(sl.softplus_inverse)(jnp.asarray(y)))
    t = EXACT_ABOVE[name]
    above = f64(y) > t
    np.testing.assert_array_equal(out[above], f64(y)[above])
    if name != "float32":  # and nowhere below: the threshold is the exact one
        assert np.all(out[(f64(y) < t) & (f64(y) > 0)] < f64(y)[(f64(y) < t) & (f64(y) > 0)])
    # The textbook form overflows to inf above log(finfo.max) (88.72 float32, 11.09 float16)
    # where this one is y itself, up to finfo.max.
    naive = f64(jax.jit(lambda y: jnp.log(jnp.expm1(y)))(jnp.asarray(y)))
    overflow = naive == np.inf
    log_max = math.log(float(jnp.finfo(dt).max))
    assert overflow.any() and np.all(f64(y)[overflow] > log_max - 0.01)
    assert np.all(out[overflow] == f64(y)[overflow])
    big = float(jnp.finfo(dt).max)
    for beta in (1.0, 2.0, 1e-3):  # also where β·y overflows to inf
        assert float(sl.softplus_inverse(jnp.asarray(big, dt), beta=beta)) == big, beta


# ------------------------------------------------------------------------------ special values


@pytest.mark.parametrize("name", FLOAT_DTYPES)
def test_special_values(name):
    dt = np_dtype(name)
    big = float(jnp.finfo(dt).max)
    y = jnp.asarray(np.array([0.0, -0.0, -1.0, -big, -np.inf, np.inf, np.nan, big], dtype=dt))
    out = sl.softplus_inverse(y)
    assert out.dtype == dt
    o = f64(out)
    assert o[0] == -np.inf and o[1] == -np.inf  # softplus_inverse(0) = log(0) = -inf
    assert np.all(np.isnan(o[2:5]))  # y < 0: NaN, as log of a negative number
    assert o[5] == np.inf and np.isnan(o[6]) and o[7] == big
    g = f64(grad_of(sl.softplus_inverse)(y))
    assert g[5] == 1.0 and g[7] == 1.0 and np.isnan(g[6])  # slope 1 for huge y
    assert g[0] == np.inf  # 1 / (1 - e^0)


@pytest.mark.parametrize("name", FLOAT_DTYPES)
def test_subnormal_y(name):
    """The docstring: subnormal y, which XLA flushes to zero, gives -inf."""
    dt = np_dtype(name)
    sub = np.array([float(jnp.finfo(dt).smallest_subnormal), float(jnp.finfo(dt).tiny) / 2])
    out = f64(sl.softplus_inverse(jnp.asarray(sub.astype(dt))))
    if name == "float16":
        # float16 is computed in float32, where its subnormals are normal: no flush, and the
        # result is correctly rounded (log(5.96e-8) = -16.64).
        ref = softplus_inverse_ref(sub.astype(dt))
        assert np.all(np.isfinite(out)) and ulp_error(out, ref, name).max() <= 0.501
    else:
        np.testing.assert_array_equal(out, [-np.inf, -np.inf])
    # The smallest normal is not flushed: log(tiny) (-87.34 in float32, -708.40 in float64).
    tiny = compute_tiny(name) if name != "float16" else float(jnp.finfo(dt).tiny)
    assert np.isfinite(float(sl.softplus_inverse(jnp.asarray(tiny, dt))))


# ------------------------------------------------------------------------------ round trips

# Both directions, in ulps of the value that should come back, divided by the conditioning
# of the composition (≥ 1): the error of the inverse in x, in ulps of x and scaled by its own
# conditioning, is multiplied by softplus's conditioning on the way back, and vice versa.
# Measured maxima on these sweeps: softplus(softplus_inverse(y)) / softplus_inverse(softplus(x))
ROUND_TRIP = {
    "float16": (1.06, 1.03),  # 1.054, 1.020
    "bfloat16": (1.06, 1.3),  # 1.056, 1.285
    "float32": (3.01, 3.4),  # 3.000, 3.360
    "float64": (2.01, 2.75),  # 2.000, 2.682
}


@pytest.mark.parametrize("name", FLOAT_DTYPES)
def test_round_trips(name):
    dt, (bound_y, bound_x) = np_dtype(name), ROUND_TRIP[name]
    n = 1 << 17 if name == "float32" else 1 << 15
    tiny = float(jnp.finfo(dt).tiny)
    # softplus(softplus_inverse(y)) = y for y from 2·tiny: at y = tiny itself softplus's
    # e^x lands just below tiny and is flushed, softplus's limit rather than the inverse's.
    y = positive_sweep(name, n)
    y = y[f64(y) >= 2 * tiny]
    back = jax.jit(lambda y: sl.softplus(sl.softplus_inverse(y)))(jnp.asarray(y))
    assert back.dtype == dt
    x = softplus_inverse_ref(y)
    err = ulp_error(back, y, name) / np.maximum(1.0, cond_softplus(x))
    assert err.max() <= bound_y, err.max()
    # softplus_inverse(softplus(x)) = x wherever softplus(x) is a normal number.
    x = sweep(name, n=n)
    x = x[softplus_ref(x) >= 2 * tiny]
    back = jax.jit(lambda x: sl.softplus_inverse(sl.softplus(x)))(jnp.asarray(x))
    err = ulp_error(back, x, name) / np.maximum(1.0, cond_inverse(softplus_ref(x)))
    assert err.max() <= bound_x, err.max()


# ------------------------------------------------------------------------------ gradients


@pytest.mark.parametrize("name", FLOAT_DTYPES)
def test_gradient_against_analytic(name):
    dt = np_dtype(name)
    y = positive_sweep(name, 1 << 17 if name == "float32" else 1 << 15)
    y = y[f64(y) >= compute_tiny(name)]
    gref = slope_ref(y)
    if name == "float16":
        # 1/(1 - e^-y) ≈ 1/y exceeds float16's max below y = 1.53e-5: inf is its rounding.
        over = gref > float(jnp.finfo(dt).max)
        assert np.all(f64(grad_of(sl.softplus_inverse)(jnp.asarray(y[over]))) == np.inf)
        y, gref = y[~over], gref[~over]
    if name == "float64":
        mpmath.mp.dps = 50
        y = y[::16]
        gref = np.array([float(1 / -mpmath.expm1(-mpmath.mpf(v))) for v in y])
    g = grad_of(sl.softplus_inverse)(jnp.asarray(y))
    assert g.dtype == dt
    assert np.all(np.isfinite(f64(g)))  # finite for every normal y > 0
    err = ulp_error(g, gref, name).max()
    # Measured: 0.50008 float16, 0.49982 bfloat16, 1.45 float32, 3.0 float64 (4.63 in
    # float32 when the slope used XLA's expm1, which is a few ulps off at small y).
    bound = {"float16": 0.501, "bfloat16": 0.501, "float32": 1.5, "float64": 3.0}[name]
    assert err <= bound, err


def test_check_grads_float64():
    # From 0.2: below it check_grads' own finite differences (third derivative ~ 2/y^3)
    # miss its 1e-5 tolerance.
    y = jnp.asarray([0.2, 0.9, 7.0, 25.0], jnp.float64)
    check_grads(sl.softplus_inverse, (y,), order=2, modes=["fwd", "rev"])
    fb = jax.jit(lambda y, b: sl.softplus_inverse(y, beta=b))
    check_grads(fb, (y, jnp.float64(1.7)), order=2, modes=["rev"])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_second_derivative_where_expm1s_rule_rounds_to_zero(dtype):
    """d²/dy² = -e^-y / (1 - e^-y)²: -9.36e-14 at y = 30, not 0.

    With the slope written as 1/(-expm1(-y)), expm1's stock rule made it 0 in float32 from
    y ≈ 17.3, where expm1(-y) rounds to -1 (and 44 % off at 17), and 0 at y = 100 in float64.
    """
    y = np.array([0.5, 5.0, 17.0, 25.0, 30.0] + ([100.0] if dtype == jnp.float64 else []))
    e = np.exp(-y)
    ref = -e / (1 - e) ** 2
    d2 = jax.jit(grad_of(grad_of(sl.softplus_inverse)))(jnp.asarray(y, dtype))
    hess = jax.jit(jax.hessian(lambda y: jnp.sum(sl.softplus_inverse(y))))(jnp.asarray(y, dtype))
    rtol = 3e-7 if dtype == jnp.float32 else 1e-15
    np.testing.assert_allclose(d2, ref, rtol=rtol, atol=0)
    np.testing.assert_allclose(np.diag(hess), ref, rtol=rtol, atol=0)


def _dbeta_mpmath(y, beta):
    """d/dβ log(expm1(βy))/β by mpmath's numerical differentiation, at 60 digits."""
    mpmath.mp.dps = 60
    yv = [mpmath.mpf(float(v)) for v in y]
    b = mpmath.mpf(float(beta))
    return np.array(
        [float(mpmath.diff(lambda bb: mpmath.log(mpmath.expm1(bb * v)) / bb, b)) for v in yv]
    )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_traced_beta_is_differentiable(dtype):
    y = np.logspace(-5, 2.3, 40)
    for beta in (0.5, 1.7, 4.0):
        y_in = f64(jnp.asarray(y, dtype))  # the input as rounded to dtype
        ref = _dbeta_mpmath(y_in, beta)
        per_elem = jax.jit(
            jax.vmap(
                jax.grad(lambda y, b: sl.softplus_inverse(y, beta=b), argnums=1),
                in_axes=(0, None),
            )
        )(jnp.asarray(y, dtype), dtype(beta))
        assert per_elem.dtype == dtype
        g, eps = f64(per_elem), float(jnp.finfo(dtype).eps)
        small = beta * y_in <= 1
        # Relative accuracy where βy <= 1 (measured 2.4e-7 float32, 3.0e-16 float64)...
        rel = np.abs(g - ref)[small] / np.abs(ref)[small]
        assert rel.max() <= (4e-7 if dtype == jnp.float32 else 1e-15), beta
        # ...and everywhere an absolute error within 4 eps·(|y| + |x|)/β (measured 3.4 and
        # 2.6): y·f'(y) - f(y) cancels to ~e^-βy of its size, so for large βy the derivative
        # has only absolute accuracy (reported: a log1mexp form would fix it).
        x = softplus_inverse_ref(y_in, beta)
        assert np.all(np.abs(g - ref) <= 4 * eps * (np.abs(y_in) + np.abs(x)) / beta), beta
    # The summed β cotangent is the sum of the per-element ones (float64, central difference).
    yj = jnp.asarray(y, jnp.float64)
    gb = jax.grad(lambda b: jnp.sum(sl.softplus_inverse(yj, beta=b)))(jnp.float64(1.7))
    h = 1e-6
    fd = (np.sum(softplus_inverse_ref(y, 1.7 + h)) - np.sum(softplus_inverse_ref(y, 1.7 - h))) / (
        2 * h
    )
    assert float(gb) == pytest.approx(fd, rel=1e-7)


def test_per_feature_beta():
    rng = np.random.default_rng(0)
    y = jnp.asarray(rng.uniform(0.05, 6.0, size=(5, 3)), jnp.float64)
    beta = jnp.asarray([0.5, 1.0, 3.0], jnp.float64)
    out = sl.softplus_inverse(y, beta=beta)
    ys, bs = f64(y), f64(beta)
    np.testing.assert_allclose(out, np.log(np.expm1(bs * ys)) / bs, rtol=1e-14)
    gy, gb = jax.grad(lambda y, b: jnp.sum(sl.softplus_inverse(y, beta=b)), argnums=(0, 1))(y, beta)
    assert gb.shape == (3,)
    np.testing.assert_allclose(gy, slope_ref(ys * bs), rtol=1e-14)
    # d/dβ_j summed over the rows, against a float64 central difference per feature.
    h = 1e-6
    fd = np.array(
        [
            (
                softplus_inverse_ref(ys[:, j], bs[j] + h)
                - softplus_inverse_ref(ys[:, j], bs[j] - h)
            ).sum()
            / (2 * h)
            for j in range(3)
        ]
    )
    np.testing.assert_allclose(gb, fd, rtol=1e-7)
    # A float32 β column against (3, 4) float32 y: cotangent shape and dtype follow β.
    gb2 = jax.grad(lambda b: jnp.sum(sl.softplus_inverse(jnp.ones((3, 4), jnp.float32), beta=b)))(
        jnp.ones((3, 1), jnp.float32)
    )
    assert gb2.shape == (3, 1) and gb2.dtype == jnp.float32


# ------------------------------------------------------------------------------ dtypes, errors


@pytest.mark.parametrize("name", FLOAT_DTYPES)
def test_every_dtype_keeps_its_dtype(name):
    dt = np_dtype(name)
    y = jnp.asarray(np.array([0.5, 1.0, 3.0], dtype=dt))
    assert sl.softplus_inverse(y).dtype == dt
    assert sl.softplus_inverse(y, beta=2.0).dtype == dt
    assert grad_of(sl.softplus_inverse)(y).dtype == dt
    assert sl.softplus_inverse(y, beta=jnp.asarray(2.0, jnp.float32)).dtype == dt


@pytest.mark.parametrize(
    "dtype", [jnp.int8, jnp.int32, jnp.int64, jnp.uint8, jnp.uint32, jnp.bool_]
)
def test_integers_promote_like_jax_nn_softplus(dtype):
    y = jnp.asarray([1, 1, 1], dtype)
    out = sl.softplus_inverse(y)
    assert out.dtype == jax.nn.softplus(y).dtype
    np.testing.assert_array_equal(out, sl.softplus_inverse(y.astype(out.dtype)))
    # log(e - 1) = 0.5413248546...: float32 gives 0.54132479 here, 1.1 ulp (cond 2.9).
    assert ulp_error(out, np.full(3, np.log(np.expm1(1.0))), out.dtype.name).max() <= 1.5


def test_complex_y_raises_type_error():
    with pytest.raises(TypeError, match="complex64"):
        sl.softplus_inverse(jnp.ones(2, jnp.complex64))


@pytest.mark.parametrize(
    "beta,exc,match",
    [
        (0.0, ValueError, "beta must be a positive"),
        (-1.0, ValueError, "beta must be a positive"),
        (-2, ValueError, "beta must be a positive"),
        (float("nan"), ValueError, "beta must be a positive"),
        (float("inf"), ValueError, "beta must be a positive"),
        (1e300, ValueError, "beta=1e[+]300 is outside the range"),
        (jnp.float32(-1.0), ValueError, "beta must be positive and finite"),
        (jnp.asarray([1.0, 0.0, 2.0], jnp.float32), ValueError, "beta must be positive"),
        (jnp.ones(4, jnp.float32), ValueError, "beta of shape .4,. must broadcast"),
        (jnp.ones((3, 1), jnp.float32), ValueError, "beta of shape .3, 1. must broadcast"),
        (True, TypeError, "beta"),
        ("2", TypeError, "beta"),
        (jnp.ones(3, jnp.int32), TypeError, "beta array must have a floating dtype"),
    ],
)
def test_bad_beta_raises(beta, exc, match):
    with pytest.raises(exc, match=match) as info:
        sl.softplus_inverse(jnp.ones(3, jnp.float32), beta=beta)
    assert "stable_layers.softplus_inverse" in str(info.value)


def test_accepts_python_numbers_and_lists():
    out = sl.softplus_inverse([1.0, 2.0])
    np.testing.assert_allclose(out, np.log(np.expm1([1.0, 2.0])), rtol=1e-15)
    assert sl.softplus_inverse(np.float32(2.0)).dtype == jnp.float32
    x = functools.reduce(lambda a, _: sl.softplus(sl.softplus_inverse(a)), range(3), 2.0)
    assert float(x) == pytest.approx(2.0, rel=1e-15)
