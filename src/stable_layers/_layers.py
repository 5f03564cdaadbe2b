"""Shared by the Equinox, linen and nnx layers: option checks and the learnable-β parameter.

No kernel math lives here: every layer calls its kernel (:func:`stable_layers.softplus`,
:func:`stable_layers.xsin`, :func:`stable_layers.log_sigmoid`). What is shared is how a layer
checks its options against the kernel's choices and turns its stored parameter into the
kernel's ``beta`` argument, so the three frameworks compute exactly the same thing.

A learnable β is stored as ``log_beta`` (a scalar in ``param_dtype``) and used as
``beta = exp(log_beta)``, which is positive for every finite ``log_beta``: no gradient step can
make it zero or negative, and no clipping or projection is needed. Its gradient is the
kernel's β cotangent times ``dβ/dlog β = β``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from . import _softplus
from ._activation import Activation
from ._checks import (
    MODES,
    as_float_array,
    check_bool,
    check_choice,
    check_float_dtype,
    check_layer_beta,
    check_threshold,
)

PARAM_NAME = "log_beta"


def check_softplus_args(
    fn: str,
    beta: Any,
    threshold: Any,
    learnable: Any,
    residual: Any,
    mode: Any,
    param_dtype: Any,
) -> None:
    """Raises TypeError/ValueError naming the first bad argument, its value and the choices."""
    check_options(fn, _softplus._rule, residual, mode)
    check_layer_beta(fn, beta)
    check_threshold(fn, threshold)
    check_bool(fn, "learnable", learnable)
    check_float_dtype(fn, "param_dtype", param_dtype)


def check_options(fn: str, activation: Activation, residual: Any, mode: Any) -> None:
    """Raises ValueError naming a bad ``residual`` or ``mode`` and the activation's choices."""
    check_choice(fn, "residual", residual, activation.residuals)
    check_choice(fn, "mode", mode, MODES)


def init_log_beta(fn: str, beta: Any, param_dtype: Any) -> jax.Array:
    """The stored parameter for an initial β: ``log β`` as a scalar of ``param_dtype``.

    The log is taken in float64 and rounded once, so ``exp(log_beta)`` is β to within an ulp
    of ``param_dtype`` (exactly 1 for β = 1).
    """
    beta = check_layer_beta(fn, beta)
    param_dtype = check_float_dtype(fn, "param_dtype", param_dtype)
    return jnp.asarray(math.log(beta), dtype=param_dtype)


def apply_softplus(
    fn: str,
    x: Any,
    log_beta: jax.Array | None,
    *,
    beta: float,
    threshold: float | None,
    residual: str,
    mode: str,
    dtype: Any = None,
) -> jax.Array:
    """Calls the softplus kernel with a layer's β: the static ``beta``, or ``exp(log_beta)``.

    ``exp`` is taken in the parameter's dtype and the result cast to the input's dtype (flax
    ``PReLU``'s rule), so bfloat16 in gives bfloat16 out and the kernel's β cotangent flows
    back through the cast into ``param_dtype``. With ``dtype`` set, the input is cast to it
    first (flax nnx's ``dtype`` convention).
    """
    if dtype is not None or log_beta is not None:
        x = as_float_array(fn, x)
    if dtype is not None:
        x = x.astype(dtype)
    if log_beta is not None:
        beta = jnp.exp(log_beta).astype(x.dtype)
    return _softplus.softplus(x, beta=beta, threshold=threshold, residual=residual, mode=mode)
