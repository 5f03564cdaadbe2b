"""Softplus, ``log(1 + exp(βx)) / β``: finite everywhere, with a one-array backward pass.

This file is the single source of truth for softplus: the forward formula, its slope from the
input and from the output, and the β derivative. ``_activation.py`` turns them into the custom
rules and residual policies; the Equinox and Flax modules only call ``softplus``. The accurate
building blocks here (``_sigmoid``, ``_one_minus_exp_neg``) are shared with ``log_sigmoid``.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp

from ._activation import declare
from ._checks import as_float_array, check_beta, check_beta_range, check_threshold, compute_dtype

# --------------------------------------------------------------------------------------
# Building blocks with exact derivative rules. Every derivative the rules below take, to any
# order, goes through these, so grad-of-grad stays accurate where the stock rules round to 0:
# lax.logistic's rule is ans * (1 - ans), which is exactly 0 once sigmoid(z) rounds to 1
# (z > 16.6 in float32); sigmoid(z) * sigmoid(-z) keeps the e^-z.
# --------------------------------------------------------------------------------------


@jax.custom_jvp
def _sigmoid(z: jax.Array) -> jax.Array:
    """1 / (1 + exp(-z)) via lax.logistic; only its derivative rule is replaced.

    exp(-z) overflowing to inf for z < -88 (float32) is harmless here: 1 / inf = 0, the
    correctly rounded (flushed) value, and no NaN can arise. On XLA CPU this branch-free
    form fuses into the neighbouring matmul's backward, where a
    ``where(z >= 0, 1, e) / (1 + e)`` form cost an extra full-size buffer per layer in the
    ``residual="input"`` MLP step (``benchmarks/run.py``'s memory table measures it), for a
    fraction of an ulp.
    """
    return jax.lax.logistic(z)


@_sigmoid.defjvp
def _sigmoid_jvp(primals, tangents):
    (z,), (dz,) = primals, tangents
    s = _sigmoid(z)
    return s, _sigmoid(-z) * s * dz


def _finite_or_zero(a: jax.Array) -> jax.Array:
    # |z| * sigmoid(-|z|) -> 0 as |z| -> inf, but inf * 0 is NaN; the limit replaces it.
    return jnp.where(jnp.isinf(a), 0, a)


@jax.custom_jvp
def _entropy(z: jax.Array) -> jax.Array:
    """Binary entropy of sigmoid(z) in nats: ``|z| sigmoid(-|z|) + log1p(exp(-|z|))``.

    It is ``softplus(z) - z sigmoid(z)`` written as a sum of two non-negative terms, so it has
    no cancellation at large |z| (where both of those are ~|z|). ``d softplus_β / dβ = -H(βx)/β²``.
    """
    a = jnp.abs(z)
    return _finite_or_zero(a) * _sigmoid(-a) + jnp.log1p(jnp.exp(-a))


@_entropy.defjvp
def _entropy_jvp(primals, tangents):
    (z,), (dz,) = primals, tangents
    return _entropy(z), -_finite_or_zero(z) * _sigmoid(z) * _sigmoid(-z) * dz


# Range reduction u = k ln2 + r (k = round(u / ln2), |r| <= ln2/2):
#   1 - exp(-u) = (1 - 2^-k) + 2^-k m,   m = 1 - exp(-r) = r + r^2 P(r).
# Every constant is a float32 value written out exactly.
_INV_LN2 = 1.4426950216293335  # float32(1 / ln 2)
_LN2_HI = 0.693145751953125  # ln 2 to 16 bits (0x1.62e4p-1): k * _LN2_HI is exact for k < 256
_LN2_LO = 1.428606765330187e-06  # float32(ln 2 - _LN2_HI)
_U_CLAMP = 30.0  # 1 - exp(-30) rounds to 1; keeps k <= 44 (also maps inf to 1)
_K_BITS = 12582912.0  # 1.5 * 2^23: the bits of k + this are 0x4B400000 + k
# Minimax (relative error of r + r^2 P(r)) on [-ln2/2, ln2/2], degree 4: a discrete Remez fit
# in float64 against mpmath, the coefficients rounded to float32 one at a time with the rest
# refitted (minimax error 0.236 * 2^-24 relative).
_P = (
    -0.4999999701976776,  # -0x1.fffffep-2
    0.16666539013385773,  # 0x1.5554aap-3
    -0.04166775569319725,  # -0x1.55579ep-5
    0.008367124013602734,  # 0x1.122c86p-7
    -0.0013835642021149397,  # -0x1.6ab16cp-10
)


@jax.custom_jvp
def _one_minus_exp_neg(u: jax.Array) -> jax.Array:
    """1 - exp(-u) for u >= 0 to < 1 ulp in float32: sigmoid from softplus's output.

    ``1 - exp(-u)`` cancels for small u, and XLA's float32 ``expm1`` loses ~5 ulps on CPU.
    This is expm1 written out: with k = round(u / ln2) and r = u - k ln2 (Cody-Waite, the
    first step exact), ``1 - exp(-u) = (1 - 2^-k) + 2^-k (1 - exp(-r))``, and 1 - exp(-r)
    is ``r + r^2 P(r)`` with P a degree-4 minimax polynomial on |r| <= ln2/2. For k = 0
    (u < 0.347) r = u exactly. 2^-k is built from k's bits. No exp and no select, so the
    backward pass is cheaper than ``jax.nn.softplus``'s (``benchmarks/results.md`` measures
    it) and the softplus gradient is within 2.8 ulp in float32 (``tests/test_softplus.py``).
    float64 keeps ``-expm1(-u)``, which is accurate there.
    """
    if u.dtype == jnp.float64:
        return -jnp.expm1(-u)
    uc = jnp.minimum(u, _U_CLAMP)  # NaN stays NaN
    k = jax.lax.round(uc * _INV_LN2, jax.lax.RoundingMethod.TO_NEAREST_EVEN)
    r = (uc - k * _LN2_HI) - k * _LN2_LO
    p: jax.Array | float = _P[-1]
    for c in _P[-2::-1]:
        p = p * r + c
    m = r + (r * r) * p
    k_bits = jax.lax.bitcast_convert_type(k + _K_BITS, jnp.int32)  # 0x4B400000 + k
    # (k_bits << 23) is k << 23 (the high bits shift out); 0x3F800000 is 1.0f: this is 2^-k.
    s = jax.lax.bitcast_convert_type(jnp.int32(0x3F800000) - (k_bits << 23), u.dtype)
    return (1 - s) + s * m


@_one_minus_exp_neg.defjvp
def _one_minus_exp_neg_jvp(primals, tangents):
    # expm1's stock rule is (ans + 1) * t, which is 0 once expm1(-u) rounds to -1 (u > 17 in
    # float32); exp(-u) keeps it.
    (u,), (du,) = primals, tangents
    return _one_minus_exp_neg(u), jnp.exp(-u) * du


# --------------------------------------------------------------------------------------
# The math, in the compute dtype (float32 for half-precision inputs).
# ``beta`` is a Python float (static) or an array already cast to the compute dtype.
# --------------------------------------------------------------------------------------


def _mul(x: jax.Array, beta: float | jax.Array) -> jax.Array:
    return x if isinstance(beta, float) and beta == 1.0 else x * beta


def _div(x: jax.Array, beta: float | jax.Array) -> jax.Array:
    return x if isinstance(beta, float) and beta == 1.0 else x / beta


def _value(x: jax.Array, beta: float | jax.Array) -> jax.Array:
    z = _mul(x, beta)
    # exp(-|z|) <= 1 cannot overflow, and for z > 0 the identity
    # softplus(z) = z + log1p(exp(-z)) returns x itself plus a correction, so the tail is
    # exact even where beta * x overflows to inf for a finite x. No branch evaluates exp(z).
    tail = _div(jnp.log1p(jnp.exp(-jnp.abs(z))), beta)
    return jnp.where(z > 0, x, 0) + tail


def _beta_slope(x: jax.Array, beta: jax.Array) -> jax.Array:
    """d softplus_β(x) / dβ = (x sigmoid(βx) - y) / β = -H(βx) / β²."""
    return -_entropy(x * beta) / (beta * beta)


_rule = declare(
    _value,
    derivative=lambda x, beta: _sigmoid(_mul(x, beta)),
    # e^{βy} = 1 + e^{βx}, hence sigmoid(βx) = 1 - e^{-βy}.
    derivative_from_output=lambda y, beta: _one_minus_exp_neg(_mul(y, beta)),
    param_derivatives=lambda x, beta: (_beta_slope(x, beta),),
    name="stable_layers.softplus",
    residuals=("output", "input"),
)


# --------------------------------------------------------------------------------------
# Public API.
# --------------------------------------------------------------------------------------


def softplus(
    x: Any,
    *,
    beta: float | jax.Array = 1.0,
    threshold: float | None = None,
    residual: Literal["output", "input"] = "output",
    mode: Literal["vjp", "jvp"] = "vjp",
) -> jax.Array:
    r"""Numerically stable softplus whose backward pass keeps only one array.

    ``softplus_β(x) = log(1 + exp(βx)) / β``, and ``d/dx softplus_β(x) = sigmoid(βx)``.

    The textbook ``jnp.log1p(jnp.exp(x))`` overflows to ``inf`` for x > 88.7 in float32 and
    x > 11.1 in float16, and its autodiff gradient is then ``inf / inf = nan``, so a
    mixed-precision model's loss goes non-finite within a few steps. ``jax.nn.softplus`` is
    finite but keeps two full-size arrays per activation for its backward pass, its bfloat16
    gradient at x=5 rounds to 1.0 (true 0.9933), and its second derivative is 0 beyond
    x ≈ 17 (JAX issue 40387). This version:

    * is finite for every finite input in every float dtype, up to ±``finfo.max`` (also where
      ``beta * x`` overflows), with ``softplus(+inf) = inf`` (gradient 1),
      ``softplus(-inf) = 0`` (gradient 0), NaN in → NaN out, and gradient exactly 0.5 at 0;
    * uses ``sigmoid(βx)`` for its backward pass, and accurate rules for that sigmoid, so
      derivatives of every order are accurate (second derivative at x=30: 9.36e-14, not 0);
    * keeps one array for the backward pass: by default its own output ``y``, from which
      ``sigmoid(βx) = -expm1(-βy)``. The next layer keeps ``y`` anyway, so an MLP with this
      activation needs no more activation memory than the same MLP with none.

    Args:
        x: Input array, any shape. Float16 and bfloat16 are computed in float32 and rounded
            once; integers and booleans promote to the default float dtype, exactly like
            ``jax.nn.softplus``. Complex input raises TypeError.
        beta: A positive Python number: a compile-time constant (each new value compiles
            anew), which must be a normal number of the compute dtype (``beta <= 0`` or out of
            range raises ValueError). Or a positive floating array broadcastable to
            ``x.shape`` (a scalar or per-feature β). A traced array (under ``jit``/``grad``)
            is differentiable: its cotangent has β's own dtype and is summed over the
            broadcast axes, and since the β derivative ``-H(βx)/β²`` (H: the binary entropy
            of ``sigmoid(βx)``) needs the input, a traced β also keeps ``x``
            (``residual="output"`` then keeps ``y`` and ``x``). A concrete array is a
            constant: it is checked for positivity, and a scalar one is used like a number.
        threshold: As in ``torch.nn.Softplus``: where ``beta * x > threshold`` the output is
            ``x`` and the gradient 1. ``None`` (the default) applies no threshold, since this
            kernel needs none for stability. A threshold adds a boolean mask (1 byte per
            element) to what the backward pass keeps.
        residual: What the backward pass keeps. ``"output"`` (default): ``y`` only, free
            when the next layer keeps it too. ``"input"``: ``x`` only (the textbook ``custom_vjp``).
            Both give the same gradients to within an ulp or two; in float16/bfloat16 the
            saved ``y`` is itself rounded, so ``"output"`` gradients are within 1.4 ulp
            rather than 0.5 (``"input"`` rounds once; both bounds are asserted over every
            finite input by ``tests/test_softplus.py``). Each residual is tagged
            ``jax.ad_checkpoint.checkpoint_name(..., "stable_layers.softplus")`` so
            ``jax.checkpoint`` policies can select it by name.
        mode: ``"vjp"`` (default) builds the rule with ``jax.custom_vjp``: reverse mode and
            grad-of-grad, but a ``custom_vjp`` cannot be used with ``jax.jvp``,
            ``jax.linearize``, ``jax.jacfwd`` or ``jax.hessian``. ``"jvp"`` builds it with
            ``jax.custom_jvp``, so forward mode and Hessians work too, while reverse mode still
            keeps only the chosen residual (the tangent map runs under ``jax.checkpoint``).
            Both modes give identical values and gradients.

    Returns:
        An array of ``x``'s shape and (float) dtype: bfloat16 in, bfloat16 out.

    Raises:
        TypeError: ``x`` is complex, or ``beta`` is neither a number nor a float array.
        ValueError: ``beta <= 0``, ``threshold`` is NaN or not a number, ``beta`` does not
            broadcast to ``x.shape``, or ``residual``/``mode`` is not a valid choice.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import stable_layers as sl
        >>> x = jnp.array([-100.0, 0.0, 100.0], jnp.float32)
        >>> print(sl.softplus(x))
        [  0.          0.6931472 100.       ]
        >>> print(jax.grad(lambda x: sl.softplus(x).sum())(x))
        [0.  0.5 1. ]
        >>> x16 = jnp.float16(12.0)  # naive log1p(exp(x)) overflows above 11.1 in float16
        >>> print(sl.softplus(x16), jnp.log1p(jnp.exp(x16)))
        12.0 inf

    References:
        JAX issue 40387 (second derivative of ``jax.nn.softplus`` is 0 for large x);
        ``torch.nn.Softplus`` for the ``beta``/``threshold`` convention.
    """
    fn = _rule.name
    beta = check_beta(fn, beta)
    threshold = check_threshold(fn, threshold)
    x = as_float_array(fn, x)
    cd = compute_dtype(x.dtype)
    check_beta_range(fn, beta, cd)
    if not isinstance(beta, float) and _broadcast_shape(x.shape, beta.shape) != x.shape:
        raise ValueError(
            f"{fn}: beta of shape {beta.shape} must broadcast to x's shape {x.shape} "
            "(a scalar or a per-feature array)."
        )
    y = _rule(x, beta, residual=residual, mode=mode)
    if threshold is None:
        return y
    beta_c = beta if isinstance(beta, float) else beta.astype(cd)
    return jnp.where(_mul(x.astype(cd), beta_c) > threshold, x, y)


softplus.name = _rule.name  # type: ignore[attr-defined]


def _broadcast_shape(a, b):
    try:
        return jnp.broadcast_shapes(a, b)
    except ValueError:
        return None


def stable_log1pexp(x: Any) -> jax.Array:
    """``log(1 + exp(x))`` through a ``jax.custom_vjp`` that saves x and returns ``g * sigmoid(x)``.

    The textbook ``custom_vjp`` softplus: β = 1 and ``residual="input"``. Unlike the textbook
    forward ``log1p(exp(x))``, which is ``inf`` for x > 88.7 in float32 (and x > 11.1 in
    float16), this forward is finite for every finite x. Prefer
    :func:`softplus`, whose default keeps the output instead of the input.

    Args:
        x: Input array, any shape.

    Returns:
        ``log(1 + exp(x))``, same shape and float dtype as ``x``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from stable_layers import stable_log1pexp
        >>> print(stable_log1pexp(jnp.array([0.0, 1.0, 100.0], jnp.float32)))
        [  0.6931472   1.3132617 100.       ]
        >>> print(jax.grad(lambda x: stable_log1pexp(x).sum())(jnp.array([0.0, 1.0], jnp.float32)))
        [0.5       0.7310586]
    """
    return softplus(x, residual="input", mode="vjp")
