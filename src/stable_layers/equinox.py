"""Equinox layers for the stable activations: ``Softplus``, ``XSin`` and ``LogSigmoid``.

Thin ``equinox.Module`` wrappers around the functional kernels: they hold the hyperparameters
(static fields) and, for a learnable β, one scalar array, and call the kernel. Each
``__call__`` takes ``*, key=None`` so the layers drop into ``eqx.nn.Sequential``, and they work
as ``eqx.nn.MLP(..., activation=Softplus())``.

Requires Equinox: ``pip install "stable-layers[equinox]"``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

try:
    import equinox as eqx
except ImportError as err:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "stable_layers.equinox needs Equinox, which is not installed. Install the extra with "
        'pip install "stable-layers[equinox]"'
    ) from err

import jax
import jax.numpy as jnp

from . import _layers, _log_sigmoid, _xsin
from ._activation import Activation
from ._checks import check_layer_beta

__all__ = ["LogSigmoid", "Softplus", "XSin"]

_SOFTPLUS = "stable_layers.equinox.Softplus"


class Softplus(eqx.Module):
    r"""The layer form of :func:`stable_layers.softplus`, optionally with a learnable β.

    See :func:`stable_layers.softplus` for the math, the guarantees, ``threshold``,
    ``residual``, ``mode`` and the dtype rules; the layer holds no math of its own. With
    ``learnable=True`` it holds one array, ``log_beta`` (a scalar in ``param_dtype``), and uses
    ``β = exp(log_beta)``, positive for any value an optimiser gives it (the README's "Layers"
    section gives the floating-point range). Inside
    ``eqx.nn.MLP(..., activation=Softplus(learnable=True))`` the MLP makes one copy of the
    layer per hidden neuron, so β becomes per-neuron (``log_beta`` of shape
    ``(depth, width_size)``).

    Args:
        beta: The fixed β, or the initial β when ``learnable=True``: a positive finite number.
        threshold: ``None`` (default) or a number, as in ``torch.nn.Softplus``.
        learnable: If True, β is trained: the layer holds exactly one array, ``log_beta``.
            If False (default) the layer holds no arrays at all.
        residual: ``"output"`` (default) or ``"input"``. A learnable β also keeps ``x``.
        mode: ``"vjp"`` (default) or ``"jvp"``.
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

    Examples:
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


class _Elementwise(eqx.Module):
    """A layer without parameters: it stores ``residual`` and ``mode`` and calls its kernel."""

    _activation: ClassVar[Activation]

    def __check_init__(self):
        _layers.check_options(
            f"{__name__}.{type(self).__name__}", self._activation, self.residual, self.mode
        )

    def __call__(self, x: Any, *, key: jax.Array | None = None) -> jax.Array:
        del key
        return self._activation(x, residual=self.residual, mode=self.mode)


class XSin(_Elementwise):
    """The layer form of :func:`stable_layers.xsin`, ``x · sin(x)``, keeping one array.

    See :func:`stable_layers.xsin` for the math, the residual policies and the dtype rules; the
    layer holds no arrays and no math of its own.

    Args:
        residual: ``"derivative"`` (default), ``"input_and_sin"`` or ``"input"``.
        mode: ``"vjp"`` (default) or ``"jvp"``.

    Call args:
        x: Array of any shape. key: ignored, so the layer fits ``eqx.nn.Sequential``.

    Raises:
        ValueError: at construction, for a bad ``residual`` or ``mode``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from stable_layers.equinox import XSin
        >>> x = jnp.array([0.0, 1.0, 2.0], jnp.float32)
        >>> print(XSin()(x))
        [0.         0.84147096 1.8185948 ]
        >>> print(jax.grad(lambda x: XSin(mode="jvp")(x).sum())(x))
        [0.         1.3817732  0.07700372]
    """

    _activation = _xsin._rule
    _: dataclasses.KW_ONLY
    residual: str = eqx.field(static=True, default="derivative")
    mode: str = eqx.field(static=True, default="vjp")


class LogSigmoid(_Elementwise):
    """The layer form of :func:`stable_layers.log_sigmoid`, ``log(sigmoid(x))``.

    See :func:`stable_layers.log_sigmoid` for the math, the guarantees and the dtype rules; the
    layer holds no arrays and no math of its own.

    Args:
        residual: ``"output"`` (default) or ``"input"``.
        mode: ``"vjp"`` (default) or ``"jvp"``.

    Call args:
        x: Array of any shape. key: ignored, so the layer fits ``eqx.nn.Sequential``.

    Raises:
        ValueError: at construction, for a bad ``residual`` or ``mode``.

    Examples:
        >>> import jax.numpy as jnp
        >>> from stable_layers.equinox import LogSigmoid
        >>> print(LogSigmoid()(jnp.array([-100.0, 0.0], jnp.float32)))
        [-100.          -0.6931472]
    """

    _activation = _log_sigmoid._rule
    _: dataclasses.KW_ONLY
    residual: str = eqx.field(static=True, default="output")
    mode: str = eqx.field(static=True, default="vjp")
