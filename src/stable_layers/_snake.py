"""Snake, ``x + sin²(αx)/α`` (BigVGAN, DAC), written without dividing by α.

With ``s = αx`` and ``sinc(s) = sin(s)/s`` (exactly 1 at s = 0):

* value ``x + x·sin(s)·sinc(s)``: α = 0 gives exactly x, and no α-sized division;
* slope ``d/dx = 1 + sin(2s) = 1 + 2·sin(s)·cos(s)``;
* ``d/dα = x·sin(2s)/α - sin²(s)/α² = x²·sinc(s)·(2cos(s) - sinc(s))``, computed as
  ``(x·sinc(s))·(x·(2cos(s) - sinc(s)))`` so that x² is never formed (it overflows float32
  for |x| > 1.8e19 where the derivative itself does not): x² to one rounding at α = 0.

Where ``s`` overflows (|αx| beyond finfo.max), ``sin²(s)/α`` is below half an ulp of x, so the
value is x; the slope, which oscillates in [0, 2] and is no longer determined by the rounded
inputs, is reported as its mean 1, and ``d/dα`` as 0. At x = ±inf the value is ±inf and the
derivatives, which have no limit, are NaN.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp

from ._activation import declare
from ._checks import as_float_array, is_static_number


def _parts(x: jax.Array, alpha: float | jax.Array):
    """(s finite, sin s, cos s, sinc s), with s = αx clamped to 0 where it is not finite
    (double where: sin(inf) is NaN)."""
    s = x * alpha
    ok = jnp.isfinite(s)
    sf = jnp.where(ok, s, 0.0)
    sn, cs = jnp.sin(sf), jnp.cos(sf)
    zero = sf == 0
    sinc = jnp.where(zero, 1.0, sn / jnp.where(zero, 1.0, sf))
    return ok, sn, cs, sinc


def _value(x, alpha):
    ok, sn, _, sinc = _parts(x, alpha)
    # x·sin(s) first: both x·sin(s) and sin(s)·sinc(s) are finite, and the product with
    # sinc(s) = sin(s)/s is sin²(s)/α, bounded by 1/|α|. At s = 0 (α = 0 or x = ±0) the
    # value is x itself: -0 + (-0·sin(-0)) would be +0.
    return jnp.where(ok & (sn != 0), x + (x * sn) * sinc, x)


def _slope(x, alpha):
    ok, sn, cs, _ = _parts(x, alpha)
    # x = ±inf: no limit (1 + sin(2s) oscillates), NaN; a finite x whose s overflows: 1.
    return jnp.where(ok, 1 + 2 * (sn * cs), jnp.where(jnp.isfinite(x), 1.0, jnp.nan))


def _alpha_slope(x, alpha):
    ok, _, cs, sinc = _parts(x, alpha)
    return (
        jnp.where(ok, (x * sinc) * (x * (2 * cs - sinc)), jnp.where(jnp.isfinite(x), 0.0, jnp.nan)),
    )


_rule = declare(
    _value,
    derivative=_slope,
    param_derivatives=_alpha_slope,
    name="stable_layers.snake",
    residuals=("input",),
)


def snake(
    x: Any,
    alpha: float | jax.Array,
    *,
    residual: Literal["input"] = "input",
    mode: Literal["vjp", "jvp"] = "vjp",
) -> jax.Array:
    """Snake, ``x + sin²(αx)/α``, with a learnable α that may be 0.

    ``snake(x) = x + sin²(αx)/α``, ``d/dx = 1 + sin(2αx)``,
    ``d/dα = x·sin(2αx)/α - sin²(αx)/α²``. It is the periodic activation of BigVGAN and the
    DAC/EnCodec-style audio codecs, with one α per channel.

    The textbook form divides by α: it is NaN at α = 0 and loses accuracy or overflows as
    α → 0 (in float16 ``1/α`` overflows below α = 1.5e-5), which codebases patch with an
    ε added to α (RAVE issue 351) that changes the function. Here, with ``s = αx``, the value
    is ``x + x·sin(s)·(sin(s)/s)`` with ``sin(s)/s`` exactly 1 at s = 0, so:

    * every finite α is valid, α = 0 gives exactly x (a subnormal x may flush to 0), and
      the value is finite for every finite x;
    * the α derivative ``x²·sinc(s)·(2cos(s) - sinc(s))`` is x² at α = 0, and is finite
      wherever its true value is below finfo.max (x² itself is never formed);
    * the backward pass keeps one array, ``x`` (also when α is differentiated).

    Args:
        x: Input array, any shape. Float16 and bfloat16 are computed in float32 and rounded
            once; integers and booleans promote like ``jax.nn.softplus``; complex input raises
            TypeError.
        alpha: α: a finite Python number (a compile-time constant), or a floating array that
            broadcasts to x's shape, typically ``(channels,)``. An array α is differentiable:
            its gradient has α's shape and dtype, summed over the broadcast axes. It is cast
            to the compute dtype (float32 for half-precision x).
        residual: ``"input"``, the only policy: the backward pass keeps ``x``, tagged
            ``jax.ad_checkpoint.checkpoint_name(..., "stable_layers.snake")``.
        mode: ``"vjp"`` (default; ``jax.custom_vjp``) or ``"jvp"`` (``jax.custom_jvp``: also
            forward mode and ``jax.hessian``). Both give identical values and gradients.

    Returns:
        An array of ``x``'s shape and (float) dtype.

    Raises:
        TypeError: ``x`` is complex, or ``alpha`` is neither a number nor a float array.
        ValueError: ``alpha`` is a non-finite number, does not broadcast to x's shape, or
            ``residual``/``mode`` is not a valid choice.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import stable_layers as sl
        >>> x = jnp.array([[-1.0, 0.5, 2.0]], jnp.float32)
        >>> alpha = jnp.array([0.0, 1.0, 1e-30], jnp.float32)  # one α per channel
        >>> print(sl.snake(x, alpha))
        [[-1.          0.72984886  2.        ]]
        >>> dx, da = jax.grad(lambda x, a: sl.snake(x, a).sum(), argnums=(0, 1))(x, alpha)
        >>> print(dx, da)
        [[1.       1.841471 1.      ]] [1.         0.19088663 4.        ]

    References:
        Ziyin, Hartwig, Ueda (2020), "Neural Networks Fail to Learn Periodic Functions and How
        to Fix It"; BigVGAN (Lee et al. 2023); RAVE issue 351.
    """
    fn = _rule.name
    x = as_float_array(fn, x)
    if isinstance(alpha, bool):
        raise TypeError(f"{fn}: alpha must be a finite number or a float array; got {alpha!r}.")
    if is_static_number(alpha):
        value = float(alpha)
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{fn}: alpha must be finite; got {alpha!r}.")
        return _rule(x, value, residual=residual, mode=mode)
    try:
        a = jnp.asarray(alpha)
    except TypeError as err:
        raise TypeError(
            f"{fn}: alpha must be a finite number or a float array; got {type(alpha).__name__}."
        ) from err
    if not jnp.issubdtype(a.dtype, jnp.floating):
        raise TypeError(
            f"{fn}: an alpha array must have a floating dtype; got {a.dtype}. Pass a Python "
            "number for a fixed alpha."
        )
    try:
        shape = jnp.broadcast_shapes(x.shape, a.shape)
    except ValueError:
        shape = None
    if shape != x.shape:
        raise ValueError(
            f"{fn}: alpha of shape {a.shape} must broadcast to x's shape {x.shape} "
            "(a scalar or a per-channel array)."
        )
    return _rule(x, a, residual=residual, mode=mode)


snake.name = _rule.name  # type: ignore[attr-defined]
