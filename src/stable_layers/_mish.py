"""Mish, ``x · tanh(softplus(x))``, from one exponential, keeping one array."""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp

from ._activation import declare
from ._silu import _E_M64, _tail
from ._softplus import _finite_or_zero

# tanh(softplus(x)) is rational in e^x: with e = e^-|x| <= 1 (no overflow),
#   x < 0:  tanh(sp(x)) = n/(n + 2),            n = e(e + 2),
#   x >= 0: tanh(sp(x)) = (1 + 2e)/m = 1 - 2e²/m,   m = 1 + 2e + 2e²,
# and the slope tanh(sp) + x·sech²(sp)·σ(x) is
#   x < 0:  e·((e + 2)(n + 2) + 4x(1 + e)) / (n + 2)²,
#   x >= 0: ((1 + 2e)·m + 4x·e²(1 + e)) / m² = 1 + 2e²(2x(1 + e) - m)/m².
# No log, no tanh, no cancellation but the slope's own zero (x ≈ -1.19). Below x = -64,
# tanh(sp(x)) = e^x and the slope e^x(1 + x) to far below an ulp; there e^x is e^(x+64)·e^-64
# (_silu._tail), so neither underflows before the product does (x·e^x is a normal float32
# down to x ≈ -91.9, e^x only to -87.3).


def _parts(x: jax.Array):
    neg = x < 0
    e = jnp.exp(jnp.where(neg, x, -x))  # e^-|x|, with slope ±1 at 0 (not abs's 0)
    return neg, e


def _value(x: jax.Array) -> jax.Array:
    neg, e = _parts(x)
    w = 1 + e + 0.5 * (e * e)
    # x < 0: n/(n + 2) = e·(1 - c), c = (e/2)(1 + e)/w, a small correction (c <= 0.4), so
    # the result carries e's own error and little more. x >= 0: (1 + 2e)/m = 1 - 2e²/m.
    c = (0.5 * e) * (1 + e) / w
    m = 1 + 2 * e + 2 * (e * e)
    t = jnp.where(neg, e * (1 - c), 1 - 2 * (e * e) / m)
    tail, e_tail = _tail(x)
    # -inf · 0 = NaN at x = -inf: torch's and jax.nn's value there.
    return jnp.where(tail, (x * e_tail) * _E_M64, x * t)


def _slope(x: jax.Array) -> jax.Array:
    neg, e = _parts(x)
    xf = _finite_or_zero(x)  # x·e² -> 0 at +inf and 1 + x -> -inf at -inf: the limits
    # Each branch sees only its own sign of x (double where): 4x·(1 + e) overflows for
    # huge x where e = 0, and inf · 0 is NaN, also in the derivative of a branch not taken.
    xl, xu = jnp.where(neg, xf, 0.0), jnp.where(neg, 0.0, xf)
    # x < 0: tanh(sp) = e(1 - c) and sech²(sp)·σ(x) = e(1 - s), s = e((1 + e)² + e³/4)/w²,
    # so the slope is e·(1 + x - c - x·s): 1 + x plus small corrections.
    e2 = e * e
    w = 1 + e + 0.5 * e2
    c = (0.5 * e) * (1 + e) / w
    s2 = e * ((1 + e) * (1 + e) + 0.25 * (e2 * e)) / (w * w)
    lower = e * (((1 + xl) - c) - xl * s2)
    # x >= 0: the slope minus 1, 2e²(2x(1 + e) - m)/m², written out: the quotient rule on
    # ((1 + 2e)m + 4xe²(1 + e))/m² cancels e-sized terms and loses the second derivative's
    # e². x·e² first: x·(1 + e) overflows for huge x, where e² is 0.
    m = 1 + 2 * e + 2 * e2
    upper = 1 + 2 * (2 * (xu * e2) * (1 + e) - e2 * m) / (m * m)
    tail, e_tail = _tail(x)
    return jnp.where(tail, ((1 + xf) * e_tail) * _E_M64, jnp.where(neg, lower, upper))


_rule = declare(
    _value,
    derivative=_slope,
    name="stable_layers.mish",
    residuals=("input", "derivative"),
)


def mish(
    x: Any,
    *,
    residual: Literal["input", "derivative"] | None = None,
    bits: int | None = None,
    mode: Literal["vjp", "jvp"] = "vjp",
) -> jax.Array:
    """Mish, ``x · tanh(softplus(x))``, keeping one array for its backward pass.

    ``mish(x) = x·tanh(log(1 + e^x))`` and
    ``mish'(x) = tanh(sp(x)) + x·sech²(sp(x))·σ(x)``. It is YOLOv4's activation.

    The textbook ``x * jnp.tanh(jnp.log1p(jnp.exp(x)))`` overflows ``exp`` (x > 11.1 in
    float16, x > 88.7 in float32) and its autodiff gradient is then NaN; Flax declined to add
    Mish unless it came with "tricky custom code" for its stability (flax issue 584). Here
    ``tanh(softplus(x))`` is written as a rational function of one ``e^-|x|``, which cannot
    overflow, so:

    * it is finite for every finite input in every float dtype, with ``mish(+inf) = inf``
      (slope 1), ``mish(-inf) = NaN`` (torch's value; slope 0, the limit) and NaN in → NaN
      out;
    * it is accurate to a few ulp, also in float32's underflow tail (x < -87.3) where
      ``e^x`` is 0 but ``x·e^x`` is not (the bounds are in ``tests/test_mish.py``);
    * the backward pass keeps one array: by default ``x``.

    Args:
        x: Input array, any shape. Float16 and bfloat16 are computed in float32 and rounded
            once; integers and booleans promote like ``jax.nn.softplus``; complex input raises
            TypeError.
        residual: What the backward pass keeps: ``"input"`` (default; ``x``) or
            ``"derivative"`` (the slope, in x's dtype). Each kept array is tagged
            ``jax.ad_checkpoint.checkpoint_name(..., "stable_layers.mish")``.
        bits: ``1, 2, 4`` or ``8`` keeps the slope as packed codes of that many bits
            (reverse mode only, ``residual`` left out or ``"derivative"``); ``None`` (default)
            keeps it exactly.
        mode: ``"vjp"`` (default; ``jax.custom_vjp``) or ``"jvp"`` (``jax.custom_jvp``: also
            forward mode and ``jax.hessian``). Both give identical values and gradients.

    Returns:
        An array of ``x``'s shape and (float) dtype.

    Raises:
        TypeError: ``x`` is complex.
        ValueError: ``residual``, ``bits`` or ``mode`` is not a valid choice.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import stable_layers as sl
        >>> x16 = jnp.array([-3.0, 0.0, 20.0], jnp.float16)
        >>> print(sl.mish(x16))
        [-0.1456  0.     20.    ]
        >>> print(jax.grad(lambda x: sl.mish(x).sum())(x16))
        [-0.0934  0.6     1.    ]

    References:
        Misra (2019), "Mish: A Self Regularized Non-Monotonic Activation Function";
        flax issue 584; ``torch.nn.functional.mish``.
    """
    return _rule(x, residual=residual, bits=bits, mode=mode)


mish.name = _rule.name  # type: ignore[attr-defined]
