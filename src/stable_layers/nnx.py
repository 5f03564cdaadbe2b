"""Flax nnx layers for the stable activations: ``Softplus`` and ``XSin``.

Thin ``flax.nnx.Module`` wrappers around :func:`stable_layers.softplus` and
:func:`stable_layers.xsin`: plain attributes hold the hyperparameters, a learnable β is one
``nnx.Param``, and ``__call__`` calls the kernel. They need no ``rngs`` and drop into
``nnx.Sequential``.

Requires Flax: ``pip install "stable-layers[flax]"``.
"""

from __future__ import annotations

from typing import Any

try:
    from flax import nnx
except ImportError as err:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "stable_layers.nnx needs Flax, which is not installed. Install the extra with "
        'pip install "stable-layers[flax]"'
    ) from err

import jax
import jax.numpy as jnp

from . import _layers
from ._checks import check_float_dtype

__all__ = ["Softplus", "XSin"]

_SOFTPLUS = "stable_layers.nnx.Softplus"
_XSIN = "stable_layers.nnx.XSin"


class Softplus(nnx.Module):
    r"""Softplus layer, ``log(1 + exp(βx)) / β``, finite everywhere, optionally with a learnable β.

    ``y = softplus_β(x) = log(1 + exp(βx)) / β`` and ``dy/dx = sigmoid(βx)``. With
    ``learnable=True`` the layer holds one ``nnx.Param``, ``log_beta``, a scalar in
    ``param_dtype`` initialised to ``log(beta)``, and uses ``β = exp(log_beta)``, positive by
    construction for any value an optimiser gives it; ``dy/dlog_beta = -H(βx)/β``, with H the
    binary entropy of ``sigmoid(βx)``. With ``learnable=False`` (default) ``log_beta`` is None
    and the layer's state is empty.

    In floating point β is a finite, normal positive number for ``-87 < log_beta < 88``
    (``-9.7 < log_beta < 11`` for float16 inputs, since β is cast to the input's dtype).

    The textbook ``jnp.log1p(jnp.exp(beta * x)) / beta`` overflows to ``inf`` once ``βx > 88.7``
    in float32 (11.1 in float16) and its gradient is then NaN. This layer calls
    :func:`stable_layers.softplus`, which is finite for every finite input in every float dtype,
    keeps one array for the backward pass (``residual``), and returns the β gradient from its
    two-input custom rule. The layer holds no math of its own.

    Args:
        beta: The fixed β, or the initial β when ``learnable=True``: a positive finite number.
        threshold: ``None`` (default; the kernel needs none) or a number: where
            ``βx > threshold`` the output is ``x`` and its gradient 1 (``torch.nn.Softplus``).
        learnable: If True, β is trained through the ``log_beta`` parameter.
        residual: What the backward pass keeps: ``"output"`` (default; ``y``, free when the
            next layer keeps it anyway) or ``"input"`` (``x``). A learnable β also keeps ``x``.
        mode: ``"vjp"`` (default; ``jax.custom_vjp``: reverse mode and grad-of-grad) or
            ``"jvp"`` (``jax.custom_jvp``: also ``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``).
            Both give identical values and gradients.
        param_dtype: The dtype ``log_beta`` is stored in (default float32); a floating dtype.
        dtype: The dtype of the computation, as in ``nnx.PReLU``: if set, ``x`` is cast to it
            and the output has it; ``None`` (default) computes in ``x``'s dtype. Either way β
            is cast to the computation dtype, never the input promoted to ``param_dtype``.

    Calling the layer on ``x`` (any shape) returns an array of ``x``'s shape and float dtype
    (or ``dtype``): bfloat16 in gives bfloat16 out, learnable or not (the kernel computes half
    precision in float32 and rounds once). Integers promote to the default float dtype;
    complex raises TypeError.

    Raises:
        ValueError: in ``__init__``, for a bad ``residual``/``mode``/``threshold``/
            ``param_dtype``/``dtype`` or ``beta <= 0``, NaN or inf.
        TypeError: in ``__init__``, for a non-number ``beta`` or a non-bool ``learnable``.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> from stable_layers.nnx import Softplus
        >>> x = jnp.array([-100.0, 0.0, 100.0], jnp.float32)
        >>> print(Softplus()(x))
        [  0.          0.6931472 100.       ]
        >>> act = Softplus(2.0, learnable=True)
        >>> print(act.log_beta.dtype, jnp.exp(act.log_beta[...]))
        float32 2.0
        >>> grads = nnx.grad(lambda m, x: m(x).sum())(act, x)
        >>> print(grads["log_beta"][...])  # d/dlog β at x=0 is -log(2)/β
        -0.3465736
        >>> print(Softplus()(x.astype(jnp.bfloat16)).dtype)
        bfloat16

    References:
        ``torch.nn.Softplus`` for the ``beta``/``threshold`` convention; ``flax.nnx.PReLU``
        for ``param_dtype``/``dtype`` and casting the parameter to the input's dtype.
    """

    def __init__(
        self,
        beta: float = 1.0,
        threshold: float | None = None,
        *,
        learnable: bool = False,
        residual: str = "output",
        mode: str = "vjp",
        param_dtype: Any = jnp.float32,
        dtype: Any = None,
    ):
        _layers.check_softplus_args(
            _SOFTPLUS, beta, threshold, learnable, residual, mode, param_dtype
        )
        check_float_dtype(_SOFTPLUS, "dtype", dtype, allow_none=True)
        self.beta = float(beta)
        self.threshold = None if threshold is None else float(threshold)
        self.learnable = learnable
        self.residual = residual
        self.mode = mode
        self.param_dtype = param_dtype
        self.dtype = dtype
        self.log_beta = (
            nnx.Param(_layers.init_log_beta(_SOFTPLUS, beta, param_dtype)) if learnable else None
        )

    def __call__(self, x: Any) -> jax.Array:
        return _layers.apply_softplus(
            _SOFTPLUS,
            x,
            None if self.log_beta is None else self.log_beta[...],
            beta=self.beta,
            threshold=self.threshold,
            residual=self.residual,
            mode=self.mode,
            dtype=self.dtype,
        )


