"""stable_layers._sincos.sincos: accuracy against float64, edge values, fallback, transforms.

Errors are in ulps of the result's dtype (``ulp_error``); the gradient ``sin x + x cos x`` is
measured in ulps of its scale ``|sin x| + |x cos x|``, as cancellation makes a relative error
meaningless near its zeros.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import np_dtype, sweep, ulp_error

from stable_layers._sincos import BOUND, sincos

F32 = np.float32
TINY = float(np.finfo(F32).tiny)


def _pairs(x):
    """sin, cos, x·sin x and sin x + x cos x as the callers compute them, in x's dtype."""

    def f(x):
        xc = x.astype(jnp.float32)
        s, c = sincos(xc)
        return tuple(v.astype(x.dtype) for v in (s, c, xc * s, s + xc * c))

    return [np.asarray(v).astype(np.float64) for v in jax.jit(f)(jnp.asarray(x))]


def _errors(x, name):
    """Max ulp errors of sin, cos, x·sin x and the gradient against numpy float64."""
    out = _pairs(x)
    x64 = np.asarray(x).astype(np.float64)
    # XLA may flush a subnormal input to zero (CPU and GPU alike): there either reference
    # counts, that of x and that of 0.
    flushed = np.where(np.abs(x64) < TINY, 0.0, x64)
    return {
        key: np.minimum(_error_at(x64, out, name)[key], _error_at(flushed, out, name)[key]).max()
        for key in ("sin", "cos", "xsin", "grad")
    }


def _error_at(x64, out, name):
    s, c, y, g = out
    rs, rc = np.sin(x64), np.cos(x64)
    scale = (np.abs(rs) + np.abs(x64 * rc)).astype(np_dtype(name))
    unit = np.spacing(scale).astype(np.float64)
    return {
        "sin": ulp_error(s, rs, name),
        "cos": ulp_error(c, rc, name),
        "xsin": ulp_error(y, x64 * rs, name),
        "grad": np.abs(g - (rs + x64 * rc)) / unit,
    }


def _near_multiples_of_pi_4(ulps=2):
    """Every float32 within ``ulps`` of k·π/4 for |k·π/4| <= BOUND, both signs.

    They contain the hardest cases: the closest float32 to a multiple of π/2 below the bound
    (252.898..., k = 161, |x - kπ/2| = 4.2e-9) and the quadrant boundaries.
    """
    y = (np.arange(int(BOUND / (np.pi / 4)) + 1) * (np.pi / 4)).astype(F32)
    pts = [y]
    for direction in (np.inf, -np.inf):
        z = y
        for _ in range(ulps):
            z = np.nextafter(z, F32(direction))
            pts.append(z)
    x = np.concatenate(pts)
    x = x[np.abs(x) <= BOUND]
    return np.concatenate([x, -x])


# Maxima over every float32 below the bound (an 860 s scan, not run here): 0.792, 0.794,
# 1.565, 1.543 ulp, at these points. Issue 9 asks for 2.5 for x sin x and its gradient.
F32_BOUNDS = {"sin": 0.8, "cos": 0.8, "xsin": 1.6, "grad": 1.6}
EXHAUSTIVE_MAXIMA = np.array([208.14882, 3.921931, 62.29844, 250.28395], F32)


@pytest.mark.parametrize(
    "points",
    [
        pytest.param(lambda: sweep("float32", n=1 << 18, limit=1e4), id="sweep"),
        pytest.param(_near_multiples_of_pi_4, id="near_k_pi_4"),
        pytest.param(lambda: np.concatenate([EXHAUSTIVE_MAXIMA, -EXHAUSTIVE_MAXIMA]), id="maxima"),
        pytest.param(
            lambda: (
                np.random.default_rng(0)
                .integers(0, F32(BOUND).view(np.uint32), 1 << 18, dtype=np.uint32)
                .view(F32)
            ),
            id="random_bits",
        ),
    ],
)
def test_float32_vs_float64(points):
    err = _errors(points(), "float32")
    for key, bound in F32_BOUNDS.items():
        assert err[key] <= bound, (key, err[key])


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_every_half_precision_value(name):
    """Every finite value, computed in float32 and rounded once: correctly rounded here.

    The targets are 1 ulp for x sin x and 2 for the gradient.
    """
    err = _errors(sweep(name), name)
    for key in ("sin", "cos", "xsin", "grad"):
        assert err[key] <= 0.51, (key, err[key])


