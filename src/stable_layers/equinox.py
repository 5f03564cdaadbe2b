"""Equinox layers for the stable activations: ``Softplus`` and ``XSin``.

Thin ``equinox.Module`` wrappers around :func:`stable_layers.softplus` and
:func:`stable_layers.xsin`: they hold the hyperparameters (static fields) and, for a learnable
β, one scalar array, and call the kernel. Each ``__call__`` takes ``*, key=None`` so the layers
drop into ``eqx.nn.Sequential``, and they work as ``eqx.nn.MLP(..., activation=Softplus())``.

Requires Equinox: ``pip install "stable-layers[equinox]"``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

try:
    import equinox as eqx
except ImportError as err:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "stable_layers.equinox needs Equinox, which is not installed. Install the extra with "
        'pip install "stable-layers[equinox]"'
    ) from err

import jax
import jax.numpy as jnp

from . import _layers
from ._checks import check_layer_beta

__all__ = ["Softplus", "XSin"]

_SOFTPLUS = "stable_layers.equinox.Softplus"
_XSIN = "stable_layers.equinox.XSin"


class Softplus(eqx.Module):
    r"""Softplus layer, ``log(1 + exp(βx)) / β``, finite everywhere, optionally with a learnable β.

    ``y = softplus_β(x) = log(1 + exp(βx)) / β`` and ``dy/dx = sigmoid(βx)``. With
    ``learnable=True`` the layer stores ``log_beta``, a scalar array in ``param_dtype``, and uses
    ``β = exp(log_beta)``, positive by construction for any value an optimiser gives it;
    ``dy/dlog_beta = β · dy/dβ = -H(βx)/β``, with H the binary entropy of ``sigmoid(βx)``.

    In floating point β is a finite, normal positive number for ``-87 < log_beta < 88``
    (``-9.7 < log_beta < 11`` for float16 inputs, since β is cast to the input's dtype).

    The textbook ``jnp.log1p(jnp.exp(beta * x)) / beta`` overflows to ``inf`` once ``βx > 88.7``
    in float32 (11.1 in float16) and its gradient is then NaN. This layer calls
    :func:`stable_layers.softplus`, which is finite for every finite input in every float dtype,
    keeps one array for the backward pass (``residual``), and returns the β gradient from its
    two-input custom rule. The layer holds no math of its own.

    Inside ``eqx.nn.MLP(..., activation=Softplus(learnable=True))`` the MLP makes one copy of
    the layer per hidden neuron and calls each on a scalar, so β becomes per-neuron
    (``log_beta`` of shape ``(depth, width_size)`` inside the MLP).

    Args:
        beta: The fixed β, or the initial β when ``learnable=True``: a positive finite number.
        threshold: ``None`` (default; the kernel needs none) or a number: where
            ``βx > threshold`` the output is ``x`` and its gradient 1 (``torch.nn.Softplus``).
        learnable: If True, β is trained: the layer holds exactly one array, ``log_beta``.
            If False (default) the layer holds no arrays at all.
        residual: What the backward pass keeps: ``"output"`` (default; ``y``, free when the
            next layer keeps it anyway) or ``"input"`` (``x``). A learnable β also keeps ``x``.
        mode: ``"vjp"`` (default; ``jax.custom_vjp``: reverse mode and grad-of-grad) or
            ``"jvp"`` (``jax.custom_jvp``: also ``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``).
            Both give identical values and gradients.
        param_dtype: The dtype ``log_beta`` is stored in (default float32); a floating dtype.

    Call args:
        x: Array of any shape. The output has ``x``'s shape and float dtype: bfloat16 in gives
            bfloat16 out, learnable or not, since β is cast to ``x``'s dtype (the kernel then
            computes half precision in float32 and rounds once). Integers promote to the
            default float dtype; complex raises TypeError.
        key: Ignored; accepted so the layer fits ``eqx.nn.Sequential``.

    Raises:
        ValueError: at construction, for a bad ``residual``/``mode``/``threshold``/
            ``param_dtype`` or ``beta <= 0``, NaN or inf.
        TypeError: at construction, for a non-number ``beta`` or a non-bool ``learnable``.

    Example:
        >>> import equinox as eqx, jax, jax.numpy as jnp
        >>> from stable_layers.equinox import Softplus
        >>> x = jnp.array([-100.0, 0.0, 100.0], jnp.float32)
        >>> print(Softplus()(x))
        [  0.          0.6931472 100.       ]
        >>> act = Softplus(2.0, learnable=True)
        >>> print(act.log_beta.dtype, jnp.exp(act.log_beta))
        float32 2.0
        >>> grads = eqx.filter_grad(lambda m, x: m(x).sum())(act, x)
        >>> print(grads.log_beta)  # d/dlog β at x=0 is -log(2)/β
        -0.3465736
        >>> print(Softplus()(x.astype(jnp.bfloat16)).dtype)
        bfloat16

    References:
        ``torch.nn.Softplus`` for the ``beta``/``threshold`` convention; ``eqx.nn.MLP``'s
        source for the per-neuron copies of a learnable activation.
    """

    beta: float = eqx.field(static=True)
    threshold: float | None = eqx.field(static=True)
    learnable: bool = eqx.field(static=True)
    residual: str = eqx.field(static=True)
    mode: str = eqx.field(static=True)
    param_dtype: Any = eqx.field(static=True)
    log_beta: jax.Array | None

    def __init__(
        self,
        beta: float = 1.0,
        threshold: float | None = None,
        *,
        learnable: bool = False,
        residual: str = "output",
        mode: str = "vjp",
        param_dtype: Any = jnp.float32,
    ):
        # __check_init__, which Equinox runs after __init__, validates every argument. beta is
        # checked here already because __init__ consumes it: log β is built from it, and an
        # array in a static field would only warn (init_log_beta checks param_dtype too).
        self.beta = check_layer_beta(_SOFTPLUS, beta)
        if learnable is True:
            self.log_beta = _layers.init_log_beta(_SOFTPLUS, beta, param_dtype)
        else:
            self.log_beta = None
        self.threshold = threshold
        self.learnable = learnable
        self.residual = residual
        self.mode = mode
        self.param_dtype = param_dtype

    def __check_init__(self):
        _layers.check_softplus_args(
            _SOFTPLUS,
            self.beta,
            self.threshold,
            self.learnable,
            self.residual,
            self.mode,
            self.param_dtype,
        )

    def __call__(self, x: Any, *, key: jax.Array | None = None) -> jax.Array:
        del key
        return _layers.apply_softplus(
            _SOFTPLUS,
            x,
            self.log_beta,
            beta=self.beta,
            threshold=self.threshold,
            residual=self.residual,
            mode=self.mode,
        )


class XSin(eqx.Module):
    """The oscillating activation ``x · sin(x)`` as a layer, keeping one array for backward.

    ``y = x sin(x)`` and ``dy/dx = sin(x) + x cos(x)``. Plain autodiff of
    ``x * jnp.sin(x)`` keeps three full-size arrays for the backward pass (x, sin x, cos x);
    this layer calls :func:`stable_layers.xsin`, which by default keeps one, the derivative
    itself. The layer holds no arrays and no math of its own.

    Args:
        residual: What the backward pass keeps: ``"derivative"`` (default; one array, the
            backward is one multiply), ``"input_and_sin"`` (two arrays) or ``"input"`` (``x``
            only, recomputing sin and cos; cheapest where ``x`` is kept anyway).
        mode: ``"vjp"`` (default; ``jax.custom_vjp``) or ``"jvp"`` (``jax.custom_jvp``, which
            also supports ``jax.jvp`` and ``jax.hessian``). Same values and gradients.

    Call args:
        x: Array of any shape; the output has its shape and float dtype (bfloat16 in,
            bfloat16 out, computed in float32 and rounded once).
        key: Ignored; accepted so the layer fits ``eqx.nn.Sequential``.

    Raises:
        ValueError: at construction, for a bad ``residual`` or ``mode``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from stable_layers.equinox import XSin
        >>> x = jnp.array([0.0, 1.0, 2.0], jnp.float32)
        >>> print(XSin()(x))
        [0.         0.84147096 1.8185948 ]
        >>> print(jax.grad(lambda x: XSin(mode="jvp")(x).sum())(x))
        [0.         1.3817732  0.07700372]
    """

    _: dataclasses.KW_ONLY
    residual: str = eqx.field(static=True, default="derivative")
    mode: str = eqx.field(static=True, default="vjp")

    def __check_init__(self):
        _layers.check_xsin_args(_XSIN, self.residual, self.mode)

    def __call__(self, x: Any, *, key: jax.Array | None = None) -> jax.Array:
        del key
        return _layers.apply_xsin(x, residual=self.residual, mode=self.mode)
