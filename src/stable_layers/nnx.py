"""Flax nnx layers for the stable activations.

Thin ``flax.nnx.Module`` wrappers around the functional kernels: plain attributes hold the
hyperparameters, a learnable β is one ``nnx.Param``, and ``__call__`` calls the kernel. They
need no ``rngs`` and drop into ``nnx.Sequential``. ``Softplus`` is written by hand for its
learnable β; every parameterless activation's layer is made from its function by
``_elementwise``, with the function's options and defaults.

Requires Flax: ``pip install "stable-layers[flax]"``.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
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

from . import _elu, _gelu, _layers, _log_sigmoid, _mish, _silu, _xsin
from ._checks import check_float_dtype

__all__ = ["CELU", "ELU", "GELU", "LogSigmoid", "Mish", "SELU", "SiLU", "Snake", "Softplus", "XSin"]

_SOFTPLUS = "stable_layers.nnx.Softplus"
_SNAKE = "stable_layers.nnx.Snake"


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


class Snake(nnx.Module):
    r"""The layer form of :func:`stable_layers.snake`, ``x + sin²(αx)/α``, with one learnable α
    per channel.

    See :func:`stable_layers.snake` for the math (written without dividing by α, so every α
    works, 0 included), the guarantees, ``residual``, ``mode`` and the dtype rules; the layer
    holds no math of its own. With ``learnable=True`` (default) it holds one ``nnx.Param``,
    ``log_alpha`` of shape ``(channels,)`` in ``param_dtype``, and uses
    ``α = exp(log_alpha)``, as BigVGAN's log-scale option does: positive for any value an
    optimiser gives it. With ``learnable=False`` ``log_alpha`` is None, the layer's state is
    empty and it uses ``alpha`` for every channel.

    Args:
        channels: The number of channels: the size of ``x``'s ``channel_axis``.
        alpha: The fixed α (any finite number), or every channel's initial α when
            ``learnable=True`` (then positive: the layer stores ``log α``).
        learnable: If True (default), α is trained through ``log_alpha``.
        channel_axis: The axis of ``x`` the α vector runs along: ``-1`` (default), Flax's
            features-last layout.
        residual: ``"input"``, snake's only policy: the backward pass keeps ``x``.
        mode: ``"vjp"`` (default) or ``"jvp"``.
        param_dtype: The dtype ``log_alpha`` is stored in (default float32); a floating dtype.

    Calling the layer on ``x`` returns an array of ``x``'s shape and float dtype: bfloat16 in
    gives bfloat16 out, since α is cast to ``x``'s dtype as in ``nnx.PReLU`` (the kernel
    computes half precision in float32 and rounds once). Integers promote to the default
    float dtype; complex raises TypeError.

    Raises:
        TypeError, ValueError: in ``__init__``, for a bad ``channels``, ``alpha``,
            ``learnable``, ``channel_axis``, ``residual``, ``mode`` or ``param_dtype``; when
            called, for an ``x`` without ``channels`` entries along ``channel_axis``.

    Examples:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> from stable_layers.nnx import Snake
        >>> x = jnp.linspace(-2.0, 2.0, 8).reshape(2, 4)  # (batch, channels)
        >>> act = Snake(4, 0.5)
        >>> print(act.log_alpha.shape, jnp.exp(act.log_alpha[...]))
        (4,) [0.5 0.5 0.5 0.5]
        >>> grads = nnx.grad(lambda m: m(x).sum())(act)
        >>> print(grads["log_alpha"][...].shape)
        (4,)
        >>> bool(jnp.array_equal(Snake(4, 0.0, learnable=False)(x), x))  # α = 0
        True

    References:
        Ziyin, Hartwig, Ueda (2020), "Neural Networks Fail to Learn Periodic Functions and How
        to Fix It"; BigVGAN (Lee et al. 2023) for the per-channel, log-scale α.
    """

    def __init__(
        self,
        channels: int,
        alpha: float = 1.0,
        *,
        learnable: bool = True,
        channel_axis: int = -1,
        residual: str = "input",
        mode: str = "vjp",
        param_dtype: Any = jnp.float32,
    ):
        _layers.check_snake_args(
            _SNAKE, channels, alpha, learnable, channel_axis, residual, mode, param_dtype
        )
        self.channels = int(channels)
        self.alpha = float(alpha)
        self.learnable = learnable
        self.channel_axis = int(channel_axis)
        self.residual = residual
        self.mode = mode
        self.param_dtype = param_dtype
        self.log_alpha = (
            nnx.Param(_layers.init_log_alpha(_SNAKE, self.channels, self.alpha, param_dtype))
            if learnable
            else None
        )

    def __call__(self, x: Any) -> jax.Array:
        return _layers.apply_snake(
            _SNAKE,
            x,
            None if self.log_alpha is None else self.log_alpha[...],
            alpha=self.alpha,
            channels=self.channels,
            channel_axis=self.channel_axis,
            residual=self.residual,
            mode=self.mode,
        )


def _elementwise(name: str, fn: Callable[..., jax.Array]) -> type[nnx.Module]:
    """The nnx layer of a parameterless activation, made from its function.

    ``__init__`` takes the function's options with its defaults (its signature, less ``x``),
    validates them as the function does and keeps them as plain attributes; ``__call__(x)``
    calls the function. The layer has no state and needs no ``rngs``.
    """
    spec = _layers.Elementwise(fn, f"{__name__}.{name}")

    def __init__(self, *args: Any, **kwargs: Any):
        options = spec.bind(*args, **kwargs)
        spec.check(options)
        for option, value in options.items():
            setattr(self, option, value)

    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    __init__.__signature__ = spec.signature.replace(  # type: ignore[attr-defined]
        parameters=[self_param, *spec.signature.parameters.values()]
    )

    def __call__(self, x: Any) -> jax.Array:
        return spec(x, {o: getattr(self, o) for o in spec.options})

    def body(ns: dict[str, Any]) -> None:
        ns.update(
            __module__=__name__,
            __qualname__=name,
            __doc__=spec.doc("m(x)"),
            __init__=__init__,
            __call__=__call__,
            __signature__=spec.signature,  # for inspect and help(): nnx's metaclass hides it
        )

    return types.new_class(name, (nnx.Module,), {}, body)


# Each docstring below is for static readers (the API pages); the class's own __doc__ is
# built from its function's and lists the options.
XSin = _elementwise("XSin", _xsin.xsin)
"""The layer form of :func:`stable_layers.xsin`, with its options and defaults."""
LogSigmoid = _elementwise("LogSigmoid", _log_sigmoid.log_sigmoid)
"""The layer form of :func:`stable_layers.log_sigmoid`, with its options and defaults."""
SiLU = _elementwise("SiLU", _silu.silu)
"""The layer form of :func:`stable_layers.silu`, with its options and defaults."""
GELU = _elementwise("GELU", _gelu.gelu)
"""The layer form of :func:`stable_layers.gelu`, with its options and defaults."""
Mish = _elementwise("Mish", _mish.mish)
"""The layer form of :func:`stable_layers.mish`, with its options and defaults."""
ELU = _elementwise("ELU", _elu.elu)
"""The layer form of :func:`stable_layers.elu`, with its options and defaults."""
CELU = _elementwise("CELU", _elu.celu)
"""The layer form of :func:`stable_layers.celu`, with its options and defaults."""
SELU = _elementwise("SELU", _elu.selu)
"""The layer form of :func:`stable_layers.selu`, with its options and defaults."""