def test_edge_values():
    fi = np.finfo(F32)
    sub = float(fi.smallest_subnormal)
    q = F32(np.pi / 4)
    x = np.array(
        [0.0, -0.0, TINY, -TINY, sub, -sub, 3e-39, 1e-30, -1e-30]
        + [np.nextafter(q, F32(0)), q, np.nextafter(q, F32(1)), -q]
        + [np.nextafter(BOUND, F32(0)), BOUND, np.nextafter(BOUND, F32(np.inf)), -BOUND]
        + [1e5, -1e5, 1e30, float(fi.max), -float(fi.max)],
        F32,
    )
    s, c = (np.asarray(v) for v in jax.jit(sincos)(jnp.asarray(x)))
    x64 = x.astype(np.float64)
    assert ulp_error(s, np.sin(x64), "float32").max() <= 0.8
    assert ulp_error(c, np.cos(x64), "float32").max() <= 0.8
    # Exact where it must be: sin 0 = ±0 with the sign of x, cos 0 = 1, sin x = x for tiny x.
    assert s[0] == 0 and not np.signbit(s[0]) and s[1] == 0 and np.signbit(s[1])
    assert np.all(c[:9] == 1) and np.all(s[2:4] == x[2:4]) and np.all(s[7:9] == x[7:9])
    assert np.all(np.abs(s) <= 1) and np.all(np.abs(c) <= 1)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64, jnp.float16, jnp.bfloat16])
def test_nonfinite_inputs(dtype):
    x = jnp.array([jnp.inf, -jnp.inf, jnp.nan, 1.0], dtype)
    s, c = sincos(x)
    assert s.dtype == dtype and c.dtype == dtype
    assert np.all(np.isnan(np.asarray(s[:3], np.float32)))
    assert np.all(np.isnan(np.asarray(c[:3], np.float32)))
    # A NaN elsewhere in the array does not spoil the finite elements.
    np.testing.assert_allclose(np.asarray(s[3], np.float32), np.sin(1.0), rtol=1e-2)


def test_fallback_above_the_bound():
    """Past BOUND the elements are jnp.sin/jnp.cos; below it the same fast-path bits."""
    rng = np.random.default_rng(1)
    small = rng.uniform(-BOUND, BOUND, 4096).astype(F32)
    large = np.concatenate([rng.uniform(1.001, 1e6, 64) * BOUND, [1e38, -3e38]]).astype(F32)
    f = jax.jit(sincos)
    s_small, c_small = f(jnp.asarray(small))
    s_mix, c_mix = f(jnp.asarray(np.concatenate([small, large, -large])))
    # Each element's value does not depend on which path its neighbours took.
    np.testing.assert_array_equal(s_mix[: small.size], s_small)
    np.testing.assert_array_equal(c_mix[: small.size], c_small)
    big = jnp.asarray(np.concatenate([large, -large]))
    np.testing.assert_array_equal(s_mix[small.size :], jax.jit(jnp.sin)(big))
    np.testing.assert_array_equal(c_mix[small.size :], jax.jit(jnp.cos)(big))
    # ...and the fast path is really not jnp.sin (else this test would prove nothing).
    assert np.any(np.asarray(s_small) != np.asarray(jax.jit(jnp.sin)(jnp.asarray(small))))
    # One cond: jnp.sin/jnp.cos appear in the compiled program only inside a branch.
    hlo = f.lower(jnp.asarray(small)).compile().as_text()
    assert "conditional" in hlo


