"""Flax linen layers for the stable activations: ``Softplus`` and ``XSin``.

Thin ``flax.linen.Module`` wrappers around :func:`stable_layers.softplus` and
:func:`stable_layers.xsin`: dataclass fields hold the hyperparameters, a learnable β is one
parameter created with ``self.param``, and ``__call__`` calls the kernel. They drop into
``flax.linen.Sequential`` or any ``@nn.compact`` method.

Requires Flax: ``pip install "stable-layers[flax]"``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

try:
    import flax.linen as nn
except ImportError as err:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "stable_layers.linen needs Flax, which is not installed. Install the extra with "
        'pip install "stable-layers[flax]"'
    ) from err

import jax
import jax.numpy as jnp

from . import _layers

__all__ = ["Softplus", "XSin"]

_SOFTPLUS = "stable_layers.linen.Softplus"
_XSIN = "stable_layers.linen.XSin"


class Softplus(nn.Module):
    r"""Softplus layer, ``log(1 + exp(βx)) / β``, finite everywhere, optionally with a learnable β.

    ``y = softplus_β(x) = log(1 + exp(βx)) / β`` and ``dy/dx = sigmoid(βx)``. With
    ``learnable=True`` the layer has one parameter, ``params["log_beta"]``, a scalar in
    ``param_dtype`` initialised to ``log(beta)``, and uses ``β = exp(log_beta)``, positive by
    construction for any value an optimiser gives it; ``dy/dlog_beta = -H(βx)/β``, with H the
    binary entropy of ``sigmoid(βx)``.

    In floating point β is a finite, normal positive number for ``-87 < log_beta < 88``
    (``-9.7 < log_beta < 11`` for float16 inputs, since β is cast to the input's dtype).

    The textbook ``jnp.log1p(jnp.exp(beta * x)) / beta`` overflows to ``inf`` once ``βx > 88.7``
    in float32 (11.1 in float16) and its gradient is then NaN. This layer calls
    :func:`stable_layers.softplus`, which is finite for every finite input in every float dtype,
    keeps one array for the backward pass (``residual``), and returns the β gradient from its
    two-input custom rule. The layer holds no math of its own.

    Attributes:
        beta: The fixed β, or the initial β when ``learnable=True``: a positive finite number.
        threshold: ``None`` (default; the kernel needs none) or a number: where
            ``βx > threshold`` the output is ``x`` and its gradient 1 (``torch.nn.Softplus``).
        learnable: If True (keyword-only), β is trained through the ``log_beta`` parameter.
            If False (default) ``init`` creates no variables at all.
        residual: What the backward pass keeps: ``"output"`` (default; ``y``, free when the
            next layer keeps it anyway) or ``"input"`` (``x``). A learnable β also keeps ``x``.
        mode: ``"vjp"`` (default; ``jax.custom_vjp``: reverse mode and grad-of-grad) or
            ``"jvp"`` (``jax.custom_jvp``: also ``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``).
            Both give identical values and gradients.
        param_dtype: The dtype ``log_beta`` is stored in (default float32); a floating dtype.

    Calling the layer on ``x`` (any shape) returns an array of ``x``'s shape and float dtype:
    bfloat16 in gives bfloat16 out, learnable or not, since β is cast to ``x``'s dtype as in
    ``nn.PReLU`` (the kernel computes half precision in float32 and rounds once). Integers
    promote to the default float dtype; complex raises TypeError.

    Raises:
        ValueError: when the layer is constructed (so before ``init``), for a bad
            ``residual``/``mode``/``threshold``/``param_dtype`` or ``beta <= 0``, NaN or inf.
        TypeError: likewise, for a non-number ``beta`` or a non-bool ``learnable``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from stable_layers.linen import Softplus
        >>> x = jnp.array([-100.0, 0.0, 100.0], jnp.float32)
        >>> print(Softplus().apply({}, x))
        [  0.          0.6931472 100.       ]
        >>> act = Softplus(2.0, learnable=True)
        >>> params = act.init(jax.random.key(0), x)["params"]
        >>> print(params["log_beta"].dtype, jnp.exp(params["log_beta"]))
        float32 2.0
        >>> grads = jax.grad(lambda p: act.apply({"params": p}, x).sum())(params)
        >>> print(grads["log_beta"])  # d/dlog β at x=0 is -log(2)/β
        -0.3465736
        >>> print(Softplus().apply({}, x.astype(jnp.bfloat16)).dtype)
        bfloat16

    References:
        ``torch.nn.Softplus`` for the ``beta``/``threshold`` convention; ``flax.linen.PReLU``
        for casting the parameter to the input's dtype.
    """

    beta: float = 1.0
    threshold: float | None = None
    _: dataclasses.KW_ONLY
    learnable: bool = False
    residual: str = "output"
    mode: str = "vjp"
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        _layers.check_softplus_args(
            _SOFTPLUS,
            self.beta,
            self.threshold,
            self.learnable,
            self.residual,
            self.mode,
            self.param_dtype,
        )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Any) -> jax.Array:
        log_beta = None
        if self.learnable:
            log_beta = self.param(
                _layers.PARAM_NAME,
                lambda _: _layers.init_log_beta(_SOFTPLUS, self.beta, self.param_dtype),
            )
        return _layers.apply_softplus(
            _SOFTPLUS,
            x,
            log_beta,
            beta=self.beta,
            threshold=self.threshold,
            residual=self.residual,
            mode=self.mode,
        )


class XSin(nn.Module):
    """The oscillating activation ``x · sin(x)`` as a layer, keeping one array for backward.

    ``y = x sin(x)`` and ``dy/dx = sin(x) + x cos(x)``. Plain autodiff of
    ``x * jnp.sin(x)`` keeps three full-size arrays for the backward pass (x, sin x, cos x);
    this layer calls :func:`stable_layers.xsin`, which by default keeps one, the derivative
    itself. The layer has no variables and no math of its own.

    Attributes:
        residual: What the backward pass keeps (keyword-only): ``"derivative"`` (default; one
            array, the backward is one multiply), ``"input_and_sin"`` (two arrays) or
            ``"input"`` (``x`` only, recomputing sin and cos; cheapest where ``x`` is kept
            anyway).
        mode: ``"vjp"`` (default; ``jax.custom_vjp``) or ``"jvp"`` (``jax.custom_jvp``, which
            also supports ``jax.jvp`` and ``jax.hessian``). Same values and gradients.

    Calling the layer on ``x`` returns an array of ``x``'s shape and float dtype (bfloat16 in,
    bfloat16 out, computed in float32 and rounded once).

    Raises:
        ValueError: when the layer is constructed, for a bad ``residual`` or ``mode``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from stable_layers.linen import XSin
        >>> x = jnp.array([0.0, 1.0, 2.0], jnp.float32)
        >>> print(XSin().apply({}, x))
        [0.         0.84147096 1.8185948 ]
        >>> print(jax.grad(lambda x: XSin(mode="jvp").apply({}, x).sum())(x))
        [0.         1.3817732  0.07700372]
    """

    _: dataclasses.KW_ONLY
    residual: str = "derivative"
    mode: str = "vjp"

    def __post_init__(self):
        _layers.check_xsin_args(_XSIN, self.residual, self.mode)
        super().__post_init__()

    def __call__(self, x: Any) -> jax.Array:
        return _layers.apply_xsin(x, residual=self.residual, mode=self.mode)
