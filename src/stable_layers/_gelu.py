"""GELU, ``x · Φ(x)`` (exact) or its tanh form: accurate in both tails, keeping one array.

Exact form. ``Φ(x) = erfc(t)/2`` with ``t = -x/√2``. Below x = -√2 (t > 1) three errors add
up in the textbook ``x · erfc(-x/√2)/2`` (``jax.nn.gelu``): the rounding of ``t`` (erfc's
relative error is ``2t²`` times ``t``'s), XLA's ``erfc``, which evaluates ``exp(-t·t)`` with a
rounded ``t·t`` (against mpmath: 62 ulp for t in [6, 9.2] in float32, 496 for t in [20, 27]
in float64), and the underflow of ``Φ`` where ``x·Φ(x)`` is still normal (x in
[-13.08, -12.9] in float32). Here:

* for t > 1, ``t`` and ``t²`` are carried with their rounding errors (Veltkamp splits, no
  fused multiply-add needed) and XLA's erfc is corrected for both to first order;
* far out (x < -12.5 in float32, x < -26 in float64) the asymptotic Mills-ratio series
  ``Φ(x) = φ(x)/|x| · (1 - 1/x² + 3/x⁴ - …)`` replaces erfc, with ``φ(x)`` computed from the
  exact ``x²/2`` and scaled by e^64 (float64: e^512) so that it does not underflow early;
* near 0 in float32 (|x| <= 1.5) ``Φ = φ·R``, R a fitted polynomial (XLA's float32 erf is 3 ulp
  off, 5x more after ``1/2 + erf/2`` cancels); float64 keeps erf, t's rounding corrected for;
* above 0, ``Φ(x) = 1 - Φ(-x)``.

The slope ``Φ(x) + x·φ(x)`` uses the same pieces.

Tanh form. ``(1 + tanh(u))/2 = σ(2u)``, so the value is ``x · σ(z)`` with
``z = 2√(2/π)·x·(1 + 0.044715x²)``: no cancellation for negative x, and ``x³`` is never formed
beyond |x| = 30, where σ(z) is 0 or 1 in every dtype (float16 and bfloat16 are computed in
float32, where x³ cannot overflow anyway).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import jax
import jax.numpy as jnp

from ._activation import declare
from ._checks import check_bool
from ._silu import _E_M64, _tail, x_sigmoid
from ._softplus import _finite_or_zero, _sigmoid

# 1/√2 as hi + lo, per compute dtype (hi: the rounded constant; lo: the rest, to ~1e-33).
_INV_SQRT2 = {
    jnp.dtype(jnp.float32): (0.70710677, 1.2101617e-08),
    jnp.dtype(jnp.float64): (0.7071067811865476, -4.833646656726457e-17),
}
# Veltkamp's splitter 2^s + 1, s = ceil(p/2): hi has p - s bits, so hi·hi is exact.
_SPLITTER = {jnp.dtype(jnp.float32): 4097.0, jnp.dtype(jnp.float64): 134217729.0}
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT2 = math.sqrt(2.0)
# Below this x the asymptotic Mills series replaces erfc: its 9 terms leave a relative error
# below 1e-12 (float32) and 1e-18 (float64) there.
_ASYMPTOTIC_BELOW = {jnp.dtype(jnp.float32): -12.5, jnp.dtype(jnp.float64): -26.0}
_MILLS = (1.0, -1.0, 3.0, -15.0, 105.0, -945.0, 10395.0, -135135.0, 2027025.0)
# φ(x) = e^-h/√(2π), h = x²/2, underflows for h > 87.3 (float32) or 708.4 (float64) where
# x·φ(x) is still normal: for h >= T it is computed as e^(T - h) times e^-T, applied last.
# T - h is exact for h >= T (T is a multiple of h's ulp, and |T - h| <= h).
_SHIFT = {jnp.dtype(jnp.float32): 64.0, jnp.dtype(jnp.float64): 512.0}


def _split(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    p = a * _SPLITTER[a.dtype]
    hi = p - (p - a)
    return hi, a - hi


def _two_prod(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(a·b rounded, its rounding error), exactly (Dekker)."""
    p = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def _phi_parts(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(φ_s, f) with φ(x) = φ_s·f: x²/2's rounding error corrected for, and φ_s normal
    wherever x·φ(x) is (f = e^-T or 1; multiply a product by it last).

    |x| is clamped to 60 (double where: no inf in a branch not taken), where even φ_s is 0
    in every dtype (e^(512 - 1800) in float64), so that φ_s·x is 0 for any finite x.
    """
    xc = jnp.where(jnp.abs(x) <= 60.0, x, 60.0)
    s, e = _two_prod(xc, xc)
    h, hl = s * 0.5, e * 0.5  # halving is exact
    t = _SHIFT[x.dtype]
    big = h >= t
    phi_s = jnp.exp(jnp.where(big, t, 0.0) - h) * (1 - hl) * _INV_SQRT_2PI
    return phi_s, jnp.where(big, math.exp(-t), 1.0).astype(x.dtype)


def _mills(x: jax.Array, below: float) -> jax.Array:
    """|x|·Φ(x)/φ(x) for x < below: 1 - 1/x² + 3/x⁴ - 15/x⁶ + … (9 terms)."""
    xc = jnp.where(x < below, x, below)
    w = 1 / (xc * xc)
    m = jnp.full_like(w, _MILLS[-1])
    for c in _MILLS[-2::-1]:
        m = m * w + c
    return m


# float32: Φ(x) = φ(x)·R(x) on [-1.5, 0], R = Φ/φ (the Mills ratio of -x), smooth there: a
# degree-11 polynomial in u = x + 0.75, least-squares fitted in float64 to scipy's ndtr
# (relative error 1 ulp after rounding the coefficients to float32). It replaces erf, whose
# float32 error (XLA: 3 ulp of erf) grows 5x in 1/2 + erf/2 near x = -√2.
_R_CENTER = -0.75
_R_POLY = (
    0.752571165561676,
    0.4355716109275818,
    0.21294623613357544,
    0.09195397794246674,
    0.035995110869407654,
    0.012991554103791714,
    0.004375874996185303,
    0.0013870670227333903,
    0.00041461281944066286,
    0.00011928827734664083,
    3.644111711764708e-05,
    9.22307026485214e-06,
)


def _cdf_erfc(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(Φ(x) = erfc(t)/2, t, dt) for t = -x/√2 = t + dt > 1 (x < -√2); the caller clamps x."""
    hi_c, lo_c = _INV_SQRT2[x.dtype]
    p, e = _two_prod(x, jnp.asarray(hi_c, x.dtype))
    t = -p  # -x/√2 = t + dt, with dt:
    dt = -(e + x * lo_c)
    # XLA's erfc(t) for t >= 1 is exp(-fl(t·t))·R(t): multiply by e^(fl(t·t) - t²) to undo
    # the square's rounding, and by 1 - dt·k(t), k(t) = -erfc'(t)/erfc(t) ≈ 2t + 1/t, for t's.
    tc = jnp.maximum(t, 1.0)
    _, sq_err = _two_prod(tc, tc)
    k = 2 * tc + 1 / tc
    return jax.lax.erfc(tc) * 0.5 * ((1 - sq_err) - dt * k), t, dt


def _lower_cdf(xn: jax.Array) -> jax.Array:
    """Φ(x) for below <= x <= 0 (clamped by the caller)."""
    if xn.dtype == jnp.float32:
        mid = xn >= -1.5
        xm = jnp.where(mid, xn, -1.5)
        u = xm - _R_CENTER
        r = jnp.full_like(u, _R_POLY[-1])
        for c in _R_POLY[-2::-1]:
            r = r * u + c
        phi_s, _ = _phi_parts(xm)  # |x| <= 1.5: no scaling
        tail, _, _ = _cdf_erfc(jnp.where(mid, -2.0, xn))
        return jnp.where(mid, phi_s * r, tail)
    # float64: erfc below -√2, erf above, each with t's rounding corrected for.
    tail, t, dt = _cdf_erfc(xn)
    # t <= 1: 1/2 + erf(-t)/2, and since erf'(t) = 2e^(-t²)/√π, t's rounding moves Φ by
    # -√2·φ(x)·dt.
    xb = jnp.where(t > 1, 0.0, xn)
    phi_s, _ = _phi_parts(xb)  # |x| <= √2: no scaling
    body = (0.5 + 0.5 * jax.lax.erf(-t)) - (_SQRT2 * dt) * phi_s
    return jnp.where(t > 1, tail, body)


def _cdf(x: jax.Array) -> jax.Array:
    """Φ(x) for every x: 1 - Φ(-x) above 0, where Φ(-x) <= 1/2 and nothing cancels (and
    whose derivative, through φ, stays accurate for large x)."""
    below = _ASYMPTOTIC_BELOW[x.dtype]
    xn = jnp.where(x > 0, -x, x)  # -|x|, but with slope -1 at 0 (abs has 0 there)
    asym = xn < below
    xa = jnp.where(asym & (xn > -jnp.inf), xn, below)  # double where: finite in every branch
    phi_s, f = _phi_parts(xa)
    far = (phi_s * _mills(xa, below) / -xa) * f  # Φ = φ·M/|x| in the asymptotic region
    lower = jnp.where(asym, far, _lower_cdf(jnp.where(asym, below, xn)))
    lower = jnp.where(jnp.isinf(x), 0.0, lower)
    return jnp.where(x > 0, 1 - lower, lower)


def _exact_value(x: jax.Array) -> jax.Array:
    below = _ASYMPTOTIC_BELOW[x.dtype]
    asym = x < below
    xa = jnp.where(asym & (x > -jnp.inf), x, below)
    phi_s, f = _phi_parts(xa)
    # x·Φ(x) = -φ(x)·M(x) down there, one rounding fewer than x·(φ·M/|x|).
    far = -(phi_s * _mills(xa, below)) * f
    xv = jnp.where(asym, 0.0, x)  # double where
    # x · Φ(x): -inf · 0 = NaN at x = -inf (torch's value).
    return jnp.where(asym, jnp.where(x == -jnp.inf, jnp.nan, far), xv * _cdf(xv))


def _exact_slope(x: jax.Array) -> jax.Array:
    """Φ(x) + x·φ(x); its limits are 0 at -inf and 1 at +inf."""
    below = _ASYMPTOTIC_BELOW[x.dtype]
    asym = x < below
    xf = _finite_or_zero(x)  # x·φ(x) -> 0 at ±inf, but inf · 0 is NaN
    phi_s, f = _phi_parts(xf)
    # Below the threshold Φ = φ·M/|x|, so Φ + xφ = -φ·(|x| - M/|x|).
    xa = jnp.where(asym & (x > -jnp.inf), -x, -below)
    far = -(phi_s * (xa - _mills(-xa, below) / xa)) * f
    xv = jnp.where(asym, 0.0, x)
    near = _cdf(xv) + (xf * phi_s) * f
    return jnp.where(asym, jnp.where(x == -jnp.inf, 0.0, far), near)


# ---- the tanh form: x·σ(z), z = 2√(2/π)·x·(1 + 0.044715x²) ---------------------------

_K = 2.0 * math.sqrt(2.0 / math.pi)
_A = 0.044715
_CLAMP = 30.0  # σ(z) is exactly 0 or 1 beyond, in every dtype; keeps x³ far from overflow


def _z(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(z, dz/dx) at x clamped to ±30."""
    xc = jnp.clip(x, -_CLAMP, _CLAMP)
    x2 = xc * xc
    return _K * xc * (1 + _A * x2), _K * (1 + (3 * _A) * x2)


def _tanh_value(x: jax.Array) -> jax.Array:
    return x_sigmoid(x, _z(x)[0])


def _tanh_slope(x: jax.Array) -> jax.Array:
    """σ(z)·(1 + x·z'·σ(-z)); the limits are 0 at -inf and 1 at +inf."""
    z, dz = _z(x)
    # x clamped like z: beyond |x| = 30 σ(z)σ(-z) is 0 and the slope exactly 0 or 1, and
    # x·z' cannot overflow (nor be inf · 0 at ±inf).
    xc = jnp.clip(x, -_CLAMP, _CLAMP)
    factor = 1 + (xc * dz) * _sigmoid(-z)
    tail, e = _tail(z)  # σ(z) = e^(z + 64)·e^-64 where σ(z) itself would underflow
    return jnp.where(tail, (factor * e) * _E_M64, _sigmoid(z) * factor)


_exact = declare(
    _exact_value,
    derivative=_exact_slope,
    name="stable_layers.gelu",
    residuals=("input", "derivative"),
)
_tanh = declare(
    _tanh_value,
    derivative=_tanh_slope,
    name="stable_layers.gelu",
    residuals=("input", "derivative"),
)


def gelu(
    x: Any,
    *,
    approximate: bool = False,
    residual: Literal["input", "derivative"] | None = None,
    bits: int | None = None,
    mode: Literal["vjp", "jvp"] = "vjp",
) -> jax.Array:
    """GELU, ``x · Φ(x)`` or its tanh form, keeping one array for its backward pass.

    ``gelu(x) = x·Φ(x) = x·erfc(-x/√2)/2`` with slope ``Φ(x) + x·φ(x)``, or with
    ``approximate=True`` ``x·(1 + tanh(√(2/π)(x + 0.044715x³)))/2``. The default is the exact
    form, as in ``torch.nn.functional.gelu``; ``jax.nn.gelu`` defaults to the tanh form
    (JAX issue 4428), so a model ported between the two silently changes activation.

    The textbook tanh form overflows ``x**3`` in float16 for |x| > 40 and its gradient is
    then NaN (fairseq issue 2235), and its ``1 + tanh(u)`` cancels for negative x. The exact
    form through ``erfc`` (``jax.nn.gelu(x, approximate=False)``) loses up to 233 ulp in
    float32 and 2060 in float64 for x < -√2 (the rounding of
    ``x/√2`` and of its square), and both forms return 0 where ``Φ`` underflows before
    ``x·Φ(x)`` does. This version:

    * is finite for every finite input in every float dtype, with ``gelu(+inf) = inf``
      (slope 1), ``gelu(-inf) = NaN`` (torch's and ``jax.nn``'s value; slope 0, the limit)
      and NaN in → NaN out; the tanh form never forms ``x³`` beyond |x| = 30;
    * is accurate in both tails (the bounds, in ulps, are in ``tests/test_gelu.py``);
    * keeps one array for the backward pass: by default ``x``.

    Args:
        x: Input array, any shape. Float16 and bfloat16 are computed in float32 and rounded
            once; integers and booleans promote like ``jax.nn.gelu``; complex input raises
            TypeError.
        approximate: ``False`` (default): the exact ``x·Φ(x)``. ``True``: the tanh form.
            A Python bool, fixed at trace time.
        residual: What the backward pass keeps: ``"input"`` (default; ``x``) or
            ``"derivative"`` (the slope, in x's dtype). Each kept array is tagged
            ``jax.ad_checkpoint.checkpoint_name(..., "stable_layers.gelu")``.
        bits: ``1, 2, 4`` or ``8`` keeps the slope as packed codes of that many bits
            (reverse mode only, ``residual`` left out or ``"derivative"``); ``None`` (default)
            keeps it exactly.
        mode: ``"vjp"`` (default; ``jax.custom_vjp``) or ``"jvp"`` (``jax.custom_jvp``: also
            forward mode and ``jax.hessian``). Both give identical values and gradients.

    Returns:
        An array of ``x``'s shape and (float) dtype.

    Raises:
        TypeError: ``x`` is complex, or ``approximate`` is not a bool.
        ValueError: ``residual``, ``bits`` or ``mode`` is not a valid choice.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import stable_layers as sl
        >>> x = jnp.array([-13.1, -1.0, 0.0, 2.0], jnp.float32)
        >>> print(sl.gelu(x))  # jax.nn.gelu(x, approximate=False)[0] is -0.
        [-2.1566273e-38 -1.5865526e-01  0.0000000e+00  1.9544997e+00]
        >>> print(jax.grad(lambda x: sl.gelu(x).sum())(x))
        [-2.8249953e-37 -8.3315477e-02  5.0000000e-01  1.0852318e+00]
        >>> x16 = jnp.array([-50.0, 50.0], jnp.float16)  # x**3 overflows float16
        >>> print(sl.gelu(x16, approximate=True))
        [-0. 50.]

    References:
        Hendrycks and Gimpel (2016), "Gaussian Error Linear Units (GELUs)"; fairseq issue
        2235; JAX issue 4428; ``torch.nn.functional.gelu``.
    """
    approximate = check_bool(_exact.name, "approximate", approximate)
    rule = _tanh if approximate else _exact
    return rule(x, residual=residual, bits=bits, mode=mode)


gelu.name = _exact.name  # type: ignore[attr-defined]