def test_jit_vmap_and_derivatives():
    x = jnp.asarray(np.random.default_rng(2).uniform(-50, 50, (6, 128)).astype(F32))
    s, c = sincos(x)
    # Under vmap the bound is checked once for the whole batch: still a cond, not a select
    # that would evaluate jnp.sin and jnp.cos of every element.
    batched = jax.jit(jax.vmap(sincos)).lower(x).compile()
    assert "conditional" in batched.as_text()
    for f in (batched, jax.vmap(jax.vmap(sincos), in_axes=1, out_axes=1)):
        s2, c2 = f(x)
        np.testing.assert_array_equal(s2, s)
        np.testing.assert_array_equal(c2, c)
    # A batch with one large element: that element falls back, the others are unchanged.
    s3, c3 = batched(x.at[3, 7].set(1e20))
    assert float(s3[3, 7]) == float(jnp.sin(jnp.float32(1e20)))
    np.testing.assert_array_equal(s3[0], s[0])
    # Derivative rule: d sin = cos, d cos = -sin, in every mode.
    ds = jax.vmap(jax.grad(lambda v: sincos(v)[0]))(x[0])
    dc = jax.jacfwd(lambda v: sincos(v)[1])(x[0, :4])
    np.testing.assert_array_equal(ds, c[0])
    np.testing.assert_array_equal(dc, jnp.diag(-s[0, :4]))
    d2 = jax.grad(jax.grad(lambda v: sincos(v)[0]))(jnp.float32(0.5))
    np.testing.assert_allclose(d2, -np.sin(0.5), rtol=1e-6)


def test_dtypes_and_shapes():
    x64 = jnp.asarray(np.linspace(-1e6, 1e6, 1001))
    s, c = sincos(x64)
    assert s.dtype == jnp.float64
    np.testing.assert_array_equal(s, jnp.sin(x64))
    np.testing.assert_array_equal(c, jnp.cos(x64))
    for shape in [(), (0,), (3, 0, 2), (2, 3)]:
        s, c = sincos(jnp.ones(shape, jnp.float32))
        assert s.shape == shape and c.shape == shape and s.dtype == jnp.float32
    with pytest.raises(TypeError, match="floating"):
        sincos(jnp.ones(3, jnp.int32))


def test_epilogue():
    """epilogue(x, sin x, cos x) runs inside the branch: same values, one kernel."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.uniform(-100, 100, (4, 256)).astype(F32))
    xb = x.at[1, 5].set(3e9)  # one element on the fallback path
    both = jax.jit(lambda x: sincos(x, epilogue=lambda x, s, c: (x * s, s + x * c)))
    one = jax.jit(lambda x: sincos(x, epilogue=lambda x, s, c: x * s)).lower(x).compile()
    # Only the sine is computed when only the sine is used.
    assert " cosine(" not in one.as_text() and " sine(" in one.as_text()  # (fallback branch)
    for v in (x, xb):
        s, c = sincos(v)
        y, d = both(v)
        np.testing.assert_allclose(y, v * s, rtol=2e-7, atol=0)
        np.testing.assert_allclose(d, s + v * c, rtol=0, atol=2e-7 * float(jnp.abs(v).max()))
        np.testing.assert_array_equal(one(v), y)
    yv, dv = jax.vmap(both)(xb)
    np.testing.assert_array_equal(yv, y)
    np.testing.assert_array_equal(dv, d)
    # Derivatives chain through the epilogue: d/dx (x sin x) = sin x + x cos x.
    g = jax.grad(lambda v: jnp.sum(sincos(v, epilogue=lambda x, s, c: x * s)))(xb)
    np.testing.assert_allclose(g, d, rtol=0, atol=1e-6 * float(jnp.abs(xb).max()))
    # Half precision: the epilogue sees float32 and its result is returned as it is.
    seen = []

    def record(x, s, c):
        seen.append((x.dtype, s.dtype, c.dtype))
        return (x * s).astype(jnp.bfloat16)

    out = sincos(x.astype(jnp.bfloat16), epilogue=record)
    assert out.dtype == jnp.bfloat16 and set(seen) == {(np.dtype(F32),) * 3}