class XSin(nnx.Module):
    """The oscillating activation ``x · sin(x)`` as a layer, keeping one array for backward.

    ``y = x sin(x)`` and ``dy/dx = sin(x) + x cos(x)``. Plain autodiff of
    ``x * jnp.sin(x)`` keeps three full-size arrays for the backward pass (x, sin x, cos x);
    this layer calls :func:`stable_layers.xsin`, which by default keeps one, the derivative
    itself. The layer has no state and no math of its own.

    Args:
        residual: What the backward pass keeps: ``"derivative"`` (default; one array, the
            backward is one multiply), ``"input_and_sin"`` (two arrays) or ``"input"`` (``x``
            only, recomputing sin and cos; cheapest where ``x`` is kept anyway).
        mode: ``"vjp"`` (default; ``jax.custom_vjp``) or ``"jvp"`` (``jax.custom_jvp``, which
            also supports ``jax.jvp`` and ``jax.hessian``). Same values and gradients.

    Calling the layer on ``x`` returns an array of ``x``'s shape and float dtype (bfloat16 in,
    bfloat16 out, computed in float32 and rounded once).

    Raises:
        ValueError: in ``__init__``, for a bad ``residual`` or ``mode``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from stable_layers.nnx import XSin
        >>> x = jnp.array([0.0, 1.0, 2.0], jnp.float32)
        >>> print(XSin()(x))
        [0.         0.84147096 1.8185948 ]
        >>> print(jax.grad(lambda x: XSin(mode="jvp")(x).sum())(x))
        [0.         1.3817732  0.07700372]
    """

    def __init__(self, *, residual: str = "derivative", mode: str = "vjp"):
        _layers.check_xsin_args(_XSIN, residual, mode)
        self.residual = residual
        self.mode = mode

    def __call__(self, x: Any) -> jax.Array:
        return _layers.apply_xsin(x, residual=self.residual, mode=self.mode)
