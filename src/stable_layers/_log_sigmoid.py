"""``log(sigmoid(x)) = -softplus(-x)``, finite everywhere, keeping its output for backward."""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp

from ._activation import declare
from ._softplus import _one_minus_exp_neg, _sigmoid

_rule = declare(
    # min(x, 0) - log1p(e^-|x|), not -softplus(-x): the same bits up to the sign of a zero
    # result, but a trailing negation made XLA keep extra buffers (MLP step 2.56x identity).
    lambda x: jnp.minimum(x, 0) - jnp.log1p(jnp.exp(-jnp.abs(x))),
    derivative=lambda x: _sigmoid(-x),
    # y = log sigmoid(x), so sigmoid(-x) = 1 - sigmoid(x) = 1 - e^y, to ~1 ulp for y <= 0.
    derivative_from_output=lambda y: _one_minus_exp_neg(0 - y),  # 0 - y: +0 at y = 0
    name="stable_layers.log_sigmoid",
    residuals=("output", "input"),
)


def log_sigmoid(
    x: Any,
    *,
    residual: Literal["output", "input"] = "output",
    mode: Literal["vjp", "jvp"] = "vjp",
) -> jax.Array:
    """Numerically stable ``log(sigmoid(x))`` whose backward pass keeps only its output.

    ``log_sigmoid(x) = log(1 / (1 + exp(-x))) = -softplus(-x)``, and
    ``d/dx log_sigmoid(x) = sigmoid(-x) = 1 - exp(log_sigmoid(x))``.

    It is in every binary cross-entropy and in preference losses (``log σ(β·Δ)``). The
    textbook ``jnp.log(jax.nn.sigmoid(x))`` is ``-inf`` once ``sigmoid(x)`` underflows
    (x < -87.3 in float32, x < -11.09 in float16) and its gradient is then NaN.
    ``jax.nn.log_sigmoid`` is finite, but keeps two full-size arrays for its backward pass and
    its second derivative rounds to 0 for very negative x (0 at x = -30). This version:

    * is finite for every finite input in every float dtype, up to ±``finfo.max``, with
      ``log_sigmoid(x) = x`` exactly for very negative x, ``log_sigmoid(-inf) = -inf``
      (gradient 1), ``log_sigmoid(+inf) = 0`` (gradient 0), NaN in → NaN out, and gradient
      exactly 0.5 at 0;
    * has accurate derivatives of every order (second derivative at x = -30: -9.36e-14, not 0);
    * keeps one array for the backward pass: by default its output ``y``, from which the slope
      is ``1 - e^y``, so an MLP with this activation needs the temp memory of one with none.

    Args:
        x: Input array, any shape. Float16 and bfloat16 are computed in float32 and rounded
            once; integers and booleans promote like ``jax.nn.softplus``; complex input
            raises TypeError.
        residual: What the backward pass keeps: ``"output"`` (default; ``y``) or ``"input"``
            (``x``). Each kept array is tagged
            ``jax.ad_checkpoint.checkpoint_name(..., "stable_layers.log_sigmoid")``.
        mode: ``"vjp"`` (default; ``jax.custom_vjp``: reverse mode and grad-of-grad) or
            ``"jvp"`` (``jax.custom_jvp``: also ``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``).
            Both give identical values and gradients.

    Returns:
        An array of ``x``'s shape and (float) dtype.

    Raises:
        TypeError: ``x`` is complex.
        ValueError: ``residual`` or ``mode`` is not a valid choice.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import stable_layers as sl
        >>> x = jnp.array([-100.0, 0.0, 100.0], jnp.float32)
        >>> print(sl.log_sigmoid(x))
        [-100.          -0.6931472    0.       ]
        >>> print(jax.grad(lambda x: sl.log_sigmoid(x).sum())(x))
        [1.  0.5 0. ]
        >>> x16 = jnp.float16(-20.0)  # naive log(sigmoid(x)) is -inf below -11.09 in float16
        >>> print(sl.log_sigmoid(x16), jnp.log(jax.nn.sigmoid(x16)))
        -20.0 -inf

    References:
        JAX issue 2140 (the gradient of ``log_sigmoid`` at 0); ``jax.nn.log_sigmoid``.
    """
    return _rule(x, residual=residual, mode=mode)


log_sigmoid.name = _rule.name  # type: ignore[attr-defined]
