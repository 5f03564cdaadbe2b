"""SiLU (swish), ``x · sigmoid(x)``: accurate to the float32 underflow, keeping one array."""

from __future__ import annotations

import math
from typing import Any, Literal

import jax
import jax.numpy as jnp

from ._activation import declare
from ._softplus import _finite_or_zero, _sigmoid

# Below x = -64, sigmoid(x) = e^x to far below an ulp, and e^x alone underflows (float32:
# subnormal below -87.3, flushed to 0 on CPU and GPU) where x·e^x is still a normal number
# (down to x ≈ -91.86). There e^x is taken as e^(x + 64)·e^-64: x + 64 is exact for
# x <= -64 (its ulp is at least x's), and e^-64 (1.6e-28) is a normal constant, rounded once.
# float64 keeps the same code: it costs an ulp at most there (e^x is normal to -708).
_TAIL = -64.0
_E_M64 = math.exp(-64.0)


def _tail(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(x < -64, e^(x + 64)), the exponent clamped on the other side (double where: the
    branch not taken is finite, so its derivative cannot turn into NaN)."""
    tail = x < _TAIL
    return tail, jnp.exp(jnp.where(tail, x, _TAIL) - _TAIL)


def x_sigmoid(x: jax.Array, z: jax.Array) -> jax.Array:
    """``x · σ(z)``, also where σ(z) underflows but the product does not (z < -87.3 in
    float32). tanh-GELU is ``x · σ(z)`` with ``z = 2√(2/π)(x + 0.044715x³)``."""
    tail, e = _tail(z)
    return jnp.where(tail, (x * e) * _E_M64, x * _sigmoid(z))


def _value(x: jax.Array) -> jax.Array:
    # -inf · 0 = NaN at x = -inf: torch's and jax.nn's value there (issue 16's table).
    return x_sigmoid(x, x)


def _slope(x: jax.Array) -> jax.Array:
    """σ(x)·(1 + x·σ(-x)): with e = e^-|x|, (1 + e + x·e)/(1 + e)² for x >= 0 and
    e·(1 + e + x)/(1 + e)² for x < 0, whose limits are 1 at +inf and 0 at -inf."""
    tail, e_tail = _tail(x)
    neg = x < 0
    e = jnp.exp(jnp.where(neg, x, -x))  # e^-|x| <= 1: no overflow, and smooth at 0
    # x·e -> 0 as x -> +inf and 1 + e + x -> -inf as x -> -inf, but inf · 0 is NaN: the
    # limit replaces the infinity.
    xf = _finite_or_zero(x)
    d = 1 + e
    body = jnp.where(neg, e * (d + xf), d + xf * e) / (d * d)
    return jnp.where(tail, ((1 + xf) * e_tail) * _E_M64, body)


_rule = declare(
    _value,
    derivative=_slope,
    name="stable_layers.silu",
    residuals=("input", "derivative"),
)


def silu(
    x: Any,
    *,
    residual: Literal["input", "derivative"] | None = None,
    bits: int | None = None,
    mode: Literal["vjp", "jvp"] = "vjp",
) -> jax.Array:
    """SiLU (swish), ``x · sigmoid(x)``, keeping one array for its backward pass.

    ``silu(x) = x·σ(x)`` and ``silu'(x) = σ(x)·(1 + x·σ(-x))``. It is the gate of LLaMA-style
    SwiGLU blocks, EfficientNet and diffusion U-Nets.

    Under plain autodiff the textbook ``x / (1 + exp(-x))`` has a NaN gradient once ``exp(-x)``
    overflows (x < -88.7 in float32, x < -11.1 in float16). ``jax.nn.silu`` is finite but
    keeps two full-size arrays for its backward pass, and both its value and its slope drop
    to 0 where ``σ(x)`` underflows though ``x·σ(x)`` is still a normal number (x in
    [-91.86, -87.34] in float32). This version:

    * is finite for every finite input in every float dtype, with ``silu(+inf) = inf``
      (slope 1), ``silu(-inf) = NaN`` (torch's and ``jax.nn``'s value; slope 0, the limit)
      and NaN in → NaN out;
    * is accurate down to the underflow (``tests/test_silu.py`` and the registry's sweep
      state the bounds in ulps);
    * keeps one array for the backward pass: by default ``x``, from which the slope is
      recomputed. Keeping the slope itself (``residual="derivative"``) costs more memory in
      an MLP step, as the input is kept by the next layer's matmul anyway.

    Args:
        x: Input array, any shape. Float16 and bfloat16 are computed in float32 and rounded
            once; integers and booleans promote like ``jax.nn.silu``; complex input raises
            TypeError.
        residual: What the backward pass keeps: ``"input"`` (default; ``x``) or
            ``"derivative"`` (the slope, in x's dtype). Each kept array is tagged
            ``jax.ad_checkpoint.checkpoint_name(..., "stable_layers.silu")``.
        bits: ``1, 2, 4`` or ``8`` keeps the slope as packed codes of that many bits
            (reverse mode only, ``residual`` left out or ``"derivative"``); ``None`` (default)
            keeps it exactly.
        mode: ``"vjp"`` (default; ``jax.custom_vjp``: reverse mode and grad-of-grad) or
            ``"jvp"`` (``jax.custom_jvp``: also ``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``).
            Both give identical values and gradients.

    Returns:
        An array of ``x``'s shape and (float) dtype.

    Raises:
        TypeError: ``x`` is complex.
        ValueError: ``residual``, ``bits`` or ``mode`` is not a valid choice.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import stable_layers as sl
        >>> x = jnp.array([-90.0, 0.0, 2.0], jnp.float32)
        >>> print(sl.silu(x))  # jax.nn.silu: [-0. 0. 1.761594]
        [-7.374612e-38  0.000000e+00  1.761594e+00]
        >>> print(jax.grad(lambda x: sl.silu(x).sum())(x))
        [-7.2926711e-38  5.0000000e-01  1.0907842e+00]

    References:
        Elfwing, Uchibe, Doya (2018), "Sigmoid-weighted linear units for neural network
        function approximation in reinforcement learning"; ``torch.nn.functional.silu``.
    """
    return _rule(x, residual=residual, bits=bits, mode=mode)


silu.name = _rule.name  # type: ignore[attr-defined]
