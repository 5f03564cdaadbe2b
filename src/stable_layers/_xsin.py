"""The oscillating activation ``x · sin(x)``, with a backward pass that keeps one array.

This file is the single source of truth for x·sin(x): the forward, its custom derivative rules
(``jax.custom_vjp`` and ``jax.custom_jvp``) and the residual policies. The Equinox and Flax
modules only call ``xsin``.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from ._checks import MODES, XSIN_RESIDUALS, as_float_array, check_choice, compute_dtype

RESIDUAL_NAME = "stable_layers.xsin"


def _forward(x: jax.Array) -> jax.Array:
    xc = x.astype(compute_dtype(x.dtype))
    return (xc * jnp.sin(xc)).astype(x.dtype)


def _to_save(x: jax.Array, residual: str) -> tuple[jax.Array, ...]:
    """The arrays each policy keeps, in x's dtype (half precision stays half)."""
    if residual == "input":
        return (x,)
    xc = x.astype(compute_dtype(x.dtype))
    sin_x = jnp.sin(xc)
    if residual == "input_and_sin":
        return (x, sin_x.astype(x.dtype))
    return ((sin_x + xc * jnp.cos(xc)).astype(x.dtype),)


def _derivative(saved: tuple[jax.Array, ...], residual: str) -> jax.Array:
    """d(x sin x)/dx = sin x + x cos x, in the compute dtype, from what the policy kept."""
    cd = compute_dtype(saved[0].dtype)
    saved = tuple(s.astype(cd) for s in saved)
    if residual == "derivative":
        return saved[0]
    x = saved[0]
    sin_x = saved[1] if residual == "input_and_sin" else jnp.sin(x)
    return sin_x + x * jnp.cos(x)


def _apply(saved, g, residual):
    return (g.astype(compute_dtype(g.dtype)) * _derivative(saved, residual)).astype(g.dtype)


# mode="jvp": the tangent map runs under jax.checkpoint so that, when reverse mode linearizes
# it, what is saved is its input (the policy's residual) and nothing it computes from it.
@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _xsin_jvp(x, residual):
    return _forward(x)


@_xsin_jvp.defjvp
def _xsin_jvp_rule(residual, primals, tangents):
    (x,), (dx,) = primals, tangents
    tangent_map = jax.checkpoint(functools.partial(_apply, residual=residual))
    return _forward(x), tangent_map(checkpoint_name(_to_save(x, residual), RESIDUAL_NAME), dx)


# mode="vjp": the forward computes the residual once; the backward is one multiply for the
# default policy.
@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _xsin_vjp(x, residual):
    return _forward(x)


def _xsin_vjp_fwd(x, residual):
    return _forward(x), checkpoint_name(_to_save(x, residual), RESIDUAL_NAME)


def _xsin_vjp_bwd(residual, saved, g):
    return (_apply(saved, g, residual),)


_xsin_vjp.defvjp(_xsin_vjp_fwd, _xsin_vjp_bwd)


def xsin(
    x: Any,
    *,
    residual: Literal["derivative", "input_and_sin", "input"] = "derivative",
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
            ``cos x`` (seed 002's choice). ``"input"``: ``x`` only, the backward recomputes
            ``sin x`` and ``cos x``; use it where ``x`` is kept anyway. Each residual is tagged
            ``jax.ad_checkpoint.checkpoint_name(..., "stable_layers.xsin")``. In float16 and
            bfloat16 the kept arrays are half precision, so the cotangent is rounded twice:
            within 1.35 ulp of ``|g|(1 + |x|)`` for ``"derivative"``, 0.8 for
            ``"input_and_sin"``, 0.5 for ``"input"`` (bounds asserted over every finite input
            by ``tests/test_xsin.py``).
            Under ``jit`` XLA may itself recompute ``sin``/``cos`` from ``x`` for plain
            autodiff, so compiled memory can be the same for all policies; the policy
            fixes what the backward pass is guaranteed to keep.
        mode: ``"vjp"`` (default) builds the rule with ``jax.custom_vjp`` (reverse mode,
            grad-of-grad; a ``custom_vjp`` cannot be used with ``jax.jvp``, ``jax.jacfwd`` or
            ``jax.hessian``). ``"jvp"`` builds it with ``jax.custom_jvp`` so forward mode and
            Hessians work too, while reverse mode still keeps only the chosen residual.

    Returns:
        An array of ``x``'s shape and (float) dtype.

    Raises:
        TypeError: ``x`` is complex.
        ValueError: ``residual`` or ``mode`` is not a valid choice.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import stable_layers as sl
        >>> x = jnp.array([0.0, 1.0, 2.0], jnp.float32)
        >>> print(sl.xsin(x))
        [0.         0.84147096 1.8185948 ]
        >>> print(jax.grad(lambda x: sl.xsin(x).sum())(x))
        [0.         1.3817732  0.07700372]
    """
    fn = "stable_layers.xsin"
    residual = check_choice(fn, "residual", residual, XSIN_RESIDUALS)
    mode = check_choice(fn, "mode", mode, MODES)
    x = as_float_array(fn, x)
    return _xsin_jitted(x, residual=residual, mode=mode)


# Jitted so an eager call runs one compiled kernel; inside a user's jit this inlines away.
@functools.partial(jax.jit, static_argnames=("residual", "mode"))
def _xsin_jitted(x, *, residual, mode):
    return (_xsin_vjp if mode == "vjp" else _xsin_jvp)(x, residual)


def custom_vjp_with_extra_residual(x: Any) -> jax.Array:
    """Gradient of ``sum(x · sin(x))`` through a ``jax.custom_vjp`` that saves ``(x, sin x)``.

    The seed-002 entry point: ``f_with_sin(x) = sum(x sin x)`` is :func:`xsin` with
    ``residual="input_and_sin"``, whose forward saves ``(x, sin x)`` and whose backward
    returns ``g * (sin x + x cos x)``; this returns ``jax.grad(f_with_sin)(x)``. Prefer
    :func:`xsin`'s default policy, which keeps one array instead of two.

    Args:
        x: Input array (the seed specifies 1-D; any shape works).

    Returns:
        ``sin x + x cos x``, same shape and float dtype as ``x``.

    Example:
        >>> import jax.numpy as jnp
        >>> from stable_layers import custom_vjp_with_extra_residual
        >>> print(custom_vjp_with_extra_residual(jnp.array([0.0, 1.0, 2.0], jnp.float32)))
        [0.         1.3817732  0.07700372]
    """
    x = as_float_array("stable_layers.custom_vjp_with_extra_residual", x)

    def f_with_sin(x):
        return jnp.sum(xsin(x, residual="input_and_sin", mode="vjp"))

    return jax.grad(f_with_sin)(x)
