"""The inverse of softplus, ``log(expm1(βy)) / β``: finite for every y > 0, up to finfo.max."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ._activation import declare
from ._checks import as_float_array, check_beta, check_beta_range, compute_dtype
from ._softplus import _broadcast_shape, _div, _mul, _one_minus_exp_neg

# Below this βy, expm1(βy) is far from overflow and log(expm1(βy)) is accurate; above it
# log(expm1(z)) = z + log1p(-exp(-z)), whose correction is below float32's ulp of z.
_SWITCH = 20.0
_LN2 = 0.6931471805599453


def _value(y: jax.Array, beta: float | jax.Array) -> jax.Array:
    z = _mul(y, beta)
    # Double where: expm1 sees at most _SWITCH, so the branch not taken cannot overflow to
    # inf (and log(inf) is harmless, but an overflowing exp in a gradient is not). For large
    # z the result is y plus a correction, exact even where β·y overflows for a finite y.
    small = _div(jnp.log(jnp.expm1(jnp.minimum(z, _SWITCH))), beta)
    large = y + _div(jnp.log1p(-jnp.exp(-z)), beta)
    return jnp.where(z > _SWITCH, large, small)


def _slope(y: jax.Array, beta: float | jax.Array) -> jax.Array:
    """d/dy = 1 / sigmoid(βx) at x = softplus_inverse(y) = 1 / (1 - exp(-βy))."""
    # Not -expm1(-βy): its stock rule makes the second derivative 0 for βy > 17 (float32).
    return 1 / _one_minus_exp_neg(_mul(y, beta))


def _beta_slope(y: jax.Array, beta: jax.Array) -> jax.Array:
    """d/dβ log(expm1(βy)) / β = (z / expm1(z) - log(1 - exp(-z))) / β², z = βy.

    The textbook ``(y · slope - value) / β`` subtracts two numbers near y and cancels for large
    βy; this form is a sum of two small positive terms.
    """
    z = y * beta
    log1mexp = jnp.where(z > _LN2, jnp.log1p(-jnp.exp(-z)), jnp.log(-jnp.expm1(-z)))
    return (z / jnp.expm1(z) - log1mexp) / (beta * beta)


_rule = declare(
    _value,
    derivative=_slope,
    param_derivatives=lambda y, beta: (_beta_slope(y, beta),),
    name="stable_layers.softplus_inverse",
)


def softplus_inverse(y: Any, *, beta: float | jax.Array = 1.0) -> jax.Array:
    """The inverse of :func:`softplus`: ``x = log(exp(βy) - 1) / β``, stable for every y > 0.

    Use it to initialise a parameter that is stored before a softplus so that the softplus
    gives a target positive value: ``raw = softplus_inverse(target)``, then
    ``softplus(raw) ≈ target``. ``d/dy softplus_inverse(y) = 1 / (1 - exp(-βy))``.

    The textbook ``jnp.log(jnp.expm1(beta * y)) / beta`` overflows to ``inf`` once
    ``βy > 88.7`` in float32 (11.1 in float16), where the true result is ``y`` itself to
    within rounding. This version returns ``y + log1p(-exp(-βy)) / β`` there, finite up to
    ``finfo.max`` (also where ``β·y`` overflows), and ``log(expm1(βy)) / β`` below, which is
    ``≈ log(βy) / β`` for tiny y. ``softplus_inverse(0) = -inf``, y < 0 gives NaN (as ``log``
    does), ``+inf → +inf``, NaN propagates. Near its root, y = log(2)/β, the function is
    ill-conditioned: a relative change ε in y changes the result by about ``1.4 ε / |x|``
    relative, and no formula can do better than that. Subnormal y, which XLA flushes to zero
    on CPU and GPU, gives ``-inf``.

    Gradients use ``1 / (1 - exp(-βy))`` (finite for every y > 0) through a custom rule that
    keeps one array; ``jax.jvp`` and ``jax.hessian`` work too.

    Args:
        y: Input array, any shape. Float16 and bfloat16 are computed in float32 and rounded
            once; integers promote to the default float dtype; complex input raises TypeError.
        beta: A positive Python number (a compile-time constant; ``beta <= 0`` or outside the
            compute dtype's normal range raises ValueError), or a positive floating array
            broadcastable to ``y.shape``, which is differentiable when traced.

    Returns:
        An array of ``y``'s shape and (float) dtype.

    Raises:
        TypeError: ``y`` is complex, or ``beta`` is neither a number nor a float array.
        ValueError: ``beta <= 0`` or out of range, or ``beta`` does not broadcast to
            ``y.shape``.

    Examples:
        >>> import jax.numpy as jnp
        >>> import stable_layers as sl
        >>> y = jnp.array([1e-6, 1.0, 100.0, 3e38], jnp.float32)
        >>> print(sl.softplus_inverse(y))
        [-1.381551e+01  5.413248e-01  1.000000e+02  3.000000e+38]
        >>> print(sl.softplus(sl.softplus_inverse(jnp.float32(2.0))))  # the round trip
        2.0
        >>> print(jnp.log(jnp.expm1(jnp.float32(100.0))))  # the textbook form overflows
        inf

    References:
        PyTorch issue 72759 (a request for it since 2022);
        ``tfp.math.softplus_inverse``.
    """
    fn = _rule.name
    beta = check_beta(fn, beta)
    y = as_float_array(fn, y, "y")
    if isinstance(beta, float):
        check_beta_range(fn, beta, compute_dtype(y.dtype))
    elif _broadcast_shape(y.shape, beta.shape) != y.shape:
        raise ValueError(
            f"{fn}: beta of shape {beta.shape} must broadcast to y's shape {y.shape} "
            "(a scalar or a per-feature array)."
        )
    return _rule(y, beta, mode="jvp")


softplus_inverse.name = _rule.name  # type: ignore[attr-defined]
