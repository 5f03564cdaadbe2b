"""ELU, CELU and SELU: monotone, with slopes that are functions of their outputs.

On the negative side ``elu(x) = α(e^x - 1)``, so its slope ``αe^x`` is ``y + α``; CELU's,
``e^(x/α)``, is ``1 + y/α``; SELU's, ``λαe^x``, is ``y + λα``. By default the backward pass
keeps the output ``y``, which the next layer keeps anyway, so an MLP step needs the memory of
one without activations. ``e^z - 1`` is ``-(1 - e^z)`` from softplus's accurate
``_one_minus_exp_neg`` (< 1 ulp in float32, where XLA's ``expm1`` loses ~5 on CPU).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import jax
import jax.numpy as jnp

from ._activation import declare
from ._checks import as_float_array, compute_dtype, is_static_number
from ._silu import _E_M64, _tail
from ._softplus import _one_minus_exp_neg

# torch.nn.SELU's constants (Klambauer et al. 2017), as torch writes them.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def _expm1_neg(z: jax.Array) -> jax.Array:
    """e^z - 1 for z <= 0 (-1 at -inf)."""
    return -_one_minus_exp_neg(-z)


def _neg(x: jax.Array) -> jax.Array:
    # The negative side's x (double where: e^x of a large positive x is never formed). Not
    # jnp.minimum, whose derivative at the tie x = 0 is 1/2.
    return jnp.where(x > 0, 0.0, x)


def _scaled_exp(c: float, x: jax.Array) -> jax.Array:
    """c·e^x for x <= 0, also where e^x underflows but c·e^x does not (c > 1: SELU's λα).

    float64 needs no scaling but for a band below x = -708 too thin to pay a rounding for.
    """
    if x.dtype == jnp.float64:
        return c * jnp.exp(x)
    tail, e = _tail(x)
    return jnp.where(tail, (c * e) * _E_M64, c * jnp.exp(x))


def _elu_value(x, alpha):
    return jnp.where(x > 0, x, alpha * _expm1_neg(_neg(x)))


def _elu_slope(x, alpha):
    return jnp.where(x > 0, 1.0, _scaled_exp(alpha, _neg(x)))


def _elu_slope_from_output(y, alpha):
    return jnp.where(y > 0, 1.0, y + alpha)


def _celu_value(x, alpha):
    z = _neg(x) / alpha
    # x/α underflows (to a flushed subnormal) where α(e^(x/α) - 1) ≈ x is still normal; there
    # x(1 + x/(2α)) is exact to rounding (the next term, (x/α)²/6, is below 2^-60).
    small = z > -(2.0**-30)
    return jnp.where(x > 0, x, jnp.where(small, x + x * (z * 0.5), alpha * _expm1_neg(z)))


def _celu_slope(x, alpha):
    return jnp.where(x > 0, 1.0, jnp.exp(_neg(x) / alpha))


def _celu_slope_from_output(y, alpha):
    return jnp.where(y > 0, 1.0, (y + alpha) / alpha)


_LA = SELU_SCALE * SELU_ALPHA


def _selu_value(x):
    return jnp.where(x > 0, SELU_SCALE * x, _LA * _expm1_neg(_neg(x)))


def _selu_slope(x):
    return jnp.where(x > 0, SELU_SCALE, _scaled_exp(_LA, _neg(x)))


def _selu_slope_from_output(y):
    return jnp.where(y > 0, SELU_SCALE, y + _LA)


_elu = declare(
    _elu_value,
    derivative=_elu_slope,
    derivative_from_output=_elu_slope_from_output,
    name="stable_layers.elu",
    residuals=("output", "input"),
)
_celu = declare(
    _celu_value,
    derivative=_celu_slope,
    derivative_from_output=_celu_slope_from_output,
    name="stable_layers.celu",
    residuals=("output", "input"),
)
_selu = declare(
    _selu_value,
    derivative=_selu_slope,
    derivative_from_output=_selu_slope_from_output,
    name="stable_layers.selu",
    residuals=("output", "input"),
)


def _check_alpha(fn: str, alpha: Any, x: jax.Array) -> float:
    """``alpha`` as a float: a positive finite number, also in x's compute dtype."""
    if not is_static_number(alpha):
        raise TypeError(
            f"{fn}: alpha must be a positive finite Python number (a compile-time constant); "
            f"got {type(alpha).__name__} {alpha!r}."
        )
    try:
        value = float(alpha)
    except OverflowError:
        value = math.inf
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{fn}: alpha must be a positive finite number; got {alpha!r}.")
    fi = jnp.finfo(compute_dtype(x.dtype))
    if not float(fi.tiny) <= value <= float(fi.max):
        raise ValueError(
            f"{fn}: alpha={alpha!r} is outside the range of the {jnp.dtype(fi.dtype).name} "
            f"computation, [{float(fi.tiny):.3g}, {float(fi.max):.3g}]."
        )
    return value


def elu(
    x: Any,
    alpha: float = 1.0,
    *,
    residual: Literal["output", "input"] = "output",
    mode: Literal["vjp", "jvp"] = "vjp",
) -> jax.Array:
    """ELU, ``x`` for x > 0 and ``α(e^x - 1)`` otherwise, keeping only its output.

    The slope is 1 for x > 0 and ``αe^x = y + α`` otherwise (at x = 0: α, as in torch). So
    the backward pass needs only ``y``: by default it keeps the output, which the next layer
    keeps anyway, and an MLP step with ELU needs the temp memory of one without
    activations. ``jax.nn.elu`` keeps ``x`` and a mask besides.

    It is finite for every finite input in every float dtype; ``elu(+inf) = inf`` (slope 1),
    ``elu(-inf) = -α`` (slope 0), NaN in → NaN out; ``e^x - 1`` is computed to < 1 ulp.

    Args:
        x: Input array, any shape. Float16 and bfloat16 are computed in float32 and rounded
            once; integers and booleans promote like ``jax.nn.softplus``; complex input raises
            TypeError.
        alpha: α, a positive finite Python number (a compile-time constant).
        residual: ``"output"`` (default): keep ``y`` and compute the slope ``y + α`` from it;
            in half precision ``y`` is rounded, so the slope is that of the rounded output
            (within 1 ulp of ``y + α``), not the exact ``αe^x``. ``"input"``: keep ``x``, for
            the exact slope. Kept arrays are tagged
            ``jax.ad_checkpoint.checkpoint_name(..., "stable_layers.elu")``.
        mode: ``"vjp"`` (default; ``jax.custom_vjp``) or ``"jvp"`` (``jax.custom_jvp``: also
            forward mode and ``jax.hessian``). Both give identical values and gradients.

    Returns:
        An array of ``x``'s shape and (float) dtype.

    Raises:
        TypeError: ``x`` is complex, or ``alpha`` is not a number.
        ValueError: ``alpha`` is not positive and finite, or ``residual``/``mode`` is not a
            valid choice.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import stable_layers as sl
        >>> x = jnp.array([-jnp.inf, -1.0, 0.0, 2.0], jnp.float32)
        >>> print(sl.elu(x))
        [-1.         -0.63212055  0.          2.        ]
        >>> print(jax.grad(lambda x: sl.elu(x).sum())(x))
        [0.         0.36787945 1.         1.        ]

    References:
        Clevert, Unterthiner, Hochreiter (2016), "Fast and Accurate Deep Network Learning by
        Exponential Linear Units"; ``torch.nn.functional.elu``.
    """
    x = as_float_array(_elu.name, x)
    return _elu(x, _check_alpha(_elu.name, alpha, x), residual=residual, mode=mode)


def celu(
    x: Any,
    alpha: float = 1.0,
    *,
    residual: Literal["output", "input"] = "output",
    mode: Literal["vjp", "jvp"] = "vjp",
) -> jax.Array:
    """CELU, ``x`` for x > 0 and ``α(e^(x/α) - 1)`` otherwise, keeping only its output.

    Continuously differentiable for every α: the slope is 1 for x > 0 and
    ``e^(x/α) = 1 + y/α`` otherwise, so the backward pass needs only ``y`` (the default) and
    an MLP step with CELU needs the temp memory of one without activations.

    It is finite for every finite input in every float dtype; ``celu(+inf) = inf`` (slope 1),
    ``celu(-inf) = -α`` (slope 0), NaN in → NaN out.

    Args:
        x: Input array, any shape. Float16 and bfloat16 are computed in float32 and rounded
            once; integers and booleans promote like ``jax.nn.softplus``; complex input raises
            TypeError.
        alpha: α, a positive finite Python number (a compile-time constant).
        residual: ``"output"`` (default; the slope ``(y + α)/α`` of the kept, possibly
            rounded, output) or ``"input"`` (the exact slope). Kept arrays are tagged
            ``jax.ad_checkpoint.checkpoint_name(..., "stable_layers.celu")``.
        mode: ``"vjp"`` (default) or ``"jvp"``; both give identical values and gradients.

    Returns:
        An array of ``x``'s shape and (float) dtype.

    Raises:
        TypeError: ``x`` is complex, or ``alpha`` is not a number.
        ValueError: ``alpha`` is not positive and finite, or ``residual``/``mode`` is not a
            valid choice.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import stable_layers as sl
        >>> x = jnp.array([-jnp.inf, -1.0, 0.0, 2.0], jnp.float32)
        >>> print(sl.celu(x, 2.0))
        [-2.        -0.7869387  0.         2.       ]
        >>> print(jax.grad(lambda x: sl.celu(x, 2.0).sum())(x))
        [0.         0.60653067 1.         1.        ]

    References:
        Barron (2017), "Continuously Differentiable Exponential Linear Units";
        ``torch.nn.functional.celu``.
    """
    x = as_float_array(_celu.name, x)
    return _celu(x, _check_alpha(_celu.name, alpha, x), residual=residual, mode=mode)


def selu(
    x: Any,
    *,
    residual: Literal["output", "input"] = "output",
    mode: Literal["vjp", "jvp"] = "vjp",
) -> jax.Array:
    """SELU, ``λx`` for x > 0 and ``λα(e^x - 1)`` otherwise, keeping only its output.

    With torch's constants ``λ = 1.0507009873554805`` and ``α = 1.6732632423543772``
    (self-normalising networks). The slope is λ for x > 0 and ``λαe^x = y + λα`` otherwise,
    so the backward pass needs only ``y`` (the default), and an MLP step with SELU needs the
    temp memory of one without activations.

    It is finite for every finite input in every float dtype; ``selu(+inf) = inf`` (slope
    λ), ``selu(-inf) = -λα`` (slope 0), NaN in → NaN out.

    Args:
        x: Input array, any shape. Float16 and bfloat16 are computed in float32 and rounded
            once; integers and booleans promote like ``jax.nn.softplus``; complex input raises
            TypeError.
        residual: ``"output"`` (default; the slope ``y + λα`` of the kept, possibly rounded,
            output: in float16 and bfloat16, ``-λα`` itself rounds up, so the slope at
            ``-inf`` is that of the rounded output, 2.87e-4 in float16, not 0) or
            ``"input"`` (the exact slope, and the limit 0 at ``-inf``). Kept arrays are tagged
            ``jax.ad_checkpoint.checkpoint_name(..., "stable_layers.selu")``.
        mode: ``"vjp"`` (default) or ``"jvp"``; both give identical values and gradients.

    Returns:
        An array of ``x``'s shape and (float) dtype.

    Raises:
        TypeError: ``x`` is complex.
        ValueError: ``residual`` or ``mode`` is not a valid choice.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import stable_layers as sl
        >>> x = jnp.array([-jnp.inf, -1.0, 0.0, 2.0], jnp.float32)
        >>> print(sl.selu(x))
        [-1.7580993 -1.1113307  0.         2.101402 ]

    References:
        Klambauer, Unterthiner, Mayr, Hochreiter (2017), "Self-Normalizing Neural Networks";
        ``torch.nn.functional.selu``.
    """
    return _selu(x, residual=residual, mode=mode)


elu.name = _elu.name  # type: ignore[attr-defined]
celu.name = _celu.name  # type: ignore[attr-defined]
selu.name = _selu.name  # type: ignore[attr-defined]
