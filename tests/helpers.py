"""The one home of the test helpers: sweeps, ulps, float64 references and comparisons.

The tests and ``benchmarks/`` (which puts ``tests/`` on its path) share these, so accuracy is
measured with one definition of an ulp. Nothing here ships in the package.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def slow_unless(values, default, ids=None):
    """``values`` as pytest params: those in ``default`` run by default, the rest only under
    ``-m slow`` (CI runs both), so the README's test command stays within its time."""
    import pytest

    ids = ids or [v if isinstance(v, str) else getattr(v, "__name__", str(v)) for v in values]
    return [
        pytest.param(v, id=i, marks=() if v in default else pytest.mark.slow)
        for v, i in zip(values, ids)
    ]


def np_dtype(name: str) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def sweep(name: str, n: int = 1 << 20, limit: float | None = None) -> np.ndarray:
    """A dense sweep of finite inputs of dtype ``name``, sorted and unique.

    Half precision: every finite value (exhaustive). float32/float64: ``n`` points, half of
    them uniform on [-limit, limit] (default: where softplus changes regime) and half
    log-spaced in magnitude up to ±finfo.max, plus 0, ±tiny and ±max.
    """
    dt = np_dtype(name)
    fi = ml_dtypes.finfo(dt)
    if fi.bits == 16:
        with np.errstate(invalid="ignore"):  # the NaN bit patterns
            vals = np.arange(1 << 16, dtype=np.uint16).view(dt).astype(np.float64)
        vals = vals[np.isfinite(vals)]
    else:
        limit = 120.0 if limit is None else limit
        lo, hi = np.log10(float(fi.smallest_subnormal)), np.log10(float(fi.max))
        with np.errstate(over="ignore"):  # 10**hi may round past finfo.max
            mags = np.logspace(lo, hi, n // 4)
        mags = mags[mags <= float(fi.max)]
        lin = np.linspace(-limit, limit, n // 2)
        edges = [0.0, float(fi.tiny), -float(fi.tiny), float(fi.max), -float(fi.max)]
        vals = np.concatenate([lin, mags, -mags, edges]).astype(dt)
        vals = vals[np.isfinite(vals.astype(np.float64))]
    return np.unique(vals.astype(np.float64)).astype(dt)


def ulp_error(
    actual, reference, name: str, flush_subnormals: bool = True, *, scale=None
) -> np.ndarray:
    """|actual - reference| in units of the last place of ``name`` at ``scale``.

    ``reference`` is float64 (or better); ``scale`` (float64) defaults to ``|reference|``, so by
    default the error is in ulps of the reference. Where a result is a sum of terms that cancel
    (``sin x + x cos x``), pass the terms' magnitude as ``scale``, since a relative error is
    meaningless near its zeros. Equal infinities and matching NaNs count as 0; a non-finite
    result where the reference is finite counts as inf. Below ``finfo.tiny`` the ulp is the
    subnormal spacing. With ``flush_subnormals`` (default) a result of 0 where the reference is
    subnormal counts as exact: XLA on CPU and GPU flushes subnormals to zero, for every kernel
    alike, so that is a property of the backend, not of a formula.
    """
    fi = ml_dtypes.finfo(np_dtype(name))
    a = np.asarray(actual).astype(np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if flush_subnormals:
        r = np.where((np.abs(r) < float(fi.tiny)) & (a == 0), 0.0, r)
    s = np.abs(r if scale is None else np.asarray(scale, dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        exp = np.floor(np.log2(s))
        exp = np.maximum(np.where(np.isfinite(exp), exp, fi.minexp), fi.minexp)
        ulp = np.ldexp(1.0, (exp - fi.nmant).astype(np.int64))
        err = np.abs(a - r) / ulp
    same = (a == r) | (np.isnan(a) & np.isnan(r))
    err = np.where(same, 0.0, err)
    return np.where(np.isnan(err), np.inf, err)


def softplus_ref(x, beta=1.0):
    """log(1 + exp(βx)) / β in float64 (relative error ~1e-16, far below a float32 ulp).

    NumPy in, float64 NumPy out. A JAX ``x`` or ``beta`` (traced too) is computed with
    ``jax.numpy`` in its own dtype, so that the layer tests' float64 reference networks can be
    differentiated; it never goes through stable_layers.
    """
    if isinstance(x, jax.Array) or isinstance(beta, jax.Array):
        return jnp.logaddexp(0.0, beta * x) / beta
    z = beta * np.asarray(x, dtype=np.float64)
    return np.logaddexp(0.0, z) / beta


def sigmoid_ref(z) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0, e) / (1.0 + e)


def xsin_ref(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x * np.sin(x)


def xsin_grad_ref(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.sin(x) + x * np.cos(x)


def log_sigmoid_ref(x) -> np.ndarray:
    """log(sigmoid(x)) = -log(1 + exp(-x)) in float64."""
    return -np.logaddexp(0.0, -np.asarray(x, dtype=np.float64))


def softplus_inverse_ref(y, beta: float = 1.0) -> np.ndarray:
    """log(expm1(βy)) / β in float64, written as βy + log(-expm1(-βy)) above 1 (no overflow)."""
    z = beta * np.asarray(y, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        small = np.log(np.expm1(np.minimum(z, 1.0)))
        large = z + np.log(-np.expm1(-z))
    return np.where(z > 1.0, large, small) / beta


# --------------------------------------------------------------------------------------
# Layer tests (Equinox, linen, nnx): references and comparisons for networks.
# --------------------------------------------------------------------------------------

F32, F64, BF16 = jnp.float32, jnp.float64, jnp.bfloat16


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


# --------------------------------------------------------------------------------------
# Memory: what the backward pass keeps, and the compiled temp memory of an MLP step.
# --------------------------------------------------------------------------------------

try:  # public in newer JAX; the internal name has been stable since 0.4
    from jax.ad_checkpoint import saved_residuals
except ImportError:  # pragma: no cover - depends on the JAX version
    from jax._src.ad_checkpoint import saved_residuals


def residual_arrays(f, *args):
    """The residuals of the shape of the first argument (not scalars such as a beta)."""
    shape = jnp.shape(args[0])
    return [aval for aval, _ in saved_residuals(f, *args) if aval.shape == shape]


def mlp_temp_bytes(act, dtype=jnp.float32, depth=8, width=256, batch=512, bias=False):
    """Compiled temp memory of an MLP gradient step with ``act`` after every layer.

    float32 parameters are cast to the compute ``dtype`` and the loss is taken in float32, as
    in mixed-precision training. ``bias=True`` adds a bias per layer (``h @ w + b``), issue
    11's harness; XLA's buffer assignment differs between the two, so both are measured.
    """
    keys = jax.random.split(jax.random.PRNGKey(0), depth)
    ws = [jax.random.normal(k, (width, width), jnp.float32) / 16 for k in keys]
    bs = [jnp.zeros((width,), jnp.float32) for _ in keys] if bias else []
    x = jnp.ones((batch, width), jnp.float32)

    def loss(params, x):
        ws, bs = params
        h = x.astype(dtype)
        for i, w in enumerate(ws):
            z = h @ w.astype(dtype)
            h = act(z + bs[i].astype(dtype) if bias else z)
        return jnp.mean(h.astype(jnp.float32) ** 2)

    step = jax.jit(jax.grad(loss))
    return step.lower((ws, bs), x).compile().memory_analysis().temp_size_in_bytes


def scanned_blocks_temp_bytes(act, dtype=jnp.float32, depth=4, width=128, hidden=512, batch=1024):
    """Compiled temp memory of the gradient step of ``depth`` residual blocks
    ``h + act(h @ W1) @ W2`` with stacked parameters, applied by ``jax.lax.scan`` (a
    transformer's MLP blocks, as in examples/memory_budget.py).

    Under ``scan`` every distinct array the backward pass needs is stacked across the
    blocks; XLA cannot recompute or deduplicate it as it does for a Python loop. float32
    parameters are cast to ``dtype`` and the loss is taken in float32.
    """
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    w1 = jax.random.normal(k1, (depth, width, hidden), jnp.float32) / 16
    w2 = jax.random.normal(k2, (depth, hidden, width), jnp.float32) / 16
    x = jnp.ones((batch, width), jnp.float32)

    def loss(params, x):
        def block(h, w):
            return h + act(h @ w[0].astype(dtype)) @ w[1].astype(dtype), None

        h = jax.lax.scan(block, x.astype(dtype), params)[0]
        return jnp.mean(h.astype(jnp.float32) ** 2)

    step = jax.jit(jax.grad(loss))
    return step.lower((w1, w2), x).compile().memory_analysis().temp_size_in_bytes


# --------------------------------------------------------------------------------------
# Edge points and the minimal output-saving rule (the generic tests of test_activations.py).
# --------------------------------------------------------------------------------------


def edge_points(name: str) -> np.ndarray:
    """0, ±tiny, ±1e4 (where finite in ``name``), ±finfo.max, ±inf and NaN, in ``name``."""
    dt = np_dtype(name)
    fi = ml_dtypes.finfo(dt)
    tiny, big = float(fi.tiny), float(fi.max)
    pts = np.array([0.0, tiny, -tiny, 1e4, -1e4, big, -big, np.inf, -np.inf, np.nan])
    with np.errstate(over="ignore"):
        vals = pts.astype(dt)
    keep = np.isfinite(vals.astype(np.float64)) | ~np.isfinite(pts)
    return vals[keep]


def output_saving_vjp(forward, slope_from_output, upcast: bool):
    """The smallest output-saving ``jax.custom_vjp`` one would write by hand (issue 11's
    "minimal"): ``forward`` saving y, backward ``g * slope_from_output(y)``; ``upcast``
    computes both in float32."""

    def up(a):
        return a.astype(jnp.float32) if upcast else a

    @jax.custom_vjp
    def f(z):
        return forward(up(z)).astype(z.dtype)

    def f_fwd(z):
        y = f(z)
        return y, y

    f.defvjp(f_fwd, lambda y, g: ((up(g) * slope_from_output(up(y))).astype(g.dtype),))
    return f


# --------------------------------------------------------------------------------------
# Issue 16's activations (silu, gelu, mish, the ELU family, snake): float64 references.
# --------------------------------------------------------------------------------------


def silu_ref(x) -> np.ndarray:
    """x·σ(x) in float64; NaN at x = -inf (-inf·0), as torch and jax.nn."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return x * sigmoid_ref(x)


def silu_grad_ref(x) -> np.ndarray:
    """σ(x)·(1 + x·σ(-x)), with its limits 0 at -inf and 1 at +inf."""
    x = np.asarray(x, dtype=np.float64)
    xf = np.where(np.isinf(x), 0.0, x)  # x·σ(-x) -> 0 at both infinities
    return sigmoid_ref(x) * (1 + xf * sigmoid_ref(-x))


def silu_grad_scale(x) -> np.ndarray:
    """σ(x) + |x|·σ(x)σ(-x): the size of the slope's two terms (it crosses 0 at x ≈ -1.28)."""
    x = np.asarray(x, dtype=np.float64)
    xf = np.where(np.isinf(x), 0.0, x)
    return sigmoid_ref(x) * (1 + np.abs(xf) * sigmoid_ref(-x))


def silu_second_ref(x) -> np.ndarray:
    """σ(x)σ(-x)·(2 - x·tanh(x/2))."""
    x = np.asarray(x, dtype=np.float64)
    return sigmoid_ref(x) * sigmoid_ref(-x) * (2 - x * np.tanh(x / 2))


def jit_value_and_slope(f):
    """``x -> (f(x), vjp of ones)``, compiled once: an elementwise f's value and slope."""

    def both(x):
        y, vjp = jax.vjp(f, x)
        return y, vjp(jnp.ones_like(y))[0]

    return jax.jit(both)


def float64_probe_points(limit: float = 50.0, n: int = 801, seed: int = 0) -> np.ndarray:
    """float64 inputs for mpmath comparisons: a linear grid on [-limit, limit], random points
    out to ±800 and magnitudes from 1e-300 to 1e308 of both signs."""
    rng = np.random.default_rng(seed)
    mags = np.logspace(-300, 308, 60)
    return np.concatenate([np.linspace(-limit, limit, n), rng.uniform(-800, 800, 100), mags, -mags])


def _normal_pdf(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore"):
        return np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)


_MP_CACHE: dict = {}


def mp_where(x, mask, fn, fallback) -> np.ndarray:
    """``fn`` (mpmath, one float -> mpf) where ``mask``, the float64 ``fallback`` elsewhere.

    For references whose float64 formula loses digits in part of the range (scipy's ndtr:
    450 ulp at x = -27; exp(-x²/2): the rounding of x²). Cached by input, since the generic
    tests evaluate a reference on the same sweep once per policy and mode.
    """
    import mpmath

    x = np.asarray(x, dtype=np.float64)
    out = np.array(fallback, dtype=np.float64, copy=True)
    key = (fn.__qualname__, x.tobytes(), np.asarray(mask).tobytes())
    if key not in _MP_CACHE:
        with mpmath.workdps(40):
            _MP_CACHE[key] = np.array([float(fn(mpmath.mpf(float(v)))) for v in x[mask]])
    out[mask] = _MP_CACHE[key]
    return out


def _mp_gelu(v):
    import mpmath

    return v * mpmath.ncdf(v)


def _mp_gelu_slope(v):
    import mpmath

    return mpmath.ncdf(v) + v * mpmath.npdf(v)


def gelu_ref(x) -> np.ndarray:
    """x·Φ(x) in float64 (mpmath for x in [-40, -1], where scipy's ndtr loses up to 450 ulp;
    scipy's float64 elsewhere); NaN at -inf."""
    import scipy.special

    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        y = x * scipy.special.ndtr(x)
    return mp_where(x, (x >= -40) & (x <= -1), _mp_gelu, y)


def gelu_grad_ref(x) -> np.ndarray:
    """Φ(x) + x·φ(x), with its limits 0 at -inf and 1 at +inf (mpmath on [-40, -1])."""
    import scipy.special

    x = np.asarray(x, dtype=np.float64)
    xf = np.where(np.isinf(x), 0.0, x)
    d = scipy.special.ndtr(x) + xf * _normal_pdf(xf)
    return mp_where(x, (x >= -40) & (x <= -1), _mp_gelu_slope, d)


def gelu_grad_scale(x) -> np.ndarray:
    """Φ(x) + |x|·φ(x): the size of the slope's terms (it crosses 0 at x ≈ -0.75)."""
    import scipy.special

    x = np.asarray(x, dtype=np.float64)
    xf = np.where(np.isinf(x), 0.0, x)
    return scipy.special.ndtr(x) + np.abs(xf) * _normal_pdf(xf)


def gelu_second_ref(x) -> np.ndarray:
    """φ(x)·(2 - x²)."""
    x = np.asarray(x, dtype=np.float64)
    return _normal_pdf(x) * (2 - x * x)


_GELU_K = 2 * np.sqrt(2 / np.pi)  # z = K·x·(1 + A·x²) in tanh-GELU = x·σ(z)
_GELU_A = 0.044715


def _mp_gelu_tanh(v):
    import mpmath

    k = 2 * mpmath.sqrt(2 / mpmath.pi)
    return v / (1 + mpmath.exp(-k * v * (1 + mpmath.mpf(_GELU_A) * v * v)))


def _mp_gelu_tanh_slope(v):
    import mpmath

    k = 2 * mpmath.sqrt(2 / mpmath.pi)
    a = mpmath.mpf(_GELU_A)
    z = k * v * (1 + a * v * v)
    s = 1 / (1 + mpmath.exp(-z))
    return s * (1 + v * k * (1 + 3 * a * v * v) * (1 - s))


def gelu_tanh_ref(x) -> np.ndarray:
    """x·(1 + tanh(√(2/π)(x + 0.044715x³)))/2 = x·σ(z) in float64, mpmath on [-40, -2] (z's
    rounding costs float64 1700 ulp at x = -20); NaN at -inf."""
    x = np.asarray(x, dtype=np.float64)
    xc = np.clip(x, -1e3, 1e3)  # σ(z) is 0 or 1 beyond; no x³ overflow
    with np.errstate(invalid="ignore"):
        y = x * sigmoid_ref(_GELU_K * xc * (1 + _GELU_A * xc * xc))
    return mp_where(x, (x >= -40) & (x <= -2), _mp_gelu_tanh, y)


def _gelu_tanh_parts(x):
    x = np.asarray(x, dtype=np.float64)
    xc = np.clip(np.where(np.isnan(x), 0.0, x), -1e3, 1e3)
    z = _GELU_K * xc * (1 + _GELU_A * xc * xc)
    dz = _GELU_K * (1 + 3 * _GELU_A * xc * xc)
    return xc, z, dz, sigmoid_ref(z), sigmoid_ref(-z)


def gelu_tanh_grad_ref(x) -> np.ndarray:
    """σ(z)·(1 + x·z'·σ(-z)), with its limits 0 at -inf and 1 at +inf (mpmath on [-40, -2])."""
    xc, z, dz, s, sm = _gelu_tanh_parts(x)
    x = np.asarray(x, np.float64)
    out = np.where(np.isnan(x), np.nan, s * (1 + xc * dz * sm))
    return mp_where(x, (x >= -40) & (x <= -2), _mp_gelu_tanh_slope, out)


def gelu_tanh_grad_scale(x) -> np.ndarray:
    """σ(z) + |x|·z'·σ(z)σ(-z): the size of the slope's terms."""
    xc, z, dz, s, sm = _gelu_tanh_parts(x)
    return s * (1 + np.abs(xc) * dz * sm)


def gelu_tanh_second_ref(x) -> np.ndarray:
    """σσ̄·(2z' + x·z'' + x·z'²·(σ̄ - σ)), z'' = 6·K·A·x."""
    xc, z, dz, s, sm = _gelu_tanh_parts(x)
    return s * sm * (2 * dz + xc * 6 * _GELU_K * _GELU_A * xc + xc * dz * dz * (sm - s))


def _mish_parts(x):
    """(x, tanh(softplus(x)), 1 - tanh², σ(x)) in float64, from e = e^-|x| (no overflow)."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    n = e * (e + 2)  # x < 0: tanh(sp) = n/(n + 2), 1 - tanh² = 4(n + 1)/(n + 2)²
    m = 1 + 2 * e + 2 * e * e  # x >= 0: tanh(sp) = (1 + 2e)/m, 1 - tanh² = 4e²(1 + e)²/m²
    t = np.where(x < 0, n / (n + 2), (1 + 2 * e) / m)
    sech2 = np.where(x < 0, 4 * (n + 1) / (n + 2) ** 2, 4 * (e * (1 + e)) ** 2 / m**2)
    return x, t, sech2, sigmoid_ref(x)


def mish_ref(x) -> np.ndarray:
    """x·tanh(softplus(x)) in float64; NaN at -inf (-inf·0)."""
    x, t, _, _ = _mish_parts(x)
    with np.errstate(invalid="ignore"):
        return x * t


def mish_grad_ref(x) -> np.ndarray:
    """tanh(sp) + x·sech²(sp)·σ(x), with its limits 0 at -inf and 1 at +inf."""
    x, t, sech2, s = _mish_parts(x)
    xf = np.where(np.isinf(x), 0.0, x)
    return t + xf * sech2 * s


def mish_grad_scale(x) -> np.ndarray:
    """tanh(sp) + |x|·sech²(sp)·σ(x): the size of the slope's terms (a zero at x ≈ -1.19)."""
    x, t, sech2, s = _mish_parts(x)
    xf = np.where(np.isinf(x), 0.0, x)
    return t + np.abs(xf) * sech2 * s


def mish_second_ref(x) -> np.ndarray:
    """sech²(sp)·σ(x)·(2 + x·(σ(-x) - 2·tanh(sp)·σ(x)))."""
    x, t, sech2, s = _mish_parts(x)
    return sech2 * s * (2 + x * (sigmoid_ref(-x) - 2 * t * s))


SELU_SCALE = 1.0507009873554804934193349852946  # torch's constants
SELU_ALPHA = 1.6732632423543772848170429916717


def elu_ref(x, alpha: float = 1.0) -> np.ndarray:
    """x for x > 0, α·expm1(x) otherwise, in float64 (-α at -inf)."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


def elu_grad_ref(x, alpha: float = 1.0) -> np.ndarray:
    """1 for x > 0, α·e^x otherwise (α at 0, as torch)."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(x > 0, 1.0, alpha * np.exp(np.minimum(x, 0)))


def celu_ref(x, alpha: float = 1.0) -> np.ndarray:
    """x for x > 0, α·expm1(x/α) otherwise, in float64."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0) / alpha))


def celu_grad_ref(x, alpha: float = 1.0) -> np.ndarray:
    """1 for x > 0, e^(x/α) otherwise."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(x > 0, 1.0, np.exp(np.minimum(x, 0) / alpha))


def selu_ref(x) -> np.ndarray:
    """λ·elu(x, α) with torch's constants, in float64."""
    return SELU_SCALE * elu_ref(x, SELU_ALPHA)


def selu_grad_ref(x) -> np.ndarray:
    return SELU_SCALE * elu_grad_ref(x, SELU_ALPHA)


def elu_slope_from_output(y, alpha: float = 1.0, scale: float = 1.0, input_scale: float = 1.0):
    """The slope an ELU-family output ``y`` (in its own dtype) implies: ``scale`` for y > 0,
    else ``(y + scale·α)·input_scale`` (ELU: y + α; CELU: (y + α)/α; SELU: y + λα), in
    float64 but with ``scale·α`` rounded to float32 unless y is float64, as the computation
    holds it (half precision is computed in float32)."""
    c = scale * alpha
    if np.asarray(y).dtype != np.float64:
        c = float(np.float32(c))
    y = np.asarray(y).astype(np.float64)
    return np.where(y > 0, scale, (y + c) * input_scale)


def snake_ref(x, alpha: float) -> np.ndarray:
    """x + sin²(αx)/α in float64 (x at α = 0)."""
    x = np.asarray(x, dtype=np.float64)
    if alpha == 0:
        return x.copy()
    with np.errstate(invalid="ignore"):
        y = x + np.sin(alpha * x) ** 2 / alpha
    return np.where(np.isinf(x), x, y)  # x + a bounded term: ±inf at ±inf


def snake_grad_ref(x, alpha: float) -> np.ndarray:
    """1 + sin(2αx)."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return 1 + np.sin(2 * alpha * x)


def snake_value_scale(x, alpha: float) -> np.ndarray:
    """|x| + sin²(αx)/|α|: the size of the value's two terms (they cancel for αx < 0)."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.abs(x) + (0 if alpha == 0 else np.sin(alpha * x) ** 2 / abs(alpha))


def snake_grad_scale(x, alpha: float) -> np.ndarray:
    """1 + |sin(2αx)|: the size of the slope's terms (it reaches 0)."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return 1 + np.abs(np.sin(2 * alpha * x))


def snake_alpha_grad_ref(x, alpha) -> tuple[np.ndarray, np.ndarray]:
    """(d/dα, its terms' size) of x + sin²(αx)/α in float64: x²(sin 2s/s - sin²s/s²) and
    x²(|sin 2s|/|s| + sin²s/s²), s = αx (x² and 0 at s = 0)."""
    x = np.asarray(x, dtype=np.float64)
    s = np.asarray(alpha, dtype=np.float64) * x
    with np.errstate(invalid="ignore", divide="ignore"):
        zero = s == 0
        sd = np.where(zero, 1.0, s)
        a = np.where(zero, 2.0, np.sin(2 * s) / sd)
        b = np.where(zero, 1.0, (np.sin(s) / sd) ** 2)
    return x * x * (a - b), x * x * (np.abs(a) + b)
