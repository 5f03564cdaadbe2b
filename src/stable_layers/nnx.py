"""Flax nnx layers for the stable activations: ``Softplus``, ``XSin`` and ``LogSigmoid``.

Thin ``flax.nnx.Module`` wrappers around the functional kernels: plain attributes hold the
hyperparameters, a learnable β is one ``nnx.Param``, and ``__call__`` calls the kernel. They
need no ``rngs`` and drop into ``nnx.Sequential``.

Requires Flax: ``pip install "stable-layers[flax]"``.
"""

from __future__ import annotations

from typing import Any, ClassVar

try:
    from flax import nnx
except ImportError as err:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "stable_layers.nnx needs Flax, which is not installed. Install the extra with "
        'pip install "stable-layers[flax]"'
    ) from err

import jax
import jax.numpy as jnp

from . import _layers, _log_sigmoid, _xsin
from ._activation import Activation
from ._checks import check_float_dtype

__all__ = ["LogSigmoid", "Softplus", "XSin"]

_SOFTPLUS = "stable_layers.nnx.Softplus"


class Softplus(nnx.Module):
    r"""The layer form of :func:`stable_layers.softplus`, optionally with a learnable β.

    See :func:`stable_layers.softplus` for the math, the guarantees, ``threshold``,
    ``residual``, ``mode`` and the dtype rules; the layer holds no math of its own. With
    ``learnable=True`` it holds one ``nnx.Param``, ``log_beta`` (a scalar in ``param_dtype``
    initialised to ``log(beta)``), and uses ``β = exp(log_beta)``, positive for any value an
    optimiser gives it (the README's "Layers" section gives the floating-point range). With
    ``learnable=False`` (default) ``log_beta`` is None and the layer's state is empty.

    Args:
        beta: The fixed β, or the initial β when ``learnable=True``: a positive finite number.
        threshold: ``None`` (default) or a number, as in ``torch.nn.Softplus``.
        learnable: If True, β is trained through the ``log_beta`` parameter.
        residual: ``"output"`` (default) or ``"input"``. A learnable β also keeps ``x``.
        mode: ``"vjp"`` (default) or ``"jvp"``.
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

    Examples:
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


class _Elementwise(nnx.Module):
    """A layer without state: it stores ``residual`` and ``mode`` and calls its kernel."""

    _activation: ClassVar[Activation]

    def __init__(self, *, residual: str | None = None, mode: str = "vjp"):
        residual = self._activation.residuals[0] if residual is None else residual
        _layers.check_options(f"{__name__}.{type(self).__name__}", self._activation, residual, mode)
        self.residual = residual
        self.mode = mode

    def __call__(self, x: Any) -> jax.Array:
        return self._activation(x, residual=self.residual, mode=self.mode)


class XSin(_Elementwise):
    """The layer form of :func:`stable_layers.xsin`, ``x · sin(x)``, keeping one array.

    See :func:`stable_layers.xsin` for the math, the residual policies and the dtype rules; the
    layer has no state and no math of its own.

    Args:
        residual: ``"derivative"`` (default), ``"input_and_sin"`` or ``"input"``.
        mode: ``"vjp"`` (default) or ``"jvp"``.

    Raises:
        ValueError: in ``__init__``, for a bad ``residual`` or ``mode``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from stable_layers.nnx import XSin
        >>> x = jnp.array([0.0, 1.0, 2.0], jnp.float32)
        >>> print(XSin()(x))
        [0.         0.84147096 1.8185948 ]
        >>> print(jax.grad(lambda x: XSin(mode="jvp")(x).sum())(x))
        [0.         1.3817732  0.07700372]
    """

    _activation = _xsin._rule


class LogSigmoid(_Elementwise):
    """The layer form of :func:`stable_layers.log_sigmoid`, ``log(sigmoid(x))``.

    See :func:`stable_layers.log_sigmoid` for the math, the guarantees and the dtype rules; the
    layer has no state and no math of its own.

    Args:
        residual: ``"output"`` (default) or ``"input"``.
        mode: ``"vjp"`` (default) or ``"jvp"``.

    Raises:
        ValueError: in ``__init__``, for a bad ``residual`` or ``mode``.

    Examples:
        >>> import jax.numpy as jnp
        >>> from stable_layers.nnx import LogSigmoid
        >>> print(LogSigmoid()(jnp.array([-100.0, 0.0], jnp.float32)))
        [-100.          -0.6931472]
    """

    _activation = _log_sigmoid._rule
