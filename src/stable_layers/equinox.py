"""Equinox layers for the stable activations.

Thin ``equinox.Module`` wrappers around the functional kernels: they hold the hyperparameters
(static fields) and, for a learnable β, one scalar array, and call the kernel. Each
``__call__`` takes ``*, key=None`` so the layers drop into ``eqx.nn.Sequential``, and they work
as ``eqx.nn.MLP(..., activation=Softplus())``. ``Softplus`` is written by hand for its
learnable β; every parameterless activation's layer is made from its function by
``_elementwise``, with the function's options and defaults.

Requires Equinox: ``pip install "stable-layers[equinox]"``.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
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

from . import _elu, _gelu, _layers, _log_sigmoid, _mish, _silu, _xsin
from ._checks import check_layer_beta

__all__ = ["CELU", "ELU", "GELU", "LogSigmoid", "Mish", "SELU", "SiLU", "Snake", "Softplus", "XSin"]

_SOFTPLUS = "stable_layers.equinox.Softplus"
_SNAKE = "stable_layers.equinox.Snake"


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


class Snake(eqx.Module):
    r"""The layer form of :func:`stable_layers.snake`, ``x + sin²(αx)/α``, with one learnable α
    per channel.

    See :func:`stable_layers.snake` for the math (written without dividing by α, so every α
    works, 0 included), the guarantees, ``residual``, ``mode`` and the dtype rules; the layer
    holds no math of its own. With ``learnable=True`` (default) it holds exactly one array,
    ``log_alpha`` of shape ``(channels,)`` in ``param_dtype``, and uses
    ``α = exp(log_alpha)``, as BigVGAN's log-scale option does: positive for any value an
    optimiser gives it. With ``learnable=False`` it holds no arrays and uses ``alpha`` for
    every channel.

    Args:
        channels: The number of channels: the size of ``x``'s ``channel_axis``.
        alpha: The fixed α (any finite number), or every channel's initial α when
            ``learnable=True`` (then positive: the layer stores ``log α``).
        learnable: If True (default), α is trained through ``log_alpha``.
        channel_axis: The axis of ``x`` the α vector runs along: ``-1`` (default) for
            features last, ``0`` for the ``(channels, length)`` output of an unbatched
            ``eqx.nn.Conv1d`` (``jax.vmap`` the layer over the batch).
        residual: ``"input"``, snake's only policy: the backward pass keeps ``x``.
        mode: ``"vjp"`` (default) or ``"jvp"``.
        param_dtype: The dtype ``log_alpha`` is stored in (default float32); a floating dtype.

    Call args:
        x: Array with ``channels`` entries along ``channel_axis``. The output has ``x``'s shape
            and float dtype: bfloat16 in gives bfloat16 out, since α is cast to ``x``'s dtype
            (the kernel then computes half precision in float32 and rounds once). Integers
            promote to the default float dtype; complex raises TypeError.
        key: Ignored; accepted so the layer fits ``eqx.nn.Sequential``.

    Raises:
        TypeError, ValueError: at construction, for a bad ``channels``, ``alpha``,
            ``learnable``, ``channel_axis``, ``residual``, ``mode`` or ``param_dtype``; when
            called, for an ``x`` without ``channels`` entries along ``channel_axis``.

    Examples:
        >>> import equinox as eqx, jax, jax.numpy as jnp
        >>> from stable_layers.equinox import Snake
        >>> conv = eqx.nn.Conv1d(1, 3, 3, padding=1, dtype=jnp.float32, key=jax.random.key(0))
        >>> act = Snake(3, channel_axis=0)  # Conv1d's unbatched output is (channels, length)
        >>> print(act.log_alpha)
        [0. 0. 0.]
        >>> x = jnp.linspace(-1.0, 1.0, 8, dtype=jnp.float32).reshape(1, 8)
        >>> y = act(conv(x))
        >>> print(y.shape, y.dtype)
        (3, 8) float32
        >>> grads = eqx.filter_grad(lambda m: jnp.sum(m(conv(x))))(act)
        >>> print(grads.log_alpha.shape)
        (3,)

    References:
        Ziyin, Hartwig, Ueda (2020), "Neural Networks Fail to Learn Periodic Functions and How
        to Fix It"; BigVGAN (Lee et al. 2023) for the per-channel, log-scale α.
    """

    channels: int = eqx.field(static=True)
    alpha: float = eqx.field(static=True)
    learnable: bool = eqx.field(static=True)
    channel_axis: int = eqx.field(static=True)
    residual: str = eqx.field(static=True)
    mode: str = eqx.field(static=True)
    param_dtype: Any = eqx.field(static=True)
    log_alpha: jax.Array | None

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
        # Checked before anything is stored: an array in a static field would only warn.
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
            _layers.init_log_alpha(_SNAKE, self.channels, self.alpha, param_dtype)
            if learnable
            else None
        )

    def __call__(self, x: Any, *, key: jax.Array | None = None) -> jax.Array:
        del key
        return _layers.apply_snake(
            _SNAKE,
            x,
            self.log_alpha,
            alpha=self.alpha,
            channels=self.channels,
            channel_axis=self.channel_axis,
            residual=self.residual,
            mode=self.mode,
        )


def _elementwise(name: str, fn: Callable[..., jax.Array]) -> type[eqx.Module]:
    """The Equinox layer of a parameterless activation, made from its function.

    ``__init__`` takes the function's options with its defaults (its signature, less ``x``),
    validates them as the function does, before they are stored (an array in a static field
    would only warn), and keeps them as static fields; ``__call__(x, *, key=None)`` calls the
    function.
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

    def __call__(self, x: Any, *, key: jax.Array | None = None) -> jax.Array:
        del key
        return spec(x, {o: getattr(self, o) for o in spec.options})

    def body(ns: dict[str, Any]) -> None:
        ns.update({o: eqx.field(static=True) for o in spec.options})
        ns.update(
            __annotations__=dict.fromkeys(spec.options, Any),
            __module__=__name__,
            __qualname__=name,
            __doc__=spec.doc("m(x)"),
            __init__=__init__,
            __call__=__call__,
        )

    return types.new_class(name, (eqx.Module,), {}, body)


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
