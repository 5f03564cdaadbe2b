"""The oscillating activation ``x · sin(x)``, with a backward pass that keeps one array.

This file is the single source of truth for x·sin(x): its value, its slope and its own residual
policy (``"input_and_sin"``, the textbook ``custom_vjp``'s). ``_activation.py`` builds the
custom rules; the Equinox and Flax modules only call ``xsin``.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp

from ._activation import Policy, declare, up
from ._checks import as_float_array
from ._sincos import sincos

# One range reduction gives sin and cos (_sincos.py); each epilogue runs inside its branch, so
# only what a rule needs is written to memory. Module-level functions: sincos jits on them.


def _value(x, s, c):
    return x * s


def _slope(x, s, c):
    return s + x * c


@functools.cache
def _value_and_slope_as(dtype):
    def value_and_slope(x, s, c):
        return (x * s).astype(dtype), (s + x * c).astype(dtype)

    return value_and_slope


def _sin(x, s, c):
    return s


def _cos(x, s, c):
    return c


_rule = declare(
    lambda x: sincos(x, epilogue=_value),
    derivative=lambda x: sincos(x, epilogue=_slope),
    value_and_derivative=lambda x: sincos(x, epilogue=_value_and_slope_as(x.dtype)),
    name="stable_layers.xsin",
    # The textbook custom_vjp's policy: (x, sin x), and the backward recomputes only cos x.
    policies={
        "input_and_sin": Policy(
            keep=lambda x, y, p: (x, sincos(up(x), epilogue=_sin).astype(x.dtype)),
            slope=lambda s, p: s[1] + s[0] * sincos(s[0], epilogue=_cos),
            keeps_input=True,
        )
    },
    residuals=("derivative", "input_and_sin", "input"),
)


def xsin(
    x: Any,
    *,
    residual: Literal["derivative", "input_and_sin", "input"] | None = None,
    bits: Literal[1, 2, 4, 8] | None = None,
    mode: Literal["vjp", "jvp"] = "vjp",
) -> jax.Array:
    """The oscillating activation ``x · sin(x)``, whose backward pass keeps one array.

    ``xsin(x) = x sin(x)`` and ``d/dx xsin(x) = sin(x) + x cos(x)``.

    Plain autodiff of ``x * jnp.sin(x)`` keeps three full-size arrays for the backward pass
    (x, sin x and cos x). By default this version keeps one, the derivative
    ``sin x + x cos x`` itself, so its backward pass is a single multiply.

    Values: finite for every finite input in every float dtype, up to ±``finfo.max``
    (``|x sin x| <= |x|``); ``xsin(±inf)`` is NaN, as ``sin(±inf)`` is, and NaN propagates.

    Args:
        x: Input array, any shape. Float16 and bfloat16 are computed in float32 and rounded
            once; integers and booleans promote to the default float dtype; complex input
            raises TypeError.
        residual: What the backward pass keeps, in ``x``'s dtype. ``"derivative"``
            (default): ``sin x + x cos x``, one array, the backward is one multiply.
            ``"input_and_sin"``: ``(x, sin x)``, two arrays, the backward recomputes
            ``cos x`` (the textbook ``custom_vjp``). ``"input"``: ``x`` only, the backward
            recomputes ``sin x`` and ``cos x``; use it where ``x`` is kept anyway. Each residual
            is tagged ``jax.ad_checkpoint.checkpoint_name(..., "stable_layers.xsin")``. In float16
            and bfloat16 the kept arrays are half precision, so the cotangent is rounded twice:
            within 1.35 ulp of ``|g|(1 + |x|)`` for ``"derivative"``, 0.8 for
            ``"input_and_sin"``, 0.5 for ``"input"`` (bounds asserted over every finite input
            by ``tests/test_xsin.py``).
            Under ``jit`` XLA may itself recompute ``sin``/``cos`` from ``x`` for plain
            autodiff, so compiled memory can be the same for all policies; the policy
            fixes what the backward pass is guaranteed to keep.
            ``None`` means ``"derivative"``.
        bits: ``None`` (default), or 1, 2, 4 or 8 to keep the slope as packed
            ``bits``-bit codes (8 bits: a quarter of a float32 slope's memory), within
            ``(max - min) / (2**bits - 1)`` of the exact slope over the tensor; reverse mode
            only, no derivatives beyond the first. See :func:`stable_layers.custom_activation`,
            "Slope codes".
        mode: ``"vjp"`` (default) builds the rule with ``jax.custom_vjp`` (reverse mode,
            grad-of-grad; a ``custom_vjp`` cannot be used with ``jax.jvp``, ``jax.jacfwd`` or
            ``jax.hessian``). ``"jvp"`` builds it with ``jax.custom_jvp`` so forward mode and
            Hessians work too, while reverse mode still keeps only the chosen residual.

    Returns:
        An array of ``x``'s shape and (float) dtype.

    Raises:
        TypeError: ``x`` is complex.
        ValueError: ``residual``, ``bits`` or ``mode`` is not a valid choice, or ``bits`` is
            given with ``residual="input"``/``"input_and_sin"`` or ``mode="jvp"``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import stable_layers as sl
        >>> x = jnp.array([0.0, 1.0, 2.0], jnp.float32)
        >>> print(sl.xsin(x))
        [0.         0.84147096 1.8185948 ]
        >>> print(jax.grad(lambda x: sl.xsin(x).sum())(x))
        [0.         1.3817732  0.07700372]
        >>> print(jax.grad(lambda x: sl.xsin(x, bits=8).sum())(x))  # 256 levels over [0, 1.38]
        [0.         1.3817732  0.07586206]
    """
    return _rule(x, residual=residual, bits=bits, mode=mode)


xsin.name = _rule.name  # type: ignore[attr-defined]


def custom_vjp_with_extra_residual(x: Any) -> jax.Array:
    """Gradient of ``sum(x · sin(x))`` through a ``jax.custom_vjp`` that saves ``(x, sin x)``.

    The textbook ``custom_vjp`` of x·sin(x): ``f_with_sin(x) = sum(x sin x)`` is :func:`xsin` with
    ``residual="input_and_sin"``, whose forward saves ``(x, sin x)`` and whose backward
    returns ``g * (sin x + x cos x)``; this returns ``jax.grad(f_with_sin)(x)``. Prefer
    :func:`xsin`'s default policy, which keeps one array instead of two.

    Args:
        x: Input array, any shape.

    Returns:
        ``sin x + x cos x``, same shape and float dtype as ``x``.

    Examples:
        >>> import jax.numpy as jnp
        >>> from stable_layers import custom_vjp_with_extra_residual
        >>> print(custom_vjp_with_extra_residual(jnp.array([0.0, 1.0, 2.0], jnp.float32)))
        [0.         1.3817732  0.07700372]
    """
    x = as_float_array("stable_layers.custom_vjp_with_extra_residual", x)

    def f_with_sin(x):
        return jnp.sum(xsin(x, residual="input_and_sin", mode="vjp"))

    return jax.grad(f_with_sin)(x)
